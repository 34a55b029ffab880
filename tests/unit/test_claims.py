"""Claims against the real JobsRepository on moto's in-process DynamoDB: a batch claimed in parallel, every kind
of lost claim settled (gone, expired, finished, held by a live worker, an error), the batch claimed ahead handed
back on a stop."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import boto3
import pytest
from botocore.exceptions import ClientError

from shared.contracts import Job, JobStatus, utcnow
from shared.errors import InvalidTransition, JobExpired, JobNotFound
from shared.jobs import JobsRepository
from shared.settings import WORKFLOW_TIMEOUT_S
from tests.unit.conftest import JOBS_TABLE
from tests.unit.workerfakes import RecordingQueue, held
from workflows.generation.claims import RUN_RETENTION_S, Claims
from workflows.generation.heldmessages import Held, HeldMessages

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

TABLE = JOBS_TABLE
WORKER = "worker-a"
ASL = json.loads((Path(__file__).resolve().parents[2] / "statemachine.asl.json").read_text())


@pytest.fixture
def repo(jobs_table: DynamoDBClient) -> JobsRepository:
    return JobsRepository(jobs_table, TABLE)


class Loop:
    """The claims' collaborators as the worker wires them."""

    def __init__(self, repo: JobsRepository, on_failed: Callable[[Job], object] | None = None) -> None:
        self.queue = RecordingQueue()
        self.held = HeldMessages(self.queue, max_batch_images=8, max_batch_wait_s=0.0)
        self.stopping = threading.Event()
        self.pools = [ThreadPoolExecutor(4), ThreadPoolExecutor(1)]
        self.claims = Claims(
            self.held,
            repo,
            table_pool=self.pools[0],
            prefetch=self.pools[1],
            stopping=self.stopping,
            worker_id=WORKER,
            lease_s=60,
            clock=time.time,
            on_failed=on_failed,
        )

    def receive(self, *jobs: Held) -> list[Held]:
        """The jobs' messages as the receiver hands them over, out of the batcher as a batch."""
        self.held.accept([h.received for h in jobs])
        return self.held.take_waiting()


@pytest.fixture
def loop(repo: JobsRepository) -> Iterator[Loop]:
    running = Loop(repo)
    yield running
    for pool in running.pools:
        pool.shutdown()


def stored(repo: JobsRepository, *, expires_in_s: int = 86400) -> Held:
    h = held()
    repo.create(
        Job(
            job_id=h.job_id,
            tenant=h.tenant,
            status=JobStatus.QUEUED,
            request=h.request,
            created_at=utcnow(),
            cache_key=h.request.cache_key(),
            expires_at=int(time.time()) + expires_in_s,
        )
    )
    return h


def test_a_batch_is_claimed_whole_and_its_jobs_stay_held(repo: JobsRepository, loop: Loop) -> None:
    batch = loop.receive(stored(repo), stored(repo))
    claimed = loop.claims.claim_batch(batch)
    assert claimed.jobs == batch
    for h in batch:
        assert h.job is not None
        assert h.job.attempt == 1
        assert h.claimed_at is not None
        assert repo.get(h.job_id).status == JobStatus.RUNNING
    assert len(loop.held) == 2
    assert loop.queue.deleted == loop.queue.visibility == []


