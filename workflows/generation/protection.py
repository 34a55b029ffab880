"""ECS task scale-in protection while the worker has work: a scale-in (the backlog per worker fell) must not stop a
task in the middle of a batch, which would throw its GPU time away and send its jobs round again.

The ECS agent offers the task its own endpoint, ``$ECS_AGENT_URI/task-protection/v1/state``: a ``PUT`` of
``{"ProtectionEnabled": true, "ExpiresInMinutes": n}`` protects the task, ``{"ProtectionEnabled": false}`` lets it
go. The worker protects itself when a batch starts and lets go once nothing is left to run; the protection
expires on its own (:data:`PROTECTION_MINUTES`, renewed while the worker stays busy), so a worker that dies
protected does not pin its instance. Outside ECS (no ``ECS_AGENT_URI``) every call is a no-op. A failed call is
logged and never stops the worker: protection is an optimisation, the leases keep jobs safe without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from aws_lambda_powertools import Logger

logger = Logger(service="sdq-worker")

PROTECTION_MINUTES = 60
RENEW_AFTER_S = PROTECTION_MINUTES * 60 / 2  # a busy worker renews its protection halfway through
TIMEOUT_S = 2.0


class TaskProtection:
    """The task's scale-in protection through the ECS agent at ``agent_uri`` (None: not on ECS, nothing to do)."""

    def __init__(
        self,
        agent_uri: str | None,
        *,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = f"{agent_uri.rstrip('/')}/task-protection/v1/state" if agent_uri else None
        self._client = client or (httpx.Client(timeout=TIMEOUT_S) if self._url else None)
        self._clock = clock
        self._since: float | None = None  # when the current protection was set; None when not protected

    @property
    def protected(self) -> bool:
        return self._since is not None

    def busy(self) -> None:
        """A batch starts: protect the task, unless a protection set less than half its life ago still holds."""
        if self._since is not None and self._clock() - self._since < RENEW_AFTER_S:
            return
        if self._put({"ProtectionEnabled": True, "ExpiresInMinutes": PROTECTION_MINUTES}):
            self._since = self._clock()

    def idle(self) -> None:
        """Nothing left to run: let a scale-in stop the task again."""
        if self._since is None:
            return
        if self._put({"ProtectionEnabled": False}):
            self._since = None

    def _put(self, body: dict[str, object]) -> bool:
        if self._url is None or self._client is None:
            return False
        try:
            response = self._client.put(self._url, json=body)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            logger.warning("task protection not changed", protect=body["ProtectionEnabled"], error=str(exc)[:200])
            return False
        return True

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
