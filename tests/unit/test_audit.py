"""The audit log adapter (shared/audit.py) against an in-memory DynamoDB table keyed as template.yaml declares it."""

from __future__ import annotations

import argparse
import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError

from cli.auditcommands import parse_since
from handlers import api
from localcloud.provision import load_sam_template
from shared.audit import AuditAction, AuditEntry, AuditLog, AuditOutcome, _encode_cursor
from shared.contracts import utcnow
from shared.errors import InvalidCursor
from shared.settings import Settings
from tests.unit.conftest import REPO, table_from_template

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

AUDIT_TABLE = "audit"


@pytest.fixture
def audit_table(monkeypatch: pytest.MonkeyPatch) -> Iterator[DynamoDBClient]:
    yield from table_from_template(monkeypatch, "AuditTable", AUDIT_TABLE)


def entry(tenant: str = "t-1", *, minutes_ago: float = 0, **fields: Any) -> AuditEntry:
    base: dict[str, Any] = {
        "tenant": tenant,
        "action": AuditAction.JOB_SUBMIT,
        "outcome": AuditOutcome.ACCEPTED,
        "status": 202,
        "at": utcnow() - timedelta(minutes=minutes_ago),
    }
    return AuditEntry(**(base | fields))


def test_a_recorded_entry_reads_back_whole_and_expires_after_the_retention(audit_table: DynamoDBClient) -> None:
    log = AuditLog(audit_table, AUDIT_TABLE, retention_days=90)
    written = entry(
        key_id="k-1",
        target="01KAX",
        source_ip="203.0.113.9",
        user_agent="curl/8",
        outcome=AuditOutcome.REFUSED,
        status=409,
        error_code="invalid_transition",
        action=AuditAction.JOB_CANCEL,
    )
    log.record(written)
    assert log.page("t-1", limit=10).entries == [written]
    item = audit_table.scan(TableName=AUDIT_TABLE)["Items"][0]
    assert int(item["expires_at"]["N"]) == int((written.at + timedelta(days=90)).timestamp())


def test_an_entry_is_never_replaced(audit_table: DynamoDBClient) -> None:
    log = AuditLog(audit_table, AUDIT_TABLE, retention_days=90)
    first = entry()
    log.record(first)
    with pytest.raises(ClientError):
        log.record(first.model_copy(update={"outcome": AuditOutcome.REFUSED}))
    assert log.page("t-1", limit=10).entries == [first]


def test_a_tenant_reads_only_its_own_entries_newest_first_page_by_page(audit_table: DynamoDBClient) -> None:
    log = AuditLog(audit_table, AUDIT_TABLE, retention_days=90)
    mine = [entry(minutes_ago=m) for m in (5, 4, 3, 2, 1)]
    for e in [*mine, entry("t-2", minutes_ago=0)]:
        log.record(e)
    seen: list[AuditEntry] = []
    cursor: str | None = None
    while True:
        page = log.page("t-1", limit=2, cursor=cursor)
        seen += page.entries
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == mine[::-1]
    assert [e.id for e in log.page("t-1", limit=10, since=mine[2].at).entries] == [e.id for e in mine[2:][::-1]]
    # Another tenant's cursor, or a made-up one, continues nothing.
    log.record(entry("t-2", minutes_ago=10))
    other = log.page("t-2", limit=1)
    assert other.next_cursor is not None
    crafted = [{"tenant": "t-1", "sk": sk} for sk in ("", "x" * 2000, mine[0].sort_key + "x")]
    nested = base64.urlsafe_b64encode(b"[" * 1500).decode()  # a nesting bomb: RecursionError in the parser
    for bad in (other.next_cursor, "garbage", "e30", nested, *map(_encode_cursor, crafted)):
        with pytest.raises(InvalidCursor):
            log.page("t-1", limit=2, cursor=bad)


def test_the_operator_reads_every_tenant_newest_first_across_days(audit_table: DynamoDBClient) -> None:
    log = AuditLog(audit_table, AUDIT_TABLE, retention_days=90)
    written = [entry(f"t-{i % 3}", minutes_ago=60 * 24 * (i % 4) + i) for i in range(9)]
    for e in written:
        log.record(e)
    log.record(entry("t-old", minutes_ago=60 * 24 * 91))  # past the retention, not yet removed by the TTL
    newest_first = sorted(written, key=lambda e: e.at, reverse=True)
    for limit in (1, 2, 4, 9, 50):
        seen: list[AuditEntry] = []
        cursor: str | None = None
        while True:
            page = log.page_all(limit=limit, cursor=cursor)
            assert len(page.entries) <= limit
            seen += page.entries
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == newest_first, limit
    since = newest_first[4].at
    assert log.page_all(limit=50, since=since).entries == newest_first[:5]
    with pytest.raises(InvalidCursor):
        log.page_all(limit=5, cursor="garbage")


def _statements(resources: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, st)
        for name, r in resources.items()
        if r["Type"] == "AWS::IAM::Role"
        for policy in r["Properties"].get("Policies", [])
        for st in policy["PolicyDocument"]["Statement"]
    ]


def _actions(st: dict[str, Any]) -> list[str]:
    return st["Action"] if isinstance(st["Action"], list) else [st["Action"]]


def test_the_stack_keeps_the_log_append_only_for_its_retention_and_alarms_on_lost_entries() -> None:
    template = load_sam_template(REPO / "template.yaml")
    resources: dict[str, Any] = template["Resources"]
    table = resources["AuditTable"]
    assert table["DeletionPolicy"] == "Retain"
    assert table["Properties"]["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert table["Properties"]["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    # Who may touch the table: the API appends and reads its tenant's entries; nobody updates or deletes.
    on_audit = {
        (role, action)
        for role, st in _statements(resources)
        if "AuditTable" in json.dumps(st["Resource"])
        for action in _actions(st)
    }
    assert on_audit == {("ApiFunctionRole", "dynamodb:PutItem"), ("ApiFunctionRole", "dynamodb:Query")}
    # The API knows the table and its retention, whose default is the setting's.
    env = resources["ApiFunction"]["Properties"]["Environment"]["Variables"]
    assert env["SDQ_AUDIT_TABLE_NAME"] == {"Ref": "AuditTable"}
    assert env["SDQ_AUDIT_RETENTION_DAYS"] == {"Ref": "AuditRetentionDays"}
    assert template["Parameters"]["AuditRetentionDays"]["Default"] == Settings().audit_retention_days
    # A lost entry (the API answered anyway) is counted under the API's metrics and alarmed.
    alarm = resources["AuditWriteFailuresAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == (api.metrics.namespace, "AuditWriteFailed")
    assert alarm["Dimensions"] == [{"Name": "service", "Value": api.metrics.service}]
    assert template["Outputs"]["AuditTableName"]["Value"] == {"Ref": "AuditTable"}


def test_since_takes_an_iso_time_or_an_age() -> None:
    now = utcnow()
    assert parse_since("2026-12-01T09:00Z") == datetime(2026, 12, 1, 9, tzinfo=UTC)
    assert parse_since("2026-12-01T09:00") == datetime(2026, 12, 1, 9, tzinfo=UTC)  # no zone: UTC
    assert parse_since("2026-12-01T10:00+01:00") == datetime(2026, 12, 1, 9, tzinfo=UTC)
    assert parse_since("30m", now=now) == now - timedelta(minutes=30)
    assert parse_since("7d", now=now) == now - timedelta(days=7)
    for bad in ("yesterday", "7w", "-3d", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_since(bad)