def test_lost_claims_are_settled_and_only_won_ones_run(repo: JobsRepository, loop: Loop) -> None:
    won = stored(repo)
    gone = held()  # never stored
    expired = stored(repo, expires_in_s=-10)
    cancelled = stored(repo)
    repo.transition(cancelled.job_id, JobStatus.CANCELLED, tenant=cancelled.tenant)
    elsewhere = stored(repo)
    repo.claim(elsewhere.job_id, elsewhere.tenant, worker_id="worker-b", lease_s=100, now=time.time())
    batch = loop.receive(won, gone, expired, cancelled, elsewhere)
    elsewhere = next(h for h in batch if h.job_id == elsewhere.job_id)  # the record the worker holds
    claimed = loop.claims.claim_batch(batch)
    assert [h.job_id for h in claimed.jobs] == [won.job_id]
    # Jobs that need no more work lose their message; the expired one is failed first.
    assert sorted(loop.queue.deleted) == sorted(h.received.message_id for h in (gone, expired, cancelled))
    failed = repo.get(expired.job_id)
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.code == "EXPIRED"
    # Kept (its TTL pushed on in the same write) for as long as its job.failed webhook may take, yet gone for its
    # client as any job past its retention.
    assert failed.expires_at >= time.time() + WORKFLOW_TIMEOUT_S
    with pytest.raises(JobNotFound):
        repo.get(expired.job_id, tenant=expired.tenant)
    assert expired.job_id not in [j.job_id for j in repo.list_for_tenant(expired.tenant).jobs]
    with pytest.raises(JobNotFound):
        repo.transition(expired.job_id, JobStatus.CANCELLED, tenant=expired.tenant, within_retention=True)
    # Held by a live worker: kept (if that worker dies, the message is the way back), hidden past its lease.
    ((message_id, visibility),) = loop.queue.visibility
    assert message_id == elsewhere.received.message_id
    assert 100 <= visibility <= 101
    assert elsewhere.let_go_visibility == visibility
    assert repo.get(elsewhere.job_id).attempt == 1  # worker-b's claim stands
    assert len(loop.held) == 1  # only the won job is still held


def test_a_claim_that_errors_lets_its_message_go_for_a_retry_soon(loop: Loop) -> None:
    broken = Claims(
        loop.held,
        JobsRepository(boto3.client("dynamodb", region_name="us-east-1"), "no-such-table"),
        table_pool=loop.pools[0],
        prefetch=loop.pools[1],
        stopping=loop.stopping,
        worker_id=WORKER,
        lease_s=60,
        clock=time.time,
    )
    (h,) = loop.receive(held())
    assert broken.claim_batch([h]).jobs == []
    assert loop.queue.visibility == [(h.received.message_id, 5)]
    assert len(loop.held) == 0


def test_the_batch_claimed_ahead_is_handed_back_unstarted(repo: JobsRepository, loop: Loop) -> None:
    batch = loop.receive(stored(repo), stored(repo))
    loop.claims.claim_ahead(batch)
    loop.claims.hand_back_claimed_ahead()
    assert loop.claims.take_claimed_ahead() is None
    for h in batch:
        job = repo.get(h.job_id)
        assert job.status == JobStatus.QUEUED
        assert job.attempt == 0  # no attempt used up
    assert sorted(loop.queue.visibility) == sorted((h.received.message_id, 0) for h in batch)
    assert len(loop.held) == 0


def test_once_stopping_a_batch_is_let_go_instead_of_claimed_ahead(repo: JobsRepository, loop: Loop) -> None:
    batch = loop.receive(stored(repo))
    loop.stopping.set()
    loop.claims.claim_ahead(batch)
    assert loop.claims.take_claimed_ahead() is None
    assert repo.get(batch[0].job_id).status == JobStatus.QUEUED  # never claimed
    assert loop.queue.visibility == [(batch[0].received.message_id, 0)]
    assert len(loop.held) == 0


def test_an_expired_jobs_webhook_whose_start_failed_is_started_when_its_message_comes_back(
    repo: JobsRepository,
) -> None:
    """The worker fails a job that expired while queued and starts its `job.failed` webhook; a throttled start
    lets the message go so that the next receive retries it, and that receive finds the job FAILED already."""
    started: list[tuple[str, str]] = []
    tries: list[str] = []

    def start_webhook(job: Job) -> None:
        tries.append(job.job_id)
        if len(tries) == 1:
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "StartExecution")
        assert job.error is not None
        started.append((job.job_id, job.error.code))

    loop = Loop(repo, on_failed=start_webhook)
    claims = loop.claims
    expired = stored(repo, expires_in_s=-10)
    assert claims.claim_batch(loop.receive(expired)).jobs == []
    assert repo.get(expired.job_id).status == JobStatus.FAILED
    assert loop.queue.visibility == [(expired.received.message_id, 5)]  # back soon, for the webhook
    assert loop.queue.deleted == []
    assert claims.claim_batch(loop.receive(expired)).jobs == []
    assert started == [(expired.job_id, "EXPIRED")]
    assert loop.queue.deleted == [expired.received.message_id]
    for pool in loop.pools:
        pool.shutdown()


