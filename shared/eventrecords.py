"""The records of a job's started/progress webhooks (``event_webhook_*`` attributes of its ``JOB#`` item): the
in-flight mark the terminal notice waits behind, and the last attempt. The terminal webhook's own record
(``webhook_*``) is :mod:`shared.jobs`' business."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.contracts import JobStatus
from shared.jobs import job_pk

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


class EventRecords:
    """The ``event_webhook_*`` attributes of a job: the in-flight mark of a started/progress send and the record
    of the last one. Kept apart from ``webhook_*`` (the terminal webhook's record, shown by GET)."""

    def __init__(self, dynamodb: DynamoDBClient, table_name: str, *, now: Callable[[], float] = time.time) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._now = now

    def begin(self, job_id: str, worker_id: str, *, in_flight_s: float) -> bool:
        """Mark a send in flight for ``in_flight_s`` while the job is RUNNING under ``worker_id``; False (nothing
        to send) otherwise."""
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": job_pk(job_id)}},
                UpdateExpression="SET event_webhook_sending_until = :until",
                ConditionExpression="#s = :running AND worker_id = :w",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":until": {"N": str(int(self._now() + in_flight_s) + 1)},
                    ":running": {"S": JobStatus.RUNNING.value},
                    ":w": {"S": worker_id},
                },
            )
        except self._ddb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def finish(
        self, job_id: str, event: str, msg_id: str, *, outcome: str, status: int | None, error: str | None
    ) -> None:
        """Record the attempt and lift the in-flight mark."""
        record = {
            "event": event,
            "webhook_id": msg_id,
            "outcome": outcome,
            "status": status,
            "error": error,
            "at": datetime.now(UTC).isoformat(),
        }
        self._ddb.update_item(
            TableName=self._table,
            Key={"pk": {"S": job_pk(job_id)}},
            UpdateExpression=(
                "SET event_webhook = :record REMOVE event_webhook_sending_until ADD event_webhook_count :one"
            ),
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues={":record": {"S": json.dumps(record)}, ":one": {"N": "1"}},
        )

    def in_flight_until(self, job_id: str) -> float:
        """Epoch seconds until which a started/progress send may still be under way (0: none)."""
        resp = self._ddb.get_item(
            TableName=self._table,
            Key={"pk": {"S": job_pk(job_id)}},
            ProjectionExpression="event_webhook_sending_until",
            ConsistentRead=True,
        )
        value = resp.get("Item", {}).get("event_webhook_sending_until", {}).get("N")
        return float(value) if value else 0.0

    def last(self, job_id: str) -> dict[str, Any] | None:
        """The last started/progress attempt's record, with ``count`` (sends so far), or None."""
        resp = self._ddb.get_item(
            TableName=self._table,
            Key={"pk": {"S": job_pk(job_id)}},
            ProjectionExpression="event_webhook, event_webhook_count",
            ConsistentRead=True,
        )
        item = resp.get("Item", {})
        if "event_webhook" not in item:
            return None
        record: dict[str, Any] = json.loads(item["event_webhook"]["S"])
        record["count"] = int(item.get("event_webhook_count", {}).get("N", "0"))
        return record
