"""Claims by model, against the real JobsRepository on moto's in-process DynamoDB: a worker claims only the jobs
of the models it has loaded and leaves the others' messages for a worker that has theirs; of those, only the jobs
pinned to the revision it loaded (or to none), leaving the others for the workers that loaded theirs, and failing
a job pinned to a revision its registry retired."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from shared.contracts import Job, JobErrorCode, JobStatus, utcnow
from shared.jobs import JobsRepository
from shared.modelregistry import ModelRegistry
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


def stored(repo: JobsRepository, model: str, revision: str | None = None) -> Held:
    h = held(model=model)
    repo.create(
        Job(
            job_id=h.job_id,
            tenant=h.tenant,
            status=JobStatus.QUEUED,
            request=h.request,
            created_at=utcnow(),
            cache_key=h.request.cache_key(),
            expires_at=int(time.time()) + 86400,
            model_revision=revision,
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


def test_a_worker_claims_only_jobs_pinned_to_its_revision_leaves_others_and_fails_retired_ones(
    repo: JobsRepository, pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor]
) -> None:
    # The worker loaded sd15 at r2; its registry retired r0. r3 is unknown to it: pinned by a newer registry.
    registry = ModelRegistry.model_validate(
        {
            "models": [
                {
                    "id": "sd15",
                    "source": "/models/sd15",
                    "revision": "r2",
                    "retired_revisions": ["r0"],
                    "checksums": {"unet/w.safetensors": "0" * 64},
                    "architecture": "sd15",
                }
            ]
        }
    )
    queue = RecordingQueue()
    messages = HeldMessages(queue, max_batch_images=8, max_batch_wait_s=0.0)
    failed: list[Job] = []
    claims = Claims(
        messages,
        repo,
        table_pool=pools[0],
        prefetch=pools[1],
        stopping=threading.Event(),
        worker_id="worker-r2",
        lease_s=60,
        clock=time.time,
        models=frozenset({"sd15"}),
        revisions={"sd15": "r2"},
        registry=registry,
        on_failed=failed.append,
    )
    pinned, unpinned = stored(repo, "sd15", "r2"), stored(repo, "sd15")
    older, newer, retired = stored(repo, "sd15", "r1"), stored(repo, "sd15", "r3"), stored(repo, "sd15", "r0")
    messages.accept([h.received for h in (pinned, unpinned, older, newer, retired)])

    claimed = claims.claim_batch(messages.take_waiting())

    assert sorted(h.job_id for h in claimed.jobs) == sorted([pinned.job_id, unpinned.job_id])
    # r1 and r3: left QUEUED with no attempt used, visible again soon for the workers that loaded them.
    for left in (older, newer):
        job = repo.get(left.job_id)
        assert (job.status, job.attempt) == (JobStatus.QUEUED, 0)
    assert sorted(queue.visibility) == sorted(
        [(older.received.message_id, UNSERVED_VISIBILITY_S), (newer.received.message_id, UNSERVED_VISIBILITY_S)]
    )
    # r0: retired, so failed with a code of its own, its webhook started and its message deleted.
    gone = repo.get(retired.job_id)
    assert gone.status == JobStatus.FAILED
    assert gone.error is not None
    assert gone.error.code == JobErrorCode.MODEL_REVISION_GONE
    assert "Revision 'r0' of model 'sd15' is retired" in gone.error.message
    assert [job.job_id for job in failed] == [retired.job_id]
    assert queue.deleted == [retired.received.message_id]
    assert len(messages) == 2  # the two claimed
