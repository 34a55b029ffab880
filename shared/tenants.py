"""Tenants and their plans: what each tenant may submit (items ``ACCOUNT#<tenant>`` in the jobs table).

A plan is four limits: the submission rate, the unfinished-job cap, a daily GPU budget counted in work (megapixel
steps: width x height x steps run x images / 10^6, :func:`shared.contracts.pixel_steps`) and the highest priority.
The defaults are the settings' (:meth:`Plan.defaults`); a tenant's item stores only the limits an operator set for
it, so changing a default changes every tenant that has no override. A tenant that was never created (its item,
if any, only lists keys made for it directly: tests, the local development key) has the default plan.

The API reads the plan once per key and cache period, through the authorizer (``workflows.authorization``), never
per request.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from shared.contracts import Priority, utcnow
from shared.errors import InvalidTenantId, TenantExists, TenantNotFound

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from shared.settings import Settings

# Not TENANT#: that item is the tenant's webhook secrets (shared.webhooksecrets), which the API writes whole.
ACCOUNT_PREFIX = "ACCOUNT#"
# Tenant ids: what an operator types and what lands in key names, metrics and logs.
TENANT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Plan(BaseModel):
    """What a tenant may submit. Every field has the settings' default unless the tenant's item overrides it."""

    rate_limit_per_window: int = Field(ge=1, description="Submissions per rate-limit window before `429`")
    max_unfinished_jobs: int = Field(ge=0, description="Unfinished jobs before a submission gets `429`")
    daily_gpu_budget_mpx_steps: int = Field(
        ge=0,
        description=(
            "GPU work a tenant may submit per UTC day, in megapixel steps (width x height x steps run x images /"
            " 10^6; a 512x512 image of 30 steps is 7.9); 0: no budget"
        ),
    )
    max_priority: Priority = Field(description="The highest `priority` a job of this tenant may ask for")

    @classmethod
    def defaults(cls, settings: Settings) -> Plan:
        return cls(
            rate_limit_per_window=settings.rate_limit_per_window,
            max_unfinished_jobs=settings.max_unfinished_jobs_per_tenant,
            daily_gpu_budget_mpx_steps=settings.daily_gpu_budget_mpx_steps,
            max_priority=Priority(settings.max_priority),
        )

    @property
    def daily_gpu_budget_pixel_steps(self) -> int:
        return self.daily_gpu_budget_mpx_steps * 1_000_000


class PlanOverrides(BaseModel):
    """The limits an operator set for one tenant (``sdq admin tenants set-plan``); None keeps the default."""

    rate_limit_per_window: int | None = Field(default=None, ge=1)
    max_unfinished_jobs: int | None = Field(default=None, ge=0)
    daily_gpu_budget_mpx_steps: int | None = Field(default=None, ge=0)
    max_priority: Priority | None = None

    def set_fields(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class Tenant(BaseModel):
    tenant: str
    name: str = ""
    created_at: datetime | None = None
    overrides: PlanOverrides = Field(default_factory=PlanOverrides)
    plan: Plan
    registered: bool = Field(description="False for a tenant never created (it has the default plan)")
    usage_key: str | None = Field(
        default=None,
        description=(
            "On AWS: the value of the tenant's API Gateway key in the stack's usage plan, which the authorizer"
            " names so that the gateway's per-key throttle applies per tenant. Not a credential: clients cannot"
            " present it (the API's key source is the authorizer)."
        ),
    )


class TenantStore:
    """Creates tenants, reads them with their effective plan, and changes their plan overrides."""

    def __init__(self, dynamodb: DynamoDBClient, table_name: str, settings: Settings) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._defaults = Plan.defaults(settings)

    def create(self, tenant: str, *, name: str = "", overrides: PlanOverrides | None = None) -> Tenant:
        """Register ``tenant``; TenantExists if it is registered already."""
        if not re.fullmatch(TENANT_ID_PATTERN, tenant):
            raise InvalidTenantId(
                f"Tenant ids are 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit: {tenant!r}."
            )
        overrides = overrides or PlanOverrides()
        now = utcnow()
        try:
            # An update, not a put: a tenant whose keys came first (ApiKeyStore.create) keeps its key list.
            self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": ACCOUNT_PREFIX + tenant}},
                UpdateExpression="SET tenant = :tenant, #name = :name, created_at = :now, #plan = :plan",
                ConditionExpression="attribute_not_exists(created_at)",
                ExpressionAttributeNames={"#name": "name", "#plan": "plan"},
                ExpressionAttributeValues={
                    ":tenant": {"S": tenant},
                    ":name": {"S": name},
                    ":now": {"S": now.isoformat()},
                    ":plan": {"S": json.dumps(overrides.set_fields(), sort_keys=True)},
                },
            )
        except self._ddb.exceptions.ConditionalCheckFailedException as exc:
            raise TenantExists(f"Tenant {tenant!r} exists already.") from exc
        return self._tenant(tenant, name, now, overrides, registered=True)

    def get(self, tenant: str) -> Tenant:
        """The tenant with its effective plan; an unregistered tenant has the default plan."""
        resp = self._ddb.get_item(
            TableName=self._table, Key={"pk": {"S": ACCOUNT_PREFIX + tenant}}, ConsistentRead=True
        )
        item = resp.get("Item")
        if item is None or "created_at" not in item:
            return self._tenant(tenant, "", None, PlanOverrides(), registered=False)
        overrides = PlanOverrides.model_validate_json(item.get("plan", {}).get("S", "{}"))
        created = item.get("created_at", {}).get("S")
        found = self._tenant(
            tenant,
            item.get("name", {}).get("S", ""),
            datetime.fromisoformat(created) if created else None,
            overrides,
            registered=True,
        )
        return found.model_copy(update={"usage_key": item.get("usage_key", {}).get("S")})

    def require(self, tenant: str) -> Tenant:
        """The registered tenant, or TenantNotFound."""
        found = self.get(tenant)
        if not found.registered:
            raise TenantNotFound(f"No tenant {tenant!r}; create it with `sdq admin tenants create {tenant}`.")
        return found

    def set_plan(self, tenant: str, changes: PlanOverrides, *, reset: frozenset[str] = frozenset()) -> Tenant:
        """Merge ``changes`` into the tenant's overrides (``reset``: fields that go back to the default)."""
        current = self.require(tenant)
        merged = {**current.overrides.set_fields(), **changes.set_fields()}
        for name in reset:
            merged.pop(name, None)
        overrides = PlanOverrides.model_validate(merged)
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": ACCOUNT_PREFIX + tenant}},
                UpdateExpression="SET #plan = :plan",
                ConditionExpression="attribute_exists(created_at)",
                ExpressionAttributeNames={"#plan": "plan"},
                ExpressionAttributeValues={":plan": {"S": json.dumps(overrides.set_fields(), sort_keys=True)}},
            )
        except self._ddb.exceptions.ConditionalCheckFailedException as exc:
            raise TenantNotFound(f"No tenant {tenant!r}.") from exc
        return self._tenant(tenant, current.name, current.created_at, overrides, registered=True)

    def set_usage_key(self, tenant: str, value: str, gateway_key_id: str) -> None:
        """Record the tenant's API Gateway key (``sdq admin tenants create`` on a stack with a usage plan)."""
        self._ddb.update_item(
            TableName=self._table,
            Key={"pk": {"S": ACCOUNT_PREFIX + tenant}},
            UpdateExpression="SET usage_key = :value, gateway_key_id = :id",
            ConditionExpression="attribute_exists(created_at)",
            ExpressionAttributeValues={":value": {"S": value}, ":id": {"S": gateway_key_id}},
        )

    def _tenant(
        self, tenant: str, name: str, created: datetime | None, overrides: PlanOverrides, *, registered: bool
    ) -> Tenant:
        plan = Plan.model_validate({**self._defaults.model_dump(), **overrides.set_fields()})
        return Tenant(
            tenant=tenant, name=name, created_at=created, overrides=overrides, plan=plan, registered=registered
        )
