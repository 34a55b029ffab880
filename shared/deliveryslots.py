"""Per-tenant leases on webhook deliveries, in the jobs table: one item per tenant (``WEBHOOKS#<tenant>``) whose
``leases`` map names each delivery being sent and when its lease ends.

A delivery takes a lease before it sends and gives it back after; one that dies meanwhile (a Lambda timeout)
holds it until it ends, so the lease outlives the longest attempt. Taking a lease is one strongly consistent read
and, when a lease is free, one write conditional on the item's ``version`` being the one read (so two deliveries
cannot take the last free lease together); a tenant at its bound costs the read alone. Ended leases are removed
by the next write. The item expires through the table's TTL once its tenant sends nothing for a day.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# Tries of a write that lost to another delivery's (the item changed since it was read) before giving up.
_WRITE_TRIES = 3
_KEEP_S = 24 * 3600  # the item's TTL after its last write


class DeliverySlots:
    def __init__(self, dynamodb: DynamoDBClient, table_name: str) -> None:
        self._ddb = dynamodb
        self._table = table_name

    @staticmethod
    def key(tenant: str) -> dict[str, dict[str, str]]:
        return {"pk": {"S": f"WEBHOOKS#{tenant}"}}

    def _read(self, tenant: str, now: float) -> tuple[dict[str, float], int | None, list[str]]:
        """The tenant's leases that have not ended (holder -> end), the item's version (None: no item yet) and
        the holders of the ended ones."""
        item = self._ddb.get_item(TableName=self._table, Key=self.key(tenant), ConsistentRead=True).get("Item")
        if item is None:
            return {}, None, []
        leases = {holder: float(value["N"]) for holder, value in item.get("leases", {}).get("M", {}).items()}
        live = {holder: until for holder, until in leases.items() if until > now}
        return live, int(item["version"]["N"]), [holder for holder in leases if holder not in live]

    def acquire(self, tenant: str, holder: str, *, limit: int, lease_s: float, now: float) -> bool:
        """Take one of the tenant's ``limit`` leases for ``holder`` until ``now + lease_s``; False when all are
        held (or other deliveries kept winning the write). Raises AWS errors."""
        until = str(math.ceil(now + lease_s))
        for _ in range(_WRITE_TRIES):
            live, version, ended = self._read(tenant, now)
            if len(live) >= limit:
                return False
            values: dict[str, Any] = {":one": {"N": "1"}, ":ttl": {"N": str(int(now) + _KEEP_S)}}
            request: dict[str, Any] = {"TableName": self._table, "Key": self.key(tenant)}
            if version is None:
                values[":leases"] = {"M": {holder: {"N": until}}}
                request |= {
                    "UpdateExpression": "SET leases = :leases, version = :one, expires_at = :ttl",
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            else:
                update = "SET leases.#me = :until, version = version + :one, expires_at = :ttl"
                if ended:
                    update += " REMOVE " + ", ".join(f"leases.#e{i}" for i in range(len(ended)))
                values |= {":until": {"N": until}, ":version": {"N": str(version)}}
                request |= {
                    "UpdateExpression": update,
                    "ConditionExpression": "version = :version",
                    "ExpressionAttributeNames": {"#me": holder} | {f"#e{i}": name for i, name in enumerate(ended)},
                }
            try:
                self._ddb.update_item(**request, ExpressionAttributeValues=values)
            except self._ddb.exceptions.ConditionalCheckFailedException:
                continue  # another delivery wrote since the read: read again
            return True
        return False

    def release(self, tenant: str, holder: str) -> None:
        """Give ``holder``'s lease back (nothing when it holds none). Raises AWS errors."""
        with contextlib.suppress(self._ddb.exceptions.ConditionalCheckFailedException):
            self._ddb.update_item(
                TableName=self._table,
                Key=self.key(tenant),
                UpdateExpression="REMOVE leases.#me",
                ConditionExpression="attribute_exists(leases.#me)",
                ExpressionAttributeNames={"#me": holder},
            )
