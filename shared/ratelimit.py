"""Per-tenant request rate limit and daily GPU budget, counters in the jobs table.

The rate limit: a fixed-window counter (item ``RATE#<tenant>#<window>``).

One conditional write per request; the counter items expire through the table's TTL. On AWS, API Gateway's
usage plan throttles per key in front of this; this limit is what holds locally and across keys of a tenant.

Each counter's write is also a :class:`Charge`, an element of a ``TransactWriteItems`` call, so that a submission
counts the request, its GPU work and the job in one call (:meth:`shared.jobs.JobsRepository.create`); a charge
whose condition fails cancels the call and is raised as :class:`ChargeRefused`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


class Limit(StrEnum):
    """The counter a charge is made against."""

    RATE = "rate"
    DAILY_GPU_BUDGET = "daily_gpu_budget"


@dataclass(frozen=True)
class Charge:
    """One counter's conditional write: ``update`` holds UpdateItem's arguments (a transaction's ``Update``
    element as it is); ``retry_after_s`` is what to tell the caller when its condition fails."""

    limit: Limit
    update: dict[str, Any]
    retry_after_s: float

    def transact_item(self) -> dict[str, Any]:
        return {"Update": self.update}


class ChargeRefused(Exception):
    """A write's transaction was cancelled because ``charge``'s condition failed (its limit is reached)."""

    def __init__(self, charge: Charge) -> None:
        super().__init__(f"{charge.limit} limit reached")
        self.charge = charge


class RateLimiter:
    def __init__(self, dynamodb: DynamoDBClient, table_name: str) -> None:
        self._ddb = dynamodb
        self._table = table_name

    def charge(self, tenant: str, *, limit: int, window_s: int, now: float) -> Charge:
        """The write that counts one request, allowed while fewer than ``limit`` were counted in its window."""
        window = int(now // window_s)
        window_end = (window + 1) * window_s
        update = {
            "TableName": self._table,
            "Key": {"pk": {"S": f"RATE#{tenant}#{window_s}#{window}"}},
            "UpdateExpression": "ADD hits :one SET expires_at = :exp",
            "ConditionExpression": "attribute_not_exists(hits) OR hits < :limit",
            "ExpressionAttributeValues": {
                ":one": {"N": "1"},
                ":limit": {"N": str(limit)},
                ":exp": {"N": str(window_end + 3600)},
            },
        }
        return Charge(Limit.RATE, update, max(1.0, math.ceil(window_end - now)))

    def hit(self, tenant: str, *, limit: int, window_s: int, now: float) -> float | None:
        """Count one request; None when it is allowed, else the seconds until the window resets."""
        charge = self.charge(tenant, limit=limit, window_s=window_s, now=now)
        try:
            self._ddb.update_item(**charge.update)
        except self._ddb.exceptions.ConditionalCheckFailedException:
            return charge.retry_after_s
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
    conditional write per accepted job (``pixel_steps`` of its request) and expiring through the table's TTL.

    A job that joins an identical running one (the result cache) gets its work back, and owes it
    (``BUDGET#<tenant>#owed#<job>``, :meth:`deferral`, written with the join): should it be sent to run itself after
    all (its source was cancelled or failed), its work is counted again, once (:meth:`collect`)."""

    def __init__(self, dynamodb: DynamoDBClient, table_name: str) -> None:
        self._ddb = dynamodb
        self._table = table_name

    @staticmethod
    def _day(now: float) -> tuple[str, int]:
        day = int(now // 86400)
        return time.strftime("%Y-%m-%d", time.gmtime(day * 86400)), (day + 1) * 86400

    def work_charge(self, tenant: str, work: int, *, budget: int, now: float) -> Charge:
        """The write that counts ``work`` against ``budget``. Its condition holds for any ``work`` on a day with
        nothing counted yet: a caller checks ``work <= budget`` itself (:meth:`charge` does)."""
        date, day_end = self._day(now)
        update = {
            "TableName": self._table,
            "Key": {"pk": {"S": f"BUDGET#{tenant}#{date}"}},
            "UpdateExpression": "ADD used :work SET expires_at = :exp",
            "ConditionExpression": "attribute_not_exists(used) OR used <= :room",
            "ExpressionAttributeValues": {
                ":work": {"N": str(work)},
                ":room": {"N": str(budget - work)},
                ":exp": {"N": str(day_end + 86400)},
            },
        }
        return Charge(Limit.DAILY_GPU_BUDGET, update, max(1.0, math.ceil(day_end - now)))

    def charge(self, tenant: str, work: int, *, budget: int, now: float) -> float | None:
        """Count ``work`` against ``budget``; None when it fits, else the seconds until the day's budget resets."""
        charge = self.work_charge(tenant, work, budget=budget, now=now)
        try:
            self._ddb.update_item(**charge.update)
        except self._ddb.exceptions.ConditionalCheckFailedException:
            return charge.retry_after_s
        if work > budget:  # a first job larger than the whole budget passes the condition on a fresh day
            self.refund(tenant, work, now=now)
            return charge.retry_after_s
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

    @staticmethod
    def owed_key(tenant: str, job_id: str) -> dict[str, dict[str, str]]:
        """The item that records the work ``job_id`` was given back when it joined an identical job."""
        return {"pk": {"S": f"BUDGET#{tenant}#owed#{job_id}"}}

    def deferral(self, tenant: str, job_id: str, work: int, *, now: float, keep_until: int) -> list[dict[str, Any]]:
        """The writes that give back the ``work`` counted at ``now`` for a job that joins an identical one (its
        images answer it: no GPU work of its own), and record that it owes that work should it run itself after
        all (:meth:`collect`; the record is kept until ``keep_until``, the job's retention): ``TransactWriteItems``
        elements, for the join's own transaction (:meth:`shared.jobs.JobsRepository.create_joined`), so that they
        land with the join or not at all, and always before the job can be sent to run itself."""
        date, _ = self._day(now)
        return [
            {
                "Update": {
                    "TableName": self._table,
                    "Key": {"pk": {"S": f"BUDGET#{tenant}#{date}"}},
                    "UpdateExpression": "ADD used :minus",
                    "ConditionExpression": "attribute_exists(used)",
                    "ExpressionAttributeValues": {":minus": {"N": str(-work)}},
                }
            },
            {
                "Update": {
                    "TableName": self._table,
                    "Key": self.owed_key(tenant, job_id),
                    "UpdateExpression": "SET owed = :yes, expires_at = :keep",
                    "ExpressionAttributeValues": {":yes": {"BOOL": True}, ":keep": {"N": str(keep_until)}},
                }
            },
        ]

    def collect(self, tenant: str, job_id: str, work: int, *, now: float) -> bool:
        """Count the ``work`` that ``job_id`` owes (:meth:`deferral`) on ``now``'s day, now that it runs itself: once
        per job however often it is sent, and never refused (the job was accepted; later submissions see the
        spend). True when counted; False when the job owed nothing (counted already, or never given back: a
        plan without a budget). Raises AWS errors."""
        date, day_end = self._day(now)
        try:
            self._ddb.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": self.owed_key(tenant, job_id),
                            "UpdateExpression": "REMOVE owed",
                            "ConditionExpression": "owed = :yes",
                            "ExpressionAttributeValues": {":yes": {"BOOL": True}},
                        }
                    },
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": {"pk": {"S": f"BUDGET#{tenant}#{date}"}},
                            "UpdateExpression": "ADD used :work SET expires_at = :exp",
                            "ExpressionAttributeValues": {
                                ":work": {"N": str(work)},
                                ":exp": {"N": str(day_end + 86400)},
                            },
                        }
                    },
                ]
            )
        except self._ddb.exceptions.TransactionCanceledException as exc:
            reasons = exc.response.get("CancellationReasons") or []
            if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                return False
            raise
        return True

    def used(self, tenant: str, *, now: float) -> int:
        """The work counted today (for ``sdq admin tenants show``)."""
        date, _ = self._day(now)
        item = self._ddb.get_item(TableName=self._table, Key={"pk": {"S": f"BUDGET#{tenant}#{date}"}}).get("Item")
        return int(item["used"]["N"]) if item else 0
