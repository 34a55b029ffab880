"""``sdq admin audit``: the operator's reading of the audit log, straight from its DynamoDB table.

It goes over the AWS APIs with the operator's own credentials and finds the deployment as every ``sdq admin``
command does (:class:`cli.admin.AdminTarget`): a deployed stack (``--stack``: its ``AuditTableName`` output) or
the local cloud of ``sdq up`` (``.sdq/local.json``).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.table import Table

from shared.audit import AuditEntry, AuditLog
from shared.contracts import utcnow
from shared.errors import InvalidCursor
from shared.settings import get_settings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

PAGE = 100
_AGE = re.compile(r"^(?P<n>\d+)(?P<unit>[smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """``--since``: an ISO 8601 time (UTC when it names no zone) or an age such as ``30m``, ``12h``, ``7d``."""
    match = _AGE.match(text.strip())
    if match:
        return (now or utcnow()) - timedelta(**{_UNITS[match["unit"]]: int(match["n"])})
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give an ISO time (2026-12-01T09:00Z) or an age (30m, 12h, 7d)"
        ) from exc
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def entries(log: AuditLog, *, tenant: str | None, since: datetime | None, limit: int) -> Iterator[AuditEntry]:
    """Up to ``limit`` entries, newest first: one tenant's, or every tenant's."""
    cursor: str | None = None
    left = limit
    while left > 0:
        size = min(left, PAGE)
        if tenant is None:
            page = log.page_all(limit=size, cursor=cursor, since=since)
        else:
            page = log.page(tenant, limit=size, cursor=cursor, since=since)
        yield from page.entries[:left]
        left -= len(page.entries)
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def add_audit_parser(admin_subparsers: Any) -> argparse.ArgumentParser:
    """``audit`` under ``sdq admin``."""
    p: argparse.ArgumentParser = admin_subparsers.add_parser(
        "audit", help="read the audit log, newest first (every tenant, or one)"
    )
    p.add_argument("--tenant", help="only this tenant's entries")
    p.add_argument("--since", type=parse_since, help="only entries from then on: an ISO time or an age (30m, 12h, 7d)")
    p.add_argument("--limit", type=int, default=50, help="most entries shown (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--stack", help="a deployed stack's name (default: the local stack of `sdq up`)")
    p.add_argument("--region", help="the stack's region (default: your AWS configuration's)")
    p.set_defaults(func=run_audit, audit_parser=p)
    return p


def run_audit(args: argparse.Namespace) -> int:
    """Print the entries; exit 0, or 2 (usage) when the table cannot be found or read."""
    # Imported here: cli.admin imports this module for its parser.
    from cli.admin import AdminTarget, NoStack

    parser: argparse.ArgumentParser = args.audit_parser
    if args.limit < 1:
        parser.error("--limit must be at least 1")
    try:
        target = AdminTarget.resolve(args)
        if target.audit_table is None:
            parser.error(f"stack {target.stack} has no AuditTableName output: deploy this version")
        ddb: DynamoDBClient = target.client("dynamodb")
        log = AuditLog(ddb, target.audit_table, retention_days=get_settings().audit_retention_days)
        found = list(entries(log, tenant=args.tenant, since=args.since, limit=args.limit))
    except (NoStack, InvalidCursor) as exc:
        parser.error(str(exc))
    except (BotoCoreError, ClientError) as exc:
        parser.error(f"cannot read the audit log: {exc}")
    if args.json:
        for entry in found:
            print(entry.model_dump_json())
        return 0
    table = Table("at (UTC)", "tenant", "key", "action", "target", "outcome", "from", "user agent")
    for e in found:
        outcome = e.outcome.value + (f" {e.status}" if e.status else "") + (f" {e.error_code}" if e.error_code else "")
        table.add_row(
            e.at.astimezone(UTC).isoformat(timespec="seconds")[:19],
            e.tenant,
            e.key_id or e.operator or "",
            e.action.value,
            e.target or "",
            outcome,
            e.source_ip or "",
            (e.user_agent or "")[:40],
        )
    Console().print(table)
    return 0
