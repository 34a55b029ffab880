"""Per-tenant request rate limit and daily GPU budget, counters in the jobs table.

The rate limit: a fixed-window counter (item ``RATE#<tenant>#<window>``).

One conditional write per request; the counter items expire through the table's TTL. On AWS, API Gateway's
usage plan throttles per key in front of this; this limit is what holds locally and across keys of a tenant.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


class RateLimiter:
    def __init__(self, dynamodb: DynamoDBClient, table_name: str) -> None:
        self._ddb = dynamodb
        self._table = table_name

    def hit(self, tenant: str, *, limit: int, window_s: int, now: float) -> float | None:
        """Count one request; None when it is allowed, else the seconds until the window resets."""
        window = int(now // window_s)
        window_end = (window + 1) * window_s
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": f"RATE#{tenant}#{window_s}#{window}"}},
                UpdateExpression="ADD hits :one SET expires_at = :exp",
                ConditionExpression="attribute_not_exists(hits) OR hits < :limit",
                ExpressionAttributeValues={
                    ":one": {"N": "1"},
                    ":limit": {"N": str(limit)},
                    ":exp": {"N": str(window_end + 3600)},
                },
            )
        except self._ddb.exceptions.ConditionalCheckFailedException:
            return max(1.0, math.ceil(window_end - now))
        return None

    def release(self, tenant: str, *, window_s: int, now: float) -> None:
        """Give back one request counted by :meth:`hit` at ``now`` (a submission that turned out to be a replay
        of another one's Idempotency-Key: it made nothing). A window already gone keeps its count."""
        window = int(now // window_s)
        with contextlib.suppress(self._ddb.exceptions.ConditionalCheckFailedException):
            self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": f"RATE#{tenant}#{window_s}#{window}"}},
                UpdateExpression="ADD hits :minus",
                ConditionExpression="hits > :zero",
                ExpressionAttributeValues={":minus": {"N": "-1"}, ":zero": {"N": "0"}},
            )


class DailyGpuBudget:
    """Per-tenant GPU work per UTC day: a counter item ``BUDGET#<tenant>#<date>`` in the jobs table, charged by one
    conditional write per accepted job (``pixel_steps`` of its request) and expiring through the table's TTL."""

    def __init__(self, dynamodb: DynamoDBClient, table_name: str) -> None:
        self._ddb = dynamodb
        self._table = table_name

    @staticmethod
    def _day(now: float) -> tuple[str, int]:
        day = int(now // 86400)
        return time.strftime("%Y-%m-%d", time.gmtime(day * 86400)), (day + 1) * 86400

    def charge(self, tenant: str, work: int, *, budget: int, now: float) -> float | None:
        """Count ``work`` against ``budget``; None when it fits, else the seconds until the day's budget resets."""
        date, day_end = self._day(now)
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": f"BUDGET#{tenant}#{date}"}},
                UpdateExpression="ADD used :work SET expires_at = :exp",
                ConditionExpression="attribute_not_exists(used) OR used <= :room",
                ExpressionAttributeValues={
                    ":work": {"N": str(work)},
                    ":room": {"N": str(budget - work)},
                    ":exp": {"N": str(day_end + 86400)},
                },
            )
        except self._ddb.exceptions.ConditionalCheckFailedException:
            return max(1.0, math.ceil(day_end - now))
        if work > budget:  # a first job larger than the whole budget passes the condition on a fresh day
            self.refund(tenant, work, now=now)
            return max(1.0, math.ceil(day_end - now))
        return None

    def refund(self, tenant: str, work: int, *, now: float) -> None:
        """Give back what :meth:`charge` counted at ``now`` for a request that made no GPU work."""
        date, _ = self._day(now)
        self._ddb.update_item(
            TableName=self._table,
            Key={"pk": {"S": f"BUDGET#{tenant}#{date}"}},
            UpdateExpression="ADD used :minus",
            ConditionExpression="attribute_exists(used)",
            ExpressionAttributeValues={":minus": {"N": str(-work)}},
        )

    def used(self, tenant: str, *, now: float) -> int:
        """The work counted today (for ``sdq admin tenants show``)."""
        date, _ = self._day(now)
        item = self._ddb.get_item(TableName=self._table, Key={"pk": {"S": f"BUDGET#{tenant}#{date}"}}).get("Item")
        return int(item["used"]["N"]) if item else 0
