"""The heartbeat thread: renews the leases of the jobs claimed here, then keeps every held message invisible."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Executor, Future

from aws_lambda_powertools import Logger

from shared.jobs import JobsRepository
from workflows.generation.heldmessages import AwsError, Held, HeldMessages

logger = Logger(service="sdq-worker")


class Heartbeat:
    def __init__(
        self,
        held: HeldMessages,
        repo: JobsRepository,
        table_pool: Executor,
        hard_stop: threading.Event,
        *,
        worker_id: str,
        interval_s: float,
        visibility_s: int,
        clock: Callable[[], float],
    ) -> None:
        self._held = held
        self._repo = repo
        self._table_pool = table_pool
        self._hard_stop = hard_stop
        self._worker_id = worker_id
        self._interval_s = interval_s
        self._visibility_s = visibility_s
        self._clock = clock

    def run(self) -> None:
        """Beat every ``interval_s`` until a hard stop (the thread's target)."""
        while not self._hard_stop.wait(self._interval_s):
            self.beat()

    def beat(self) -> None:
        held, renew = self._held.snapshot()
        if not held:
            return
        # The lease in the table, not the message, says who runs a job, so the leases go first and are
        # renewed whatever SQS says about the messages below (a refused extension: the message reappeared
        # and another worker may have it; that worker finds the job held and waits). In parallel, like
        # claims: one slow call must not push the other renewals towards the end of their leases.
        renewals: list[Future[None]] = []
        for h in renew:
            try:
                renewals.append(self._table_pool.submit(self.renew_lease, h))
            except RuntimeError:  # the pool is shut down: the worker is stopping and lets its jobs go
                break
        refused = self._held.set_visibility([h.received for h in held], self._visibility_s)
        if refused:
            logger.info("visibility extension refused; the leases still hold the jobs", messages=len(refused))
        # A message let go while that call ran may have been hidden again by it: set it back (no I/O is
        # done under a lock, so a slow SQS call here never holds up claims or a stop).
        let_go = self._held.let_go_among(held)
        for visibility in {h.let_go_visibility for h in let_go}:
            assert visibility is not None
            self._held.set_visibility([h.received for h in let_go if h.let_go_visibility == visibility], visibility)
        for renewal in renewals:
            with contextlib.suppress(CancelledError):  # cancelled by a stop's pool shutdown
                renewal.result()

    def renew_lease(self, held: Held) -> None:
        """Extend one job's lease; never raises (runs on the table pool, where nothing else would report it)."""
        if not self._held.still_renewable(held):
            return  # let go, finished or dropped since the heartbeat looked
        try:
            ours = self._repo.renew_lease(
                held.job_id, worker_id=self._worker_id, lease_until=self._clock() + self._visibility_s
            )
        except AwsError as exc:
            logger.warning("lease renewal failed", job_id=held.job_id, error=str(exc))
            return
        except Exception:
            logger.exception("lease renewal failed", job_id=held.job_id)
            return
        if not ours:
            logger.info("lease not renewed: the job is no longer this worker's to run", job_id=held.job_id)
