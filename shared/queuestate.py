"""The queue as the API sees it: the jobs ahead of a QUEUED job, the jobs running, and the workers' throughput items.

One index of the jobs table serves it (``template.yaml``): ``by_status``, hash ``status``, range ``job_id``,
projecting ``tenant``, ``request`` and ``stats``. It holds every job by status in submission order (job ids are
ULIDs, which sort by time), so a job's queue position costs three Queries of it:
- the jobs ahead: ``status = QUEUED AND job_id < :id``, read at most ``limit`` entries deep;
- the jobs running: ``status = RUNNING`` (claimed by a worker, generating or claimed ahead of its next batch);
- the workers: ``status = WORKER``, the partition of the worker items below.

A worker item, ``WORKER#<worker_id>``, is written by the worker's throughput publisher
(``workflows/generation/throughput.py``) every few seconds, off the GPU thread, with one UpdateItem (about 1 write
unit):

- ``status`` (``"WORKER"``, never a job status) and ``job_id`` (the worker id): its place in ``by_status``;
- ``seen_at``: epoch seconds of the write (a worker not seen for a while is not running);
- ``expires_at``: the table's TTL, ``seen_at`` + :data:`WORKER_ITEM_TTL_S` (a dead worker's item goes away; until
  then its measured rates still say how fast a fleet that starts again from zero will be);
- ``stats``: JSON, :class:`WorkerStats` (batch limits, images/s per shape, the batch on the GPU now, stopping).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

BY_STATUS_INDEX = "by_status"
WORKER_STATUS = "WORKER"  # the by_status partition of the worker items
WORKER_ITEM_TTL_S = 3600


def worker_pk(worker_id: str) -> str:
    return f"WORKER#{worker_id}"


def shape_key(width: int, height: int, steps: int, scheduler: str) -> str:
    """The shape throughput is measured per (as the worker's ``batch`` log line writes it): ``WxHxSTEPS/scheduler``."""
    return f"{width}x{height}x{steps}/{scheduler}"


@dataclass(frozen=True)
class ShapeRate:
    """A worker's measured speed at one shape: images/s (smoothed over its batches) at about ``batch_images``."""

    images_per_s: float
    batch_images: float
    batches: int
    measured_at: float


@dataclass(frozen=True)
class RunningBatch:
    """The batch on a worker's GPU now: when it started, its images and its estimated seconds (None: not known)."""

    started_at: float
    images: int
    shape: str
    estimated_s: float | None


@dataclass(frozen=True)
class WorkerStats:
    """What one worker publishes about itself."""

    worker_id: str
    seen_at: float
    max_batch_images: int
    window_images: int  # images it holds from the queue before it stops receiving (the batcher's look-ahead)
    rates: dict[str, ShapeRate] = field(default_factory=dict)
    batch: RunningBatch | None = None
    stopping: bool = False

    def to_json(self) -> str:
        body = asdict(self)
        body.pop("worker_id")
        body.pop("seen_at")
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> WorkerStats:
        body = json.loads(item["stats"]["S"])
        batch = body.get("batch")
        return cls(
            worker_id=item["job_id"]["S"],
            seen_at=float(item["seen_at"]["N"]),
            max_batch_images=int(body["max_batch_images"]),
            window_images=int(body["window_images"]),
            rates={shape: ShapeRate(**rate) for shape, rate in body.get("rates", {}).items()},
            batch=RunningBatch(**batch) if batch else None,
            stopping=bool(body.get("stopping", False)),
        )


@dataclass(frozen=True)
class QueuedWork:
    """One job in the queue (or running) as the estimate needs it."""

    job_id: str
    tenant: str
    images: int
    shape: str
    pixel_steps: int  # width x height x steps of one of its images: the work of an image, to scale rates across shapes

    @classmethod
    def from_request(cls, job_id: str, tenant: str, request: Mapping[str, Any]) -> QueuedWork:
        width, height = int(request.get("width", 512)), int(request.get("height", 512))
        steps = int(request.get("num_inference_steps", 30))
        return cls(
            job_id=job_id,
            tenant=tenant,
            images=int(request.get("num_images", 1)),
            shape=shape_key(width, height, steps, str(request.get("scheduler", ""))),
            pixel_steps=width * height * steps,
        )


@dataclass(frozen=True)
class Ahead:
    """The jobs ahead of one, oldest first; ``more`` when there are more than were read."""

    jobs: list[QueuedWork]
    more: bool


class QueueState:
    """Reads of the ``by_status`` index, and the worker's own item write."""

    def __init__(self, dynamodb: DynamoDBClient, table_name: str) -> None:
        self._ddb = dynamodb
        self._table = table_name

    # -- the API's reads (eventually consistent, like every index read) -------------------------------

    def queued_ahead(self, job_id: str, limit: int) -> Ahead:
        """The QUEUED jobs submitted before ``job_id`` (at most ``limit``, oldest first)."""
        jobs: list[QueuedWork] = []
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": "#s = :s AND job_id < :id",
            "ExpressionAttributeValues": {":s": {"S": "QUEUED"}, ":id": {"S": job_id}},
        }
        while len(jobs) < limit:
            resp = self._ddb.query(**self._by_status(kwargs, limit - len(jobs)))
            jobs += [_work(item) for item in resp.get("Items", [])]
            last = resp.get("LastEvaluatedKey")
            if not last:
                return Ahead(jobs, more=False)
            kwargs["ExclusiveStartKey"] = last
        return Ahead(jobs, more=True)

    def running(self, limit: int) -> list[QueuedWork]:
        """The RUNNING jobs (claimed by a worker: generating, or claimed ahead of its next batch), at most ``limit``."""
        resp = self._ddb.query(**self._by_status(_partition("RUNNING"), limit))
        return [_work(item) for item in resp.get("Items", [])]

    def workers(self) -> list[WorkerStats]:
        """Every worker item not yet removed by the TTL (stale ones included: the caller judges freshness)."""
        found: list[WorkerStats] = []
        kwargs = self._by_status(_partition(WORKER_STATUS), 1000, projection="job_id, seen_at, stats")
        while True:
            resp = self._ddb.query(**kwargs)
            found += [WorkerStats.from_item(item) for item in resp.get("Items", []) if "stats" in item]
            last = resp.get("LastEvaluatedKey")
            if not last:
                return found
            kwargs["ExclusiveStartKey"] = last

    def _by_status(self, kwargs: dict[str, Any], limit: int, projection: str = "job_id, tenant, #r") -> dict[str, Any]:
        names = {"#s": "status"} | ({"#r": "request"} if "#r" in projection else {})  # both reserved words
        return {
            "TableName": self._table,
            "IndexName": BY_STATUS_INDEX,
            "ExpressionAttributeNames": names,
            "ProjectionExpression": projection,
            "Limit": max(1, limit),
            **kwargs,
        }

    # -- the worker's write ------------------------------------------------------------------------------

    def publish(self, stats: WorkerStats) -> None:
        """Write (or replace) the worker's item: one UpdateItem, about 1 write unit."""
        self._ddb.update_item(
            TableName=self._table,
            Key={"pk": {"S": worker_pk(stats.worker_id)}},
            UpdateExpression="SET #s = :s, job_id = :w, seen_at = :seen, expires_at = :exp, stats = :stats",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={
                ":s": {"S": WORKER_STATUS},
                ":w": {"S": stats.worker_id},
                ":seen": {"N": str(Decimal(str(round(stats.seen_at, 3))))},
                ":exp": {"N": str(int(stats.seen_at) + WORKER_ITEM_TTL_S)},
                ":stats": {"S": stats.to_json()},
            },
        )


def _partition(status: str) -> dict[str, Any]:
    return {"KeyConditionExpression": "#s = :s", "ExpressionAttributeValues": {":s": {"S": status}}}


def _work(item: Mapping[str, Any]) -> QueuedWork:
    request = json.loads(item["request"]["S"]) if "request" in item else {}
    return QueuedWork.from_request(item["job_id"]["S"], item.get("tenant", {}).get("S", ""), request)
