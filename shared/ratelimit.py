"""Per-tenant request rate limit: a fixed-window counter in the jobs table (item ``RATE#<tenant>#<window>``).

One conditional write per request; the counter items expire through the table's TTL. On AWS, API Gateway's
usage plan throttles per key in front of this; this limit is what holds locally and across keys of a tenant.
"""

from __future__ import annotations

import contextlib
import math
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
