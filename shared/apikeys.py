"""API keys: random bearer tokens mapped to a tenant, stored only as their sha256 in the jobs table.

Keys are 32 random bytes, so a fast hash is enough (there is nothing to brute-force); the plaintext is
shown once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING

from shared.contracts import utcnow

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

KEY_PREFIX = "sdq_"


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class ApiKeyStore:
    """Creates, resolves and revokes API keys (items ``APIKEY#<sha256>``)."""

    def __init__(self, dynamodb: DynamoDBClient, table_name: str) -> None:
        self._ddb = dynamodb
        self._table = table_name

    def create(self, tenant: str, *, api_key: str | None = None, label: str = "") -> str:
        """Register a key for ``tenant`` and return its plaintext (the only time it is available)."""
        key = api_key or new_key()
        self._ddb.put_item(
            TableName=self._table,
            Item={
                "pk": {"S": f"APIKEY#{hash_key(key)}"},
                "tenant": {"S": tenant},
                "label": {"S": label},
                "created_at": {"S": utcnow().isoformat()},
                "revoked": {"BOOL": False},
            },
        )
        return key

    def resolve(self, api_key: str) -> str | None:
        """The tenant owning an active key, or None for unknown and revoked keys alike."""
        if not api_key or len(api_key) > 256:
            return None
        digest = hash_key(api_key)
        resp = self._ddb.get_item(TableName=self._table, Key={"pk": {"S": f"APIKEY#{digest}"}})
        item = resp.get("Item")
        if item is None or item.get("revoked", {}).get("BOOL", False):
            return None
        # The lookup is by hash already; compare again in constant time for good measure.
        stored = item["pk"]["S"].removeprefix("APIKEY#")
        return item["tenant"]["S"] if hmac.compare_digest(stored, digest) else None

    def revoke(self, api_key: str) -> None:
        self._ddb.update_item(
            TableName=self._table,
            Key={"pk": {"S": f"APIKEY#{hash_key(api_key)}"}},
            UpdateExpression="SET revoked = :t",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues={":t": {"BOOL": True}},
        )
