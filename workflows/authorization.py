"""Who is calling: an API key to its tenant, key id and plan, for the API Gateway authorizer.

On AWS, API Gateway calls the authorizer (``handlers.authorizer``) with the ``x-api-key`` header and caches its
answer per key for the template's ``AuthorizerCacheSeconds``; the API and events functions read the caller from the
request context and make no key or plan read of their own. The local API (``localcloud.api``) calls the same
handler the same way, with the same cache period, so a test of either sees what the other does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from shared.apikeys import ApiKeyStore, KeyNotFound
from shared.contracts import utcnow
from shared.tenants import Plan, TenantStore

# Keys of the authorizer context (strings only: API Gateway passes strings, numbers and booleans).
CONTEXT_TENANT = "tenant"
CONTEXT_KEY_ID = "key_id"
CONTEXT_PLAN = "plan"


class Authorization(BaseModel):
    tenant: str
    key_id: str
    plan: Plan
    usage_key: str | None = None

    def context(self) -> dict[str, str]:
        """What the API receives in ``requestContext.authorizer``."""
        return {CONTEXT_TENANT: self.tenant, CONTEXT_KEY_ID: self.key_id, CONTEXT_PLAN: self.plan.model_dump_json()}

    @classmethod
    def from_context(cls, context: dict[str, Any] | None) -> Authorization | None:
        """The caller the authorizer let through, or None where no authorizer ran (a misrouted call)."""
        context = context or {}
        tenant, key_id, plan = context.get(CONTEXT_TENANT), context.get(CONTEXT_KEY_ID), context.get(CONTEXT_PLAN)
        if not (isinstance(tenant, str) and tenant and isinstance(key_id, str) and isinstance(plan, str)):
            return None
        return cls(tenant=tenant, key_id=key_id, plan=Plan.model_validate_json(plan))


@dataclass(frozen=True)
class Authorizer:
    keys: ApiKeyStore
    tenants: TenantStore

    def authorize(self, api_key: str) -> Authorization | None:
        """The caller of an active key, or None for unknown, revoked and expired keys alike."""
        caller = self.keys.resolve(api_key)
        if caller is None:
            return None
        tenant = self.tenants.get(caller.tenant)
        return Authorization(tenant=caller.tenant, key_id=caller.key_id, plan=tenant.plan, usage_key=tenant.usage_key)


class KeyCheck:
    """Whether the key a long answer (an events stream, up to 15 minutes) was opened with is still active, re-read
    at most once every ``every_s``: the authorizer's cache period, so a stream learns of a revocation about as soon
    as a new request does."""

    def __init__(
        self,
        keys: ApiKeyStore,
        key_id: str,
        *,
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys, self._key_id, self._every_s, self._clock = keys, key_id, every_s, clock
        self._due = clock() + every_s

    def still_active(self) -> bool:
        now = self._clock()
        if now < self._due:
            return True
        self._due = now + self._every_s
        try:
            return self._keys.get(self._key_id).active(utcnow())
        except KeyNotFound:
            return False
