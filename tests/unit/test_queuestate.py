"""The queue reads and the worker item (shared/queuestate.py) on an in-memory DynamoDB keyed and indexed exactly as
template.yaml declares the jobs table."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest
from ulid import ULID

from shared.contracts import GenerationRequest, Job, JobStatus, utcnow
from shared.jobs import JobsRepository, expiry_epoch
from shared.queuestate import QueueState, RunningBatch, ShapeRate, WorkerStats
from tests.unit.conftest import JOBS_TABLE

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

TABLE = JOBS_TABLE


@pytest.fixture
def table(jobs_table: DynamoDBClient) -> DynamoDBClient:
    return jobs_table


def submit(repo: JobsRepository, tenant: str, **fields: Any) -> Job:
    body = {"prompt": "a fox " * 50, "width": 256, "height": 256, "num_inference_steps": 4, **fields}
    request = GenerationRequest.model_validate(body, context={"trusted": True}).normalised()
    now = utcnow()
    job = Job(
        job_id=str(ULID()),
        tenant=tenant,
        status=JobStatus.QUEUED,
        request=request,
        created_at=now,
        cache_key=request.cache_key(),
        expires_at=expiry_epoch(now, 1),
    )
    repo.create(job)
    time.sleep(0.002)  # distinct ULID milliseconds: submission order is id order
    return job


def test_the_jobs_ahead_are_the_older_queued_jobs_of_every_tenant(table: DynamoDBClient) -> None:
    repo, state = JobsRepository(table, TABLE), QueueState(table, TABLE)
    a = submit(repo, "alice", num_images=2)
    b = submit(repo, "bob", width=512)
    c = submit(repo, "alice")
    d = submit(repo, "carol", num_images=3)
    mine = submit(repo, "bob")
    later = submit(repo, "alice")
    repo.claim(c.job_id, "alice", worker_id="w1", lease_s=60, now=time.time())  # running: no longer ahead
    ahead = state.queued_ahead(mine.job_id, limit=100)
    assert [j.job_id for j in ahead.jobs] == [a.job_id, b.job_id, d.job_id]
    assert [(j.tenant, j.images, j.shape) for j in ahead.jobs] == [
        ("alice", 2, "256x256x4/euler_a"),
        ("bob", 1, "512x256x4/euler_a"),
        ("carol", 3, "256x256x4/euler_a"),
    ]
    assert ahead.more is False
    assert later.job_id not in {j.job_id for j in ahead.jobs}
    assert [j.job_id for j in state.running(limit=100)] == [c.job_id]
    # Read at most `limit` deep, saying there is more.
    cut = state.queued_ahead(mine.job_id, limit=2)
    assert ([j.job_id for j in cut.jobs], cut.more) == ([a.job_id, b.job_id], True)


def test_a_worker_item_round_trips_and_stays_out_of_every_job_listing(table: DynamoDBClient) -> None:
    repo, state = JobsRepository(table, TABLE), QueueState(table, TABLE)
    job = submit(repo, "alice")
    stats = WorkerStats(
        worker_id="host-1-abc",
        seen_at=1234.5,
        max_batch_images=8,
        window_images=16,
        rates={"256x256x4/euler_a": ShapeRate(3.25, 7.5, 12, 1200.0)},
        batch=RunningBatch(started_at=1230.0, images=8, shape="256x256x4/euler_a", estimated_s=2.5),
    )
    state.publish(stats)
    state.publish(stats)  # a rewrite of the same item, not a second one
    assert state.workers() == [stats]
    item = table.get_item(TableName=TABLE, Key={"pk": {"S": "WORKER#host-1-abc"}})["Item"]
    assert int(item["expires_at"]["N"]) == 1234 + 3600  # the table's TTL removes a dead worker's item
    assert len(str(item)) < 1024  # about one write unit
    assert [j.job_id for j in state.queued_ahead("Z" * 26, 100).jobs] == [job.job_id]
    assert [j.job_id for j in repo.list_for_tenant("alice").jobs] == [job.job_id]
    assert state.running(100) == []
