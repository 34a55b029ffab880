"""The audit log: one append-only item per state-changing call, in a table of its own (``AuditTable``).

Who (tenant, API key id, or the operator for admin commands), what (action and the job or key it concerns),
when, from where (source IP, user agent) and the outcome. An entry never holds a request body, a key, a webhook
secret or a URL: only the fields of :class:`AuditEntry`, so nothing secret can reach it.

Items: partition ``tenant``, sort ``sk`` = ``<UTC time>#<entry id>`` (newest first is a reverse query), a
``day`` attribute for the operator's cross-tenant index ``by_day``, and ``expires_at`` for DynamoDB's TTL.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from pydantic import BaseModel, ConfigDict, Field
from ulid import ULID

from shared.contracts import utcnow
from shared.errors import InvalidCursor

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

BY_DAY_INDEX = "by_day"
USER_AGENT_MAX_CHARS = 256

_ser = TypeSerializer()
_de = TypeDeserializer()


class AuditAction(StrEnum):
    """What was asked. API calls: the job, upload and webhook-secret routes; admin commands: keys and plans."""

    JOB_SUBMIT = "job.submit"
    JOB_CANCEL = "job.cancel"
    WEBHOOK_REDELIVER = "webhook.redeliver"
    WEBHOOK_SECRET_ROTATE = "webhook_secret.rotate"  # noqa: S105 an action name, not a secret
    UPLOAD_CREATE = "upload.create"
    TENANT_CREATE = "tenant.create"
    TENANT_SET_PLAN = "tenant.set_plan"
    KEY_CREATE = "key.create"
    KEY_REVOKE = "key.revoke"


class AuditOutcome(StrEnum):
    """``accepted``: the change was made (2xx); ``refused``: the caller was told no (4xx); ``failed``: the
    service could not answer (5xx)."""

    ACCEPTED = "accepted"
    REFUSED = "refused"
    FAILED = "failed"

    @classmethod
    def of_status(cls, status: int) -> AuditOutcome:
        if status < 400:
            return cls.ACCEPTED
        return cls.REFUSED if status < 500 else cls.FAILED


class AuditEvent(BaseModel):
    """One recorded call as its tenant reads it (``GET /v1/audit``). ``status`` is the HTTP status of an API call
    (None for admin commands); ``error_code`` the stable error code of a refusal (the API's ``{"error": {"code"}}``
    or the admin command's own); ``details``: a few non-secret facts of the change (a plan's new values), never a
    key, a secret or a URL."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="The entry's id (a ULID).")
    at: datetime = Field(description="When the call arrived (UTC).")
    tenant: str = Field(description="The tenant the call acted for.")
    key_id: str | None = Field(default=None, description="The id of the API key that made the call.")
    action: AuditAction
    target: str | None = Field(default=None, description="The job id or key id the call concerned.")
    source_ip: str | None = None
    user_agent: str | None = Field(default=None, max_length=USER_AGENT_MAX_CHARS)
    outcome: AuditOutcome
    status: int | None = Field(default=None, description="The HTTP status answered.")
    error_code: str | None = Field(default=None, description="The error code of a refusal or failure.")
    details: dict[str, str] = Field(default_factory=dict, max_length=16)


class AuditEntry(AuditEvent):
    """One recorded call, as stored and as the operator reads it: the tenant's view plus ``operator``, the AWS
    identity that ran an admin command (None for API calls; kept from tenants: it names the account's roles)."""

    id: str = Field(default_factory=lambda: str(ULID()), description="The entry's id (a ULID).")
    at: datetime = Field(default_factory=utcnow, description="When the call arrived (UTC).")
    operator: str | None = Field(default=None, description="The AWS identity that ran an admin command.")

    def tenant_view(self) -> AuditEvent:
        return AuditEvent.model_validate(self.model_dump(exclude={"operator"}))

    @property
    def sort_key(self) -> str:
        return f"{_stamp(self.at)}#{self.id}"


