"""The DLQ handler against the real JobsRepository and SQS (moto, in process): a dead-lettered job is failed only
when no worker holds it, at the attempt it was read at; a job a worker holds or has handed off is left to it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from handlers import dlq
from localcloud.api import LocalLambdaContext
from shared.contracts import Job, JobStatus, QueueMessage, utcnow
from shared.errors import RetryableError
from shared.jobs import JobsRepository
from shared.queue import JobQueue, WorkerQueue
from shared.settings import get_settings
from shared.tracing import continued
from tests.unit.conftest import JOBS_TABLE, make_job
from workflows.deadletter import handle_dead_letter

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

MAX_ATTEMPTS = 3
LAST_WORKER = f"w{MAX_ATTEMPTS - 1}"


class Setup:
    def __init__(self, table: DynamoDBClient) -> None:
        self.repo = JobsRepository(table, JOBS_TABLE)
        sqs = boto3.client("sqs", region_name="us-east-1")
        self.queue = JobQueue(sqs, sqs.create_queue(QueueName="jobs")["QueueUrl"])
        self.notified: list[str] = []

    def worn_out(self, *, lease_s: float) -> Job:
        """A job whose every attempt was claimed; the last claim's lease runs ``lease_s`` from now."""
        job = make_job()
        self.repo.create(job)
        for attempt in range(MAX_ATTEMPTS):
            last = attempt == MAX_ATTEMPTS - 1
            claimed = self.repo.claim(
                job.job_id, job.tenant, worker_id=f"w{attempt}", lease_s=lease_s if last else 0, now=time.time()
            )
        return claimed

    def dead_letter(self, job: Job, repo: JobsRepository | None = None) -> str:
        message = QueueMessage(job_id=job.job_id, tenant=job.tenant, request=job.request, enqueued_at=utcnow())
        return handle_dead_letter(
            repo or self.repo,
            self.queue,
            message.model_dump_json(),
            {},
            max_attempts=MAX_ATTEMPTS,
            notify=lambda j: self.notified.append(j.job_id),
        )


def dlq_record(job: Job, message_id: str, *, receive_count: int = 1, **attributes: str) -> dict[str, Any]:
    """The SQS event record of ``job``'s dead letter, as the DLQ function receives it."""
    message = QueueMessage(job_id=job.job_id, tenant=job.tenant, request=job.request, enqueued_at=utcnow())
    return {
        "messageId": message_id,
        "receiptHandle": f"r-{message_id}",
        "body": message.model_dump_json(),
        "attributes": {"ApproximateReceiveCount": str(receive_count), **attributes},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:jobs-dlq",
        "awsRegion": "us-east-1",
    }


@pytest.fixture
def setup(jobs_table: DynamoDBClient) -> Setup:
    return Setup(jobs_table)


def test_a_worn_out_job_whose_worker_is_gone_fails_with_its_webhook(setup: Setup) -> None:
    job = setup.worn_out(lease_s=-1)
    assert setup.dead_letter(job) == "failed"
    failed = setup.repo.get(job.job_id)
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.code == "DEAD_LETTERED"
    assert setup.notified == [job.job_id]


def test_a_job_a_live_worker_runs_is_not_failed_its_dead_letter_comes_back_later(setup: Setup) -> None:
    job = setup.worn_out(lease_s=60)
    with pytest.raises(RetryableError):
        setup.dead_letter(job)
    assert setup.repo.get(job.job_id).status == JobStatus.RUNNING
    assert setup.notified == []


