"""API keys: random bearer tokens mapped to a tenant, stored only as their sha256 in the jobs table.

A key is ``sdq_`` and 32 random bytes, so a fast hash is enough (there is nothing to brute-force); the plaintext
is shown once, at creation. Its id (``key_`` and the first 16 hex digits of the hash) names it everywhere else:
in listings, logs, the audit log and ``sdq admin keys revoke``. Knowing an id tells nothing about the key.

Items: ``APIKEY#<key id>`` holds the tenant, the full hash (compared in constant time), the name, the creation,
expiry, revocation and last-use times; the tenant's item (``ACCOUNT#<tenant>``, :mod:`shared.tenants`) lists its
key ids, so a tenant's keys are one read away.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from shared.contracts import utcnow
from shared.errors import NotFound
from shared.tenants import ACCOUNT_PREFIX

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

KEY_PREFIX = "sdq_"
KEY_ID_PREFIX = "key_"
ITEM_PREFIX = "APIKEY#"


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def key_id_of(api_key: str) -> str:
    return KEY_ID_PREFIX + hash_key(api_key)[:16]


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyNotFound(NotFound):
    """No key has this id."""


class ApiKey(BaseModel):
    """A key as an operator sees it: never its plaintext nor its hash."""

    key_id: str
    tenant: str
    name: str = ""
    created_at: datetime
    expires_at: datetime | None = Field(default=None, description="None: never expires")
    revoked_at: datetime | None = None
    last_used_at: datetime | None = Field(default=None, description="To within the store's write period")

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


class IssuedKey(ApiKey):
    """A key just created: the only time its plaintext exists outside its holder."""

    plaintext: str


class Caller(BaseModel):
    """Who a valid key speaks for."""

    tenant: str
    key_id: str


class ApiKeyStore:
    """Creates, resolves, lists and revokes API keys."""

    def __init__(self, dynamodb: DynamoDBClient, table_name: str, *, last_used_every_s: int = 300) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._last_used_every_s = last_used_every_s

    def create(
        self, tenant: str, *, api_key: str | None = None, name: str = "", expires_at: datetime | None = None
    ) -> IssuedKey:
        """Register a key for ``tenant`` (a given ``api_key`` is re-registered as it is: the local development
        key survives restarts) and return it with its plaintext."""
        key = api_key or new_key()
        key_id = key_id_of(key)
        now = utcnow()
        item: dict[str, Any] = {
            "pk": {"S": ITEM_PREFIX + key_id},
            "key_hash": {"S": hash_key(key)},
            "tenant": {"S": tenant},
            "name": {"S": name},
            "created_at": {"S": now.isoformat()},
        }
        if expires_at is not None:
            item["valid_until"] = {"S": expires_at.astimezone(UTC).isoformat()}
        self._ddb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": self._table, "Item": item}},
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": {"pk": {"S": ACCOUNT_PREFIX + tenant}},
                        "UpdateExpression": "ADD key_ids :id SET tenant = :tenant",
                        "ExpressionAttributeValues": {":id": {"SS": [key_id]}, ":tenant": {"S": tenant}},
                    }
                },
            ]
        )
        return IssuedKey(key_id=key_id, tenant=tenant, name=name, created_at=now, expires_at=expires_at, plaintext=key)

    def resolve(self, api_key: str, *, now: datetime | None = None) -> Caller | None:
        """The caller an active key speaks for, or None for unknown, revoked and expired keys alike. Records its
        use (at most one write per key per ``last_used_every_s``)."""
        if not api_key or len(api_key) > 256:
            return None
        digest = hash_key(api_key)
        key_id = KEY_ID_PREFIX + digest[:16]
        resp = self._ddb.get_item(TableName=self._table, Key={"pk": {"S": ITEM_PREFIX + key_id}}, ConsistentRead=True)
        item = resp.get("Item")
        if item is None or not hmac.compare_digest(item.get("key_hash", {}).get("S", ""), digest):
            return None
        now = now or utcnow()
        if not _from_item(item).active(now):
            return None
        self._touch(key_id, item, now)
        return Caller(tenant=item["tenant"]["S"], key_id=key_id)

    def get(self, key_id: str) -> ApiKey:
        resp = self._ddb.get_item(TableName=self._table, Key={"pk": {"S": ITEM_PREFIX + key_id}}, ConsistentRead=True)
        if "Item" not in resp or not key_id.startswith(KEY_ID_PREFIX):
            raise KeyNotFound(f"No API key {key_id!r}.")
        return _from_item(resp["Item"])

    def list(self, tenant: str) -> list[ApiKey]:
        """The tenant's keys, oldest first, revoked and expired ones included."""
        resp = self._ddb.get_item(
            TableName=self._table, Key={"pk": {"S": ACCOUNT_PREFIX + tenant}}, ProjectionExpression="key_ids"
        )
        ids = sorted(resp.get("Item", {}).get("key_ids", {}).get("SS", []))
        keys: list[ApiKey] = []
        for start in range(0, len(ids), 100):
            chunk = [{"pk": {"S": ITEM_PREFIX + key_id}} for key_id in ids[start : start + 100]]
            request: dict[str, Any] = {self._table: {"Keys": chunk, "ConsistentRead": True}}
            while request:
                got = self._ddb.batch_get_item(RequestItems=request)
                keys.extend(_from_item(item) for item in got["Responses"].get(self._table, []))
                request = got.get("UnprocessedKeys") or {}
        return sorted(keys, key=lambda k: (k.created_at, k.key_id))

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key for good (a revoked key stays listed). KeyNotFound for an unknown id."""
        try:
            resp = self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": ITEM_PREFIX + key_id}},
                UpdateExpression="SET revoked_at = if_not_exists(revoked_at, :now)",
                ConditionExpression="attribute_exists(key_hash)",
                ExpressionAttributeValues={":now": {"S": utcnow().isoformat()}},
                ReturnValues="ALL_NEW",
            )
        except self._ddb.exceptions.ConditionalCheckFailedException as exc:
            raise KeyNotFound(f"No API key {key_id!r}.") from exc
        return _from_item(resp["Attributes"])

    def _touch(self, key_id: str, item: dict[str, Any], now: datetime) -> None:
        last = item.get("last_used_at", {}).get("S")
        if last and (now - datetime.fromisoformat(last)).total_seconds() < self._last_used_every_s:
            return
        cutoff = datetime.fromtimestamp(now.timestamp() - self._last_used_every_s, UTC).isoformat()
        # Another call may have recorded it within the period: then the condition fails, and that is fine.
        with contextlib.suppress(self._ddb.exceptions.ConditionalCheckFailedException):
            self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": ITEM_PREFIX + key_id}},
                UpdateExpression="SET last_used_at = :now",
                ConditionExpression="attribute_not_exists(last_used_at) OR last_used_at < :cutoff",
                ExpressionAttributeValues={":now": {"S": now.isoformat()}, ":cutoff": {"S": cutoff}},
            )


def _time(item: dict[str, Any], name: str) -> datetime | None:
    value = item.get(name, {}).get("S")
    return datetime.fromisoformat(value) if value else None


def _from_item(item: dict[str, Any]) -> ApiKey:
    return ApiKey(
        key_id=item["pk"]["S"].removeprefix(ITEM_PREFIX),
        tenant=item["tenant"]["S"],
        name=item.get("name", {}).get("S", ""),
        created_at=_time(item, "created_at") or datetime.fromtimestamp(0, UTC),
        expires_at=_time(item, "valid_until"),
        revoked_at=_time(item, "revoked_at"),
        last_used_at=_time(item, "last_used_at"),
    )