def _stamp(at: datetime) -> str:
    """Fixed-width UTC time, so sort keys order as times do."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AuditList(BaseModel):
    """A page of ``GET /v1/audit``: newest first; ``next_cursor`` continues it (None: no more)."""

    entries: list[AuditEvent]
    next_cursor: str | None


@dataclass
class PendingAudit:
    """The entry an API call will have if it is accepted as expected (``entry``), for the workflow that can write
    it together with a write of its own; ``recorded`` is the entry as it wrote it (None: not written, the API
    records the call as answered)."""

    entry: AuditEntry
    recorded: AuditEntry | None = None

    def answered_as(self, entry: AuditEntry) -> bool:
        """Whether ``entry`` (the call as answered) is the one already recorded."""
        return self.recorded is not None and self.recorded.model_dump(exclude={"id"}) == entry.model_dump(
            exclude={"id"}
        )


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditEntry]
    next_cursor: str | None


def _encode_cursor(plain: Mapping[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(dict(plain), sort_keys=True).encode()).decode().rstrip("=")


# A sort key as AuditEntry.sort_key makes it: a cursor naming anything else would reach DynamoDB as a start key
# it refuses (an empty or oversized key), a 500 instead of a 400.
_SORT_KEY = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z#[0-9A-HJKMNP-TV-Z]{26}$")


def _decode_cursor(cursor: str, *expected: set[str]) -> dict[str, Any]:
    """A cursor's JSON object with exactly one of the ``expected`` sets of string fields (a well-formed ``sk`` and
    a non-empty ``tenant`` where it has them), or InvalidCursor."""
    invalid = InvalidCursor("cursor is not valid")
    try:
        plain = json.loads(base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: [[[[...
        raise invalid from exc
    if not isinstance(plain, dict) or set(plain) not in expected or not all(isinstance(v, str) for v in plain.values()):
        raise invalid
    if "sk" in plain and not (_SORT_KEY.match(plain["sk"]) and plain["tenant"]):
        raise invalid
    return plain


class AuditLog:
    """Records entries and reads them back newest first.

    ``record`` is one conditional PutItem (``attribute_not_exists``), the only write the writers' IAM roles
    allow: an entry is never replaced, updated or deleted by the service; DynamoDB's TTL removes it
    ``retention_days`` after it was made.
    """

    def __init__(self, dynamodb: DynamoDBClient, table_name: str, *, retention_days: int) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._retention = timedelta(days=retention_days)

    def record(self, entry: AuditEntry) -> None:
        """Append ``entry``. Raises botocore's ClientError/BotoCoreError when the write fails; the caller
        decides what a lost entry means (the API logs it and answers anyway)."""
        self._ddb.put_item(**self.transact_item(entry)["Put"])

    def transact_item(self, entry: AuditEntry) -> dict[str, Any]:
        """The write that appends ``entry``, as a ``TransactWriteItems`` element (a submission writes it with its
        job's sent mark, in one call)."""
        fields = entry.model_dump(mode="json", exclude_none=True, exclude={"details"} if not entry.details else None)
        item = {
            **{k: _ser.serialize(v) for k, v in fields.items()},
            "sk": {"S": entry.sort_key},
            "day": {"S": entry.at.astimezone(UTC).date().isoformat()},
            "expires_at": {"N": str(int((entry.at + self._retention).timestamp()))},
        }
        return {"Put": {"TableName": self._table, "Item": item, "ConditionExpression": "attribute_not_exists(tenant)"}}

    def page(self, tenant: str, *, limit: int, cursor: str | None = None, since: datetime | None = None) -> AuditPage:
        """The tenant's entries, newest first, at most ``limit``; ``since``: only entries made then or later.
        Raises InvalidCursor for a cursor this listing did not make (another tenant's included)."""
        values: dict[str, Any] = {":t": {"S": tenant}}
        condition = "tenant = :t"
        if since is not None:
            condition += " AND sk >= :since"
            values[":since"] = {"S": _stamp(since)}
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if cursor:
            start = _decode_cursor(cursor, {"tenant", "sk"})
            if start["tenant"] != tenant:
                raise InvalidCursor("cursor is not valid")
            kwargs["ExclusiveStartKey"] = {k: {"S": v} for k, v in start.items()}
        resp = self._ddb.query(**kwargs)
        last = resp.get("LastEvaluatedKey")
        return AuditPage(
            entries=self._live([_entry(item) for item in resp.get("Items", [])]),
            next_cursor=_encode_cursor({k: v["S"] for k, v in last.items()}) if last else None,
        )

    def page_all(self, *, limit: int, cursor: str | None = None, since: datetime | None = None) -> AuditPage:
        """Every tenant's entries, newest first (the ``by_day`` index, one day at a time back to ``since``, by
        default the retention period). Raises InvalidCursor for a cursor this listing did not make."""
        now = utcnow()
        floor = max(since or now - self._retention, now - self._retention)
        day = now.date()
        start: dict[str, Any] | None = None
        if cursor:
            # A day and the last key read in it, or a day alone: start at that day's newest entry.
            plain = _decode_cursor(cursor, {"tenant", "sk", "day"}, {"day"})
            try:
                day = date.fromisoformat(plain["day"])
            except ValueError as exc:
                raise InvalidCursor("cursor is not valid") from exc
            start = {k: {"S": v} for k, v in plain.items()} if len(plain) > 1 else None
        entries: list[AuditEntry] = []
        while day >= floor.date() and len(entries) < limit:
            kwargs: dict[str, Any] = {
                "TableName": self._table,
                "IndexName": BY_DAY_INDEX,
                "KeyConditionExpression": "#day = :d AND sk >= :since",
                "ExpressionAttributeNames": {"#day": "day"},
                "ExpressionAttributeValues": {":d": {"S": day.isoformat()}, ":since": {"S": _stamp(floor)}},
                "ScanIndexForward": False,
                "Limit": limit - len(entries),
            }
            if start is not None:
                kwargs["ExclusiveStartKey"] = start
            resp = self._ddb.query(**kwargs)
            entries += [_entry(item) for item in resp.get("Items", [])]
            last = resp.get("LastEvaluatedKey")
            if last:
                if len(entries) >= limit:
                    cursor_key = {k: v["S"] for k, v in last.items()}
                    return AuditPage(self._live(entries), _encode_cursor(cursor_key))
                start = last
                continue
            day -= timedelta(days=1)
            start = None
        more = day >= floor.date()
        # A page that filled exactly at a day's end continues with the day before, from its newest entry.
        next_cursor = _encode_cursor({"day": day.isoformat()}) if more and entries else None
        return AuditPage(self._live(entries), next_cursor)

    def _live(self, entries: list[AuditEntry]) -> list[AuditEntry]:
        """Entries within retention (TTL deletes expired items within days, not at once)."""
        oldest = utcnow() - self._retention
        return [e for e in entries if e.at >= oldest]


def _entry(item: Mapping[str, Any]) -> AuditEntry:
    plain = {k: _de.deserialize(v) for k, v in item.items() if k not in {"sk", "day", "expires_at"}}
    if "status" in plain:
        plain["status"] = int(plain["status"])
    return AuditEntry.model_validate(plain)
