"""Per-tenant leases, in the jobs table: one item per tenant and kind whose ``leases`` map names each holder and when
its lease ends. :class:`DeliverySlots` bounds a tenant's webhook deliveries in flight (``WEBHOOKS#<tenant>``),
:class:`StreamSlots` its open event streams (``STREAMS#<tenant>``).

A holder takes a lease before it starts and gives it back after; one that dies meanwhile (a Lambda timeout)
holds it until it ends, so the lease outlives the longest attempt or stream. Taking a lease is one strongly
consistent read and, when a lease is free, one write conditional on the item's ``version`` being the one read (so
two holders cannot take the last free lease together); a tenant at its bound costs the read alone. Ended leases are
removed by the next write. The item expires through the table's TTL once its tenant takes none for a day.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# Tries of a write that lost to another holder's (the item changed since it was read) before giving up.
_WRITE_TRIES = 3
_KEEP_S = 24 * 3600  # the item's TTL after its last write


class TenantLeases:
    """A tenant's leases of one kind (the item's key prefix, ``PREFIX``)."""

    PREFIX: ClassVar[str]

    def __init__(self, dynamodb: DynamoDBClient, table_name: str) -> None:
        self._ddb = dynamodb
        self._table = table_name

    @classmethod
    def key(cls, tenant: str) -> dict[str, dict[str, str]]:
        return {"pk": {"S": f"{cls.PREFIX}{tenant}"}}

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
        held (or other holders kept winning the write). Raises AWS errors."""
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
                continue  # another holder wrote since the read: read again
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


class DeliverySlots(TenantLeases):
    """A tenant's terminal webhooks being sent (``Settings.webhook_deliveries_per_tenant``)."""

    PREFIX = "WEBHOOKS#"


class StreamSlots(TenantLeases):
    """A tenant's open event streams (``Settings.event_streams_per_tenant``): each holds an execution of the events
    function for up to 15 minutes."""

    PREFIX = "STREAMS#"