def test_a_job_without_retention_left_for_its_run_is_failed_expired_and_kept_for_its_webhook(
    repo: JobsRepository,
) -> None:
    """Claimed with minutes of retention left, a job could finish after DynamoDB's TTL removed it: its webhook
    would find no job. It takes the expired path instead: failed EXPIRED, kept for its webhook, which starts."""
    started: list[tuple[str, str]] = []

    def start_webhook(job: Job) -> None:
        assert job.error is not None
        started.append((job.job_id, job.error.code))

    loop = Loop(repo, on_failed=start_webhook)
    try:
        lease = 60  # Loop's
        enough = stored(repo, expires_in_s=RUN_RETENTION_S + lease + 30)
        short = stored(repo, expires_in_s=RUN_RETENTION_S + lease - 30)  # a run's worth, but not with its lease
        minutes = stored(repo, expires_in_s=600)
        claimed = loop.claims.claim_batch(loop.receive(enough, short, minutes))
        assert [h.job_id for h in claimed.jobs] == [enough.job_id]
        for h in (short, minutes):
            failed = repo.get(h.job_id)
            assert failed.status == JobStatus.FAILED
            assert failed.error is not None
            assert failed.error.code == "EXPIRED"
            assert failed.expires_at >= time.time() + WORKFLOW_TIMEOUT_S  # its webhook finds it
            with pytest.raises(JobNotFound):
                repo.get(h.job_id, tenant=h.tenant)  # gone for its client, as any expired job
        assert sorted(started) == sorted((h.job_id, "EXPIRED") for h in (short, minutes))
        assert sorted(loop.queue.deleted) == sorted(h.received.message_id for h in (short, minutes))
    finally:
        for pool in loop.pools:
            pool.shutdown()


def test_a_job_a_live_worker_runs_is_left_to_it_however_little_retention_it_has_left(
    repo: JobsRepository, loop: Loop
) -> None:
    """Another receive of its message (a duplicate) fails nothing: the worker that claimed it in time finishes it."""
    h = stored(repo, expires_in_s=600)
    repo.claim(h.job_id, h.tenant, worker_id="worker-b", lease_s=100, now=time.time())
    assert loop.claims.claim_batch(loop.receive(h)).jobs == []
    job = repo.get(h.job_id)
    assert (job.status, job.attempt) == (JobStatus.RUNNING, 1)
    assert [m for m, _ in loop.queue.visibility] == [h.received.message_id]  # hidden past the other's lease
    assert loop.queue.deleted == []


class RenewedAfterExpiryRead(JobsRepository):
    """The table as a claim sees it when the job's own worker, late with its heartbeat, renews its lease right after
    the claim found the lease lapsed and too little retention left."""

    def claim(self, job_id: str, tenant: str, **kwargs: Any) -> Job:
        try:
            return super().claim(job_id, tenant, **kwargs)
        except JobExpired:
            assert self.renew_lease(job_id, worker_id="worker-b", lease_until=time.time() + 300)
            raise


def test_a_worker_that_renews_its_lease_keeps_its_job_however_little_retention_it_has_left(
    jobs_table: DynamoDBClient,
) -> None:
    """The claim's margin fails only a job nobody runs: a lapsed lease renewed before the failing write keeps the
    job with its worker (its retention, if short for a new run, is long enough to finish this one)."""
    repo = RenewedAfterExpiryRead(jobs_table, TABLE)
    h = stored(repo, expires_in_s=600)
    repo.claim(h.job_id, h.tenant, worker_id="worker-b", lease_s=-1, now=time.time())  # its lease lapsed at once
    loop = Loop(repo)
    try:
        assert loop.claims.claim_batch(loop.receive(h)).jobs == []
    finally:
        for pool in loop.pools:
            pool.shutdown()
    job = repo.get(h.job_id)
    assert (job.status, job.error) == (JobStatus.RUNNING, None)
    assert [m for m, _ in loop.queue.visibility] == [h.received.message_id]  # hidden past the renewed lease
    assert loop.queue.deleted == []


