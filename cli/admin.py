"""``sdq admin``: the operator's tenants, plans and API keys, over the AWS APIs with the operator's credentials.

The same commands manage a deployed stack (``--stack NAME``: its tables and usage plan from the stack's outputs)
and the local cloud of ``sdq up`` (by default: the endpoint and tables it wrote in ``.sdq/local.json``). On AWS,
``tenants create`` also gives the tenant an API Gateway key in the stack's usage plan, which the authorizer names
so that the gateway throttles per tenant; clients never see or send it. Every change is recorded in the audit log.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, get_args

import boto3
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from rich.console import Console

from cli.auditcommands import add_audit_parser
from cli.client import BadEndpoint, read_local_state
from cli.loraimport import add_loras_parser
from cli.modelimport import RevisionExists, import_model, snapshot
from shared.apikeys import ApiKey, ApiKeyStore
from shared.audit import AuditAction, AuditEntry, AuditLog, AuditOutcome
from shared.contracts import Priority, utcnow
from shared.errors import ServiceError
from shared.modelregistry import Architecture
from shared.ratelimit import DailyGpuBudget
from shared.settings import Settings
from shared.tenants import PlanOverrides, Tenant, TenantStore

out = Console()
err = Console(stderr=True)


class NoStack(Exception):
    """Neither ``--stack`` nor ``.sdq/local.json`` say which deployment to manage."""


@dataclass(frozen=True)
class AdminTarget:
    """The deployment the commands act on."""

    table: str
    bucket: str
    audit_table: str | None
    usage_plan_id: str | None
    client_kwargs: dict[str, str]
    stack: str

    def client(self, service: str) -> Any:
        return boto3.client(service, **self.client_kwargs)  # type: ignore[call-overload]

    @classmethod
    def resolve(cls, args: argparse.Namespace) -> AdminTarget:
        region = {"region_name": args.region} if args.region else {}
        if args.stack:
            stack = boto3.client("cloudformation", **region).describe_stacks(StackName=args.stack)["Stacks"][0]
            found = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
            return cls(
                found["TableName"],
                found["BucketName"],
                found.get("AuditTableName"),
                found.get("ApiUsagePlanId"),
                region,
                args.stack,
            )
        local = read_local_state()
        if local is not None:
            env = local.get("env", {})
            return cls(
                env["SDQ_TABLE_NAME"],
                env["SDQ_BUCKET"],
                env.get("SDQ_AUDIT_TABLE_NAME"),
                None,  # the local stack has no API Gateway: its local API enforces the plan's limits itself
                {
                    "endpoint_url": env["AWS_ENDPOINT_URL"],
                    "region_name": env["AWS_DEFAULT_REGION"],
                    "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
                    "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
                },
                "local",
            )
        raise NoStack("No deployment: pass --stack <deployed stack name>, or run `sdq up` in this folder.")


@dataclass(frozen=True)
class Admin:
    target: AdminTarget
    tenants: TenantStore
    keys: ApiKeyStore
    budget: DailyGpuBudget
    audit: AuditLog | None
    operator: str

    @classmethod
    def connect(cls, target: AdminTarget) -> Admin:
        ddb = target.client("dynamodb")
        settings = Settings()
        audit = (
            AuditLog(ddb, target.audit_table, retention_days=settings.audit_retention_days)
            if target.audit_table
            else None
        )
        try:
            operator = str(target.client("sts").get_caller_identity()["Arn"])
        except (BotoCoreError, ClientError):
            operator = "unknown"
        return cls(
            target,
            TenantStore(ddb, target.table, settings),
            ApiKeyStore(ddb, target.table),
            DailyGpuBudget(ddb, target.table),
            audit,
            operator,
        )

    def record(self, action: AuditAction, tenant: str, target: str | None, details: dict[str, str]) -> None:
        if self.audit is None:
            return
        self.audit.record(
            AuditEntry(
                tenant=tenant,
                action=action,
                target=target,
                outcome=AuditOutcome.ACCEPTED,
                operator=self.operator,
                user_agent="sdq admin",
                details=details,
            )
        )

    def gateway_key(self, tenant: str) -> None:
        """On AWS: the tenant's API Gateway key in the stack's usage plan (its value is never shown)."""
        if self.target.usage_plan_id is None:
            return
        gateway = self.target.client("apigateway")
        value = secrets.token_urlsafe(30)
        key = gateway.create_api_key(
            name=f"{self.target.stack}-{tenant}",
            description=f"sdq tenant {tenant}: named by the authorizer, never sent by clients",
            enabled=True,
            value=value,
        )
        gateway.create_usage_plan_key(usagePlanId=self.target.usage_plan_id, keyId=key["id"], keyType="API_KEY")
        self.tenants.set_usage_key(tenant, value, key["id"])


def _plan_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate-limit", type=int, dest="rate_limit_per_window", help="submissions per rate window")
    p.add_argument("--max-unfinished", type=int, dest="max_unfinished_jobs", help="unfinished jobs before 429")
    p.add_argument(
        "--daily-gpu-budget",
        type=int,
        dest="daily_gpu_budget_mpx_steps",
        help="megapixel steps per UTC day (a 512x512 30-step image is 7.9); 0: none",
    )
    p.add_argument("--max-priority", choices=[p.value for p in Priority], help="highest priority a job may ask for")


def _overrides(args: argparse.Namespace) -> PlanOverrides:
    return PlanOverrides.model_validate(
        {name: getattr(args, name) for name in PlanOverrides.model_fields if getattr(args, name, None) is not None}
    )


def _tenant_json(tenant: Tenant, keys: list[ApiKey], used: int) -> dict[str, Any]:
    return {
        "tenant": tenant.tenant,
        "name": tenant.name,
        "created_at": tenant.created_at.isoformat() if tenant.created_at else None,
        "plan": tenant.plan.model_dump(mode="json"),
        "overrides": tenant.overrides.set_fields(),
        "gpu_work_today_mpx_steps": round(used / 1e6, 1),
        "keys": [k.model_dump(mode="json") for k in keys],
        "gateway_key": tenant.usage_key is not None,
    }


def _show(data: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(data))
    else:
        out.print_json(json.dumps(data))


def cmd_tenants_create(admin: Admin, args: argparse.Namespace) -> int:
    overrides = _overrides(args)
    tenant = admin.tenants.create(args.tenant, name=args.name or "", overrides=overrides)
    admin.gateway_key(args.tenant)
    admin.record(AuditAction.TENANT_CREATE, args.tenant, None, {k: str(v) for k, v in overrides.set_fields().items()})
    _show(_tenant_json(tenant, [], 0), args)
    return 0


def cmd_tenants_show(admin: Admin, args: argparse.Namespace) -> int:
    tenant = admin.tenants.require(args.tenant)
    used = admin.budget.used(args.tenant, now=utcnow().timestamp())
    _show(_tenant_json(tenant, admin.keys.list(args.tenant), used), args)
    return 0


def cmd_tenants_set_plan(admin: Admin, args: argparse.Namespace) -> int:
    changes = _overrides(args)
    reset = frozenset(args.reset or ())
    if not changes.set_fields() and not reset:
        err.print("Nothing to change: give at least one plan flag or --reset.")
        return 2
    tenant = admin.tenants.set_plan(args.tenant, changes, reset=reset)
    details = {k: str(v) for k, v in changes.set_fields().items()} | {f"reset.{name}": "default" for name in reset}
    admin.record(AuditAction.TENANT_SET_PLAN, args.tenant, None, details)
    _show(_tenant_json(tenant, admin.keys.list(args.tenant), 0), args)
    return 0


def cmd_keys_create(admin: Admin, args: argparse.Namespace) -> int:
    admin.tenants.require(args.tenant)
    expires = utcnow() + timedelta(days=args.expires_in_days) if args.expires_in_days else None
    issued = admin.keys.create(args.tenant, name=args.name or "", expires_at=expires)
    admin.record(AuditAction.KEY_CREATE, args.tenant, issued.key_id, {"name": issued.name})
    data = issued.model_dump(mode="json")
    if args.json:
        print(json.dumps(data))
    else:
        out.print(f"API key {issued.plaintext}")
        out.print(f"id      {issued.key_id}   (shown once: the key itself is stored only as its hash)")
    return 0


def cmd_keys_list(admin: Admin, args: argparse.Namespace) -> int:
    _show({"keys": [k.model_dump(mode="json") for k in admin.keys.list(args.tenant)]}, args)
    return 0


def cmd_keys_revoke(admin: Admin, args: argparse.Namespace) -> int:
    key = admin.keys.revoke(args.key_id)
    admin.record(AuditAction.KEY_REVOKE, key.tenant, key.key_id, {})
    _show(key.model_dump(mode="json"), args)
    return 0


def cmd_models_import(admin: Admin, args: argparse.Namespace) -> int:
    folder, revision = snapshot(args.source, args.revision)
    entry = import_model(
        admin.target.client("s3"),
        admin.target.bucket,
        model_id=args.model_id,
        folder=folder,
        revision=revision,
        architecture=args.architecture,
        schedulers=tuple(args.schedulers) if args.schedulers else None,
        fleet=args.fleet,
    )
    data = entry.model_dump(mode="json", exclude_defaults=True)
    if args.json:
        print(json.dumps(data))
    else:
        err.print(f"copied to {entry.source}; add this entry to the model registry (SDQ_MODEL_REGISTRY):")
        out.print_json(json.dumps(data))
    return 0


def add_admin_parser(sub: Any) -> None:
    admin = sub.add_parser("admin", help="tenants, plans, API keys and the audit log (an operator's commands)")
    groups = admin.add_subparsers(dest="admin_group", required=True)

    def command(group: Any, name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(name, help=help_text)
        p.add_argument("--stack", help="a deployed stack's name (default: the local stack of `sdq up`)")
        p.add_argument("--region", help="the stack's region (default: your AWS configuration's)")
        p.add_argument("--json", action="store_true", help="print JSON on one line")
        p.set_defaults(func=run_admin, admin_func=func)
        return p

    tenants = groups.add_parser("tenants", help="create tenants, show them, change their plan").add_subparsers(
        dest="tenants_command", required=True
    )
    p = command(tenants, "create", "register a tenant (its plan: the defaults, or the flags given)", cmd_tenants_create)
    p.add_argument("tenant")
    p.add_argument("--name", help="a display name")
    _plan_flags(p)
    p = command(tenants, "show", "a tenant's plan, keys and today's GPU work", cmd_tenants_show)
    p.add_argument("tenant")
    p = command(tenants, "set-plan", "change a tenant's plan (only the limits given)", cmd_tenants_set_plan)
    p.add_argument("tenant")
    _plan_flags(p)
    p.add_argument(
        "--reset", nargs="+", choices=sorted(PlanOverrides.model_fields), help="limits that go back to the default"
    )

    keys = groups.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        dest="keys_command", required=True
    )
    p = command(keys, "create", "a new API key for a tenant, shown once", cmd_keys_create)
    p.add_argument("--tenant", required=True)
    p.add_argument("--name", help="what the key is for")
    p.add_argument("--expires-in-days", type=int, help="the key stops working after this many days")
    p = command(keys, "list", "a tenant's keys (never their values)", cmd_keys_list)
    p.add_argument("--tenant", required=True)
    p = command(keys, "revoke", "revoke a key by its id, for good", cmd_keys_revoke)
    p.add_argument("key_id")

    models = groups.add_parser("models", help="copy model weights into the stack's bucket").add_subparsers(
        dest="models_command", required=True
    )
    p = command(models, "import", "copy a model into the bucket and print its registry entry", cmd_models_import)
    p.add_argument("model_id", help="the id jobs will name")
    p.add_argument("--from", dest="source", required=True, help="a local diffusers folder, or hub:<org>/<name>")
    p.add_argument("--revision", help="a hub commit (default: the newest); for a folder, the label to pin it as")
    p.add_argument("--architecture", required=True, choices=get_args(Architecture))
    p.add_argument("--schedulers", nargs="+", help="the schedulers jobs for it may name (default: all)")
    p.add_argument("--fleet", help="the workers that load it (default: the default fleet)")

    add_loras_parser(groups, command)
    add_audit_parser(groups)


def run_admin(args: argparse.Namespace) -> int:
    """Exit 0; 2 when no deployment is found; 3 when its AWS endpoint cannot be reached (a stopped local stack);
    4 for an unknown tenant or key; 1 for another refusal."""
    try:
        admin = Admin.connect(AdminTarget.resolve(args))
        return int(args.admin_func(admin, args))
    except (NoStack, BadEndpoint) as exc:  # no deployment named, or a .sdq/local.json that cannot be read
        err.print(str(exc), highlight=False, soft_wrap=True)
        return 2
    except (RevisionExists, FileNotFoundError, ValueError) as exc:
        err.print(str(exc))
        return 1
    except ServiceError as exc:
        err.print(exc.message)
        return 4 if exc.status == 404 else 1
    except EndpointConnectionError as exc:
        err.print(f"cannot reach {exc.kwargs.get('endpoint_url', 'the AWS endpoint')}: is `sdq up` running?")
        return 3
    except (BotoCoreError, ClientError) as exc:
        print(f"AWS error: {exc}", file=sys.stderr)
        return 1
