"""The heartbeat against the real JobsRepository on moto's DynamoDB: leases of claimed jobs renewed, every held
message's visibility extended, and a message let go while the extension ran set back to what it was let go at."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from shared.contracts import Job, JobStatus, utcnow
from shared.jobs import JobsRepository
from shared.queue import Received
from tests.unit.conftest import JOBS_TABLE
from tests.unit.workerfakes import RecordingQueue, received
from workflows.generation.heartbeat import Heartbeat
from workflows.generation.heldmessages import Held, HeldMessages

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

TABLE = JOBS_TABLE
WORKER = "worker-a"


@pytest.fixture
def repo(jobs_table: DynamoDBClient) -> JobsRepository:
    return JobsRepository(jobs_table, TABLE)


class LetGoDuringExtension(RecordingQueue):
    """While the heartbeat's extension is in flight, another thread lets ``victim`` go (a claim lost, a stop)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: HeldMessages | None = None
        self.victim: Held | None = None

    def set_visibility(self, messages: list[Received], visibility_s: int) -> list[str]:
        refused = super().set_visibility(messages, visibility_s)
        if self.victim is not None and self.held is not None and visibility_s == 300:
            victim, self.victim = self.victim, None
            self.held.let_go([victim], 0)
        return refused


def test_a_beat_renews_leases_extends_visibility_and_sets_a_let_go_message_back(repo: JobsRepository) -> None:
    queue = LetGoDuringExtension()
    held_messages = HeldMessages(queue, max_batch_images=8, max_batch_wait_s=0.0)
    held_messages.accept([received(), received(), received()])
    running, waiting, lost = held_messages.take_waiting()
    for h in (running, lost):
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
        h.job = repo.claim(h.job_id, h.tenant, worker_id=WORKER, lease_s=10, now=time.time())
        h.claimed_at = time.monotonic()
    queue.held, queue.victim = held_messages, lost
    pool = ThreadPoolExecutor(2)
    before = time.time()
    Heartbeat(
        held_messages,
        repo,
        pool,
        threading.Event(),
        worker_id=WORKER,
        interval_s=60,
        visibility_s=300,
        clock=time.time,
    ).beat()
    pool.shutdown()
    all_three = [h.received.message_id for h in (running, waiting, lost)]
    # Every held message extended (waiting ones too); the one let go meanwhile (visible, by the let-go's own call)
    # set back to visible after the extension that may have hidden it again.
    assert queue.visibility == [(i, 300) for i in all_three] + [(lost.received.message_id, 0)] * 2
    assert repo.lease_remaining(running.job_id, before) >= 299  # the claimed job's lease renewed
