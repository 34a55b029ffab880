"""Claims by model, against the real JobsRepository on moto's in-process DynamoDB: a worker claims only the jobs
of the models it has loaded and leaves the others' messages for a worker that has theirs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from shared.contracts import Job, JobStatus, utcnow
from shared.jobs import JobsRepository
from tests.unit.conftest import JOBS_TABLE
from tests.unit.workerfakes import RecordingQueue, held
from workflows.generation.claims import UNSERVED_VISIBILITY_S, Claims
from workflows.generation.heldmessages import Held, HeldMessages

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


@pytest.fixture
def repo(jobs_table: DynamoDBClient) -> JobsRepository:
    return JobsRepository(jobs_table, JOBS_TABLE)


@pytest.fixture
def pools() -> Iterator[tuple[ThreadPoolExecutor, ThreadPoolExecutor]]:
    table, prefetch = ThreadPoolExecutor(4), ThreadPoolExecutor(1)
    yield table, prefetch
    table.shutdown()
    prefetch.shutdown()


def stored(repo: JobsRepository, model: str) -> Held:
    h = held(model=model)
    repo.create(
        Job(
            job_id=h.job_id,
            tenant=h.tenant,
            status=JobStatus.QUEUED,
            request=h.request,
            created_at=utcnow(),
            cache_key=h.request.cache_key(),
            expires_at=int(time.time()) + 3600,
        )
    )
    return h


def test_a_worker_claims_only_jobs_of_its_models_and_leaves_the_others_visible_soon(
    repo: JobsRepository, pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor]
) -> None:
    queue = RecordingQueue()
    messages = HeldMessages(queue, max_batch_images=8, max_batch_wait_s=0.0)
    claims = Claims(
        messages,
        repo,
        table_pool=pools[0],
        prefetch=pools[1],
        stopping=threading.Event(),
        worker_id="worker-a",
        lease_s=60,
        clock=time.time,
        models=frozenset({"sd15", "tiny"}),
    )
    mine, also_mine, other = stored(repo, "sd15"), stored(repo, "tiny"), stored(repo, "sdxl")
    messages.accept([h.received for h in (mine, also_mine, other)])
    batch = messages.take_waiting()

    claimed = claims.claim_batch(batch)

    assert sorted(h.job_id for h in claimed.jobs) == sorted([mine.job_id, also_mine.job_id])
    # Not claimed: QUEUED, no attempt used, its message back in the queue soon and no longer held here.
    untouched = repo.get(other.job_id)
    assert (untouched.status, untouched.attempt) == (JobStatus.QUEUED, 0)
    assert queue.visibility == [(other.received.message_id, UNSERVED_VISIBILITY_S)]
    assert queue.deleted == []
    assert len(messages) == 2