def test_the_dlq_function_hands_back_a_live_jobs_dead_letter_without_failing_its_invocation(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the function's own handler: a batch whose only record is a live job's dead letter answers that
    record as a batch-item failure (SQS keeps it for later), not an invocation error, which would page through
    LambdaErrorsAlarm for a job that is fine."""
    job = setup.worn_out(lease_s=60)
    monkeypatch.setenv("SDQ_TABLE_NAME", JOBS_TABLE)
    monkeypatch.setenv("SDQ_QUEUE_URL", setup.queue.url)
    monkeypatch.setenv("SDQ_REGION", "us-east-1")
    get_settings.cache_clear()  # read again with the function's environment
    dlq.deps.cache_clear()
    record = dlq_record(job, "m-1")
    try:
        answer = dlq.lambda_handler({"Records": [record]}, LocalLambdaContext())
        assert answer == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}
        assert setup.repo.get(job.job_id).status == JobStatus.RUNNING
        # A batch that failed for the function's own reason (here, no such table) still fails the invocation.
        monkeypatch.setenv("SDQ_TABLE_NAME", "no-such-table")
        get_settings.cache_clear()
        dlq.deps.cache_clear()
        with pytest.raises(BatchProcessingError):
            dlq.lambda_handler({"Records": [record]}, LocalLambdaContext())
    finally:
        dlq.deps.cache_clear()


def test_a_job_handed_off_to_its_execution_is_left_to_it(setup: Setup) -> None:
    job = setup.worn_out(lease_s=-1)
    setup.repo.transition(job.job_id, JobStatus.POSTPROCESSING, tenant=job.tenant)
    assert setup.dead_letter(job) == "handed_off"
    assert setup.repo.get(job.job_id).status == JobStatus.POSTPROCESSING
    assert setup.notified == []


class ClaimedAfterRead(JobsRepository):
    """The table as the handler sees it when another worker claims the job right after the handler read it and
    found its lease lapsed."""

    def lease_remaining(self, job_id: str, now: float) -> float:
        remaining = super().lease_remaining(job_id, now)
        job = self.get(job_id)
        self.claim(job_id, job.tenant, worker_id="w-new", lease_s=60, now=time.time())
        return remaining


def test_a_job_claimed_again_after_it_was_read_is_not_failed(setup: Setup, jobs_table: DynamoDBClient) -> None:
    job = setup.worn_out(lease_s=-1)
    assert setup.dead_letter(job, ClaimedAfterRead(jobs_table, JOBS_TABLE)) == "moved_on"
    current = setup.repo.get(job.job_id)
    assert (current.status, current.attempt) == (JobStatus.RUNNING, MAX_ATTEMPTS + 1)
    assert setup.notified == []


class RenewedAfterRead(JobsRepository):
    """The table as the handler sees it when the job's own worker, late with its heartbeat, renews the lease right
    after the handler read it as lapsed."""

    def lease_remaining(self, job_id: str, now: float) -> float:
        remaining = super().lease_remaining(job_id, now)
        assert self.renew_lease(job_id, worker_id=LAST_WORKER, lease_until=time.time() + 60)
        return remaining


def test_a_job_whose_worker_renewed_its_lease_after_it_was_read_is_not_failed(
    setup: Setup, jobs_table: DynamoDBClient
) -> None:
    job = setup.worn_out(lease_s=-1)
    assert setup.dead_letter(job, RenewedAfterRead(jobs_table, JOBS_TABLE)) == "moved_on"
    current = setup.repo.get(job.job_id)
    assert (current.status, current.attempt) == (JobStatus.RUNNING, MAX_ATTEMPTS)
    assert setup.repo.lease_remaining(job.job_id, time.time()) > 0
    assert setup.notified == []


def test_the_dlq_function_sends_a_job_again_in_the_jobs_own_trace(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the function's handler, in an invocation of its own trace: a job requeued from its dead letter
    goes back in the trace the dead letter carried (its ``AWSTraceHeader``), else the one its submit stored,
    as the worker will read it."""
    carried = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    stored = "Root=1-5759e988-00000000000000000000000c;Parent=0000000000000002;Sampled=1"
    monkeypatch.setenv("_X_AMZN_TRACE_ID", "Root=1-5759e988-00000000000000000000000d;Parent=0000000000000003;Sampled=1")
    monkeypatch.setenv("SDQ_TABLE_NAME", JOBS_TABLE)
    monkeypatch.setenv("SDQ_QUEUE_URL", setup.queue.url)
    monkeypatch.setenv("SDQ_REGION", "us-east-1")
    get_settings.cache_clear()
    dlq.deps.cache_clear()
    first, _ = setup.repo.create(make_job())
    with continued(stored):  # its submit's write
        second, _ = setup.repo.create(make_job())
    records = []
    for job, attributes in ((first, {"AWSTraceHeader": carried}), (second, {})):
        records.append(dlq_record(job, f"m-{job.job_id}", receive_count=5, **attributes))
    try:
        assert dlq.lambda_handler({"Records": records}, LocalLambdaContext()) == {"batchItemFailures": []}
    finally:
        dlq.deps.cache_clear()
    sqs = boto3.client("sqs", region_name="us-east-1")
    got = WorkerQueue(sqs, setup.queue.url).receive(max_messages=10, wait_s=0, visibility_s=60)
    assert {r.message.job_id: r.trace_header for r in got if r.message} == {
        first.job_id: carried,
        second.job_id: stored,
    }