def _worst_case_s(state: dict[str, Any]) -> float:
    """The longest a task state can take: every try times out and every retry waits its longest."""
    if state["Type"] != "Task":
        return 0.0
    tries, waits = 1, 0.0
    for retry in state.get("Retry", []):
        attempts = retry.get("MaxAttempts", 3)
        tries += attempts
        for k in range(attempts):
            wait = retry.get("IntervalSeconds", 1) * retry.get("BackoffRate", 2.0) ** k
            waits += min(wait, retry.get("MaxDelaySeconds", wait))
    return tries * state["TimeoutSeconds"] + waits


def _longest_to_first_notice_s(name: str) -> float | None:
    """The longest path from ``name`` through the end of the execution's first notice task (None: none reached)."""
    state = ASL["States"][name]
    if name in ("Notify", "NotifyFailed"):
        return _worst_case_s(state)
    following = [state[k] for k in ("Next", "Default") if k in state]
    following += [c["Next"] for c in state.get("Choices", []) + state.get("Catch", [])]
    reached = [t for t in map(_longest_to_first_notice_s, following) if t is not None]
    return _worst_case_s(state) + max(reached) if reached else None


def test_the_retention_a_claim_needs_covers_the_workflow_up_to_its_first_notice() -> None:
    """A claimed job's execution reads it until its first notice ends: the claim's margin must outlast that path
    even when every task on it times out and is retried to the last."""
    longest = _longest_to_first_notice_s(ASL["StartAt"])
    assert longest is not None
    assert longest < RUN_RETENTION_S


class LostAnswerOnce:
    """The DynamoDB client as botocore's standard retries make it look when a claim's answer is lost (a 500 or a
    read timeout after the write landed): the identical request is sent again, and its answer is the caller's."""

    def __init__(self, inner: DynamoDBClient) -> None:
        self._inner = inner
        self.lost = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def update_item(self, **kwargs: Any) -> Any:
        if not self.lost and "ADD attempt :one" in kwargs.get("UpdateExpression", ""):
            self.lost += 1
            self._inner.update_item(**kwargs)  # landed; its answer never arrives
        return self._inner.update_item(**kwargs)


def test_a_claim_whose_answer_was_lost_and_was_sent_again_is_won(jobs_table: DynamoDBClient) -> None:
    flaky = LostAnswerOnce(jobs_table)
    repo = JobsRepository(cast("DynamoDBClient", flaky), TABLE)
    loop = Loop(repo)
    try:
        h = stored(repo)
        batch = loop.receive(h)
        claimed = loop.claims.claim_batch(batch)
        assert flaky.lost == 1  # the retry found the job RUNNING under its own fresh lease ...
        assert claimed.jobs == batch  # ... and took it for the claim it is: won, not another worker's
        assert claimed.jobs[0].job is not None
        assert claimed.jobs[0].job.attempt == 1
        assert loop.queue.visibility == []  # not hidden for a lease as if another worker held it
        assert len(loop.held) == 1
        # The same worker claiming again (a duplicate message of the job) is refused, even at the very instant
        # of the first claim (one batch's claims run at once, with one clock reading): it is another request.
        with pytest.raises(InvalidTransition):
            repo.claim(h.job_id, h.tenant, worker_id=WORKER, lease_s=60, now=time.time() + 1)
        lease = repo.lease_until(h.job_id)
        assert lease is not None
        with pytest.raises(InvalidTransition):  # the very lease the first claim wrote
            repo.claim(h.job_id, h.tenant, worker_id=WORKER, lease_s=60, now=lease - 60)
    finally:
        for pool in loop.pools:
            pool.shutdown()
