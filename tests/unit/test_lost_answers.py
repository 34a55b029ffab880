"""Writes that landed but whose answer was lost (a 500 after the write, tests/dynamofaults.py, on moto's in-process
DynamoDB), sent again by botocore's own retries: the re-sent request fails the condition the first one's write no
longer meets. The write was made, so its caller must go on as if the first answer had come: a job created, a
status changed, with the webhook that change starts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError

from localcloud import transactions
from shared.contracts import Job, JobError, JobStatus
from shared.errors import InvalidTransition
from shared.jobs import Claim, JobsRepository
from shared.queue import JobQueue
from shared.ratelimit import RateLimiter
from shared.settings import Settings
from tests.dynamofaults import DynamoFaults, Fault
from tests.unit.conftest import JOBS_TABLE, TENANT, make_job
from workflows.requeue import RequeueSweeper
from workflows.submission import SubmissionService

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# A status change's UpdateItem (JobsRepository.transition).
TRANSITION = "SET #s = :target"


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> DynamoFaults:
    return DynamoFaults(monkeypatch)


@pytest.fixture
def repo(jobs_table: DynamoDBClient) -> JobsRepository:
    return JobsRepository(jobs_table, JOBS_TABLE)


def lost_answer(job_id: str, expression: str = TRANSITION, operation: str = "update_item") -> Fault:
    """The first matching write lands, then DynamoDB answers 500: botocore sends it again."""
    return Fault(
        job_id,
        expression,
        times=1,
        code="InternalServerError",
        status=500,
        after_write=True,
        operation=operation,  # type: ignore[arg-type]
    )


def test_a_plain_create_whose_answer_was_lost_is_created_not_refused(
    repo: JobsRepository, faults: DynamoFaults
) -> None:
    """The single put of a job with no key (an image request, a cache hit, the cache's plain fallback): its resend
    finds this very job. A 500 would make the client submit again, and the job would run twice."""
    job = make_job()
    fault = faults.add(lost_answer(job.job_id, "", operation="put_item"))
    stored, created = repo.create(job)
    assert fault.hits == 1
    assert created
    assert stored.job_id == job.job_id
    assert repo.get(job.job_id).status == JobStatus.QUEUED
    # An item under that id that this put did not write (another tenant's) is still refused.
    with pytest.raises(ClientError, match="ConditionalCheckFailed"):
        repo.create(job.model_copy(update={"tenant": "someone-else"}))


@pytest.fixture
def local_cloud_faults() -> Iterator[DynamoFaults]:
    """Faults over the local cloud's transactions (localcloud/transactions.py), which honour ``ClientRequestToken``
    as AWS does (plain moto ignores it): an after-write fault comes once the token is recorded. The faults are
    undone before the local cloud's patches are."""
    transactions.install()
    try:
        with pytest.MonkeyPatch.context() as patches:
            yield DynamoFaults(patches)
    finally:
        transactions.uninstall()


def test_a_charged_create_whose_answer_was_lost_is_created_once_and_counted_once(
    jobs_table: DynamoDBClient, local_cloud_faults: DynamoFaults
) -> None:
    """A job's transaction (its Idempotency-Key, its rate charge) commits, then the answer is lost: botocore sends it
    again with the call's ClientRequestToken, which DynamoDB answers with success, writing nothing. Without the
    token the resend would fail on the job it wrote and the job be taken for a replay, never sent to the queue."""
    faults = local_cloud_faults
    repo = JobsRepository(jobs_table, JOBS_TABLE)
    rate = RateLimiter(jobs_table, JOBS_TABLE)
    job = make_job(idempotency_key="order-1")
    fault = faults.add(lost_answer(job.job_id, "", operation="transact_write_items"))
    now = time.time()
    charge = rate.charge(TENANT, limit=10, window_s=60, now=now)
    stored, created = repo.create(job, idempotency_fingerprint="fp", charges=[charge])
    assert fault.hits == 1
    assert (stored.job_id, created) == (job.job_id, True)
    pk = charge.update["Key"]
    assert jobs_table.get_item(TableName=JOBS_TABLE, Key=pk)["Item"]["hits"]["N"] == "1"  # counted once
    # The same items under one token again write nothing; other items under it are refused.
    item: Any = {
        "Update": {
            "TableName": JOBS_TABLE,
            "Key": pk,
            "UpdateExpression": "ADD hits :one",
            "ExpressionAttributeValues": {":one": {"N": "1"}},
        }
    }
    for _ in range(2):
        jobs_table.transact_write_items(TransactItems=[item], ClientRequestToken="reused")
    assert jobs_table.get_item(TableName=JOBS_TABLE, Key=pk)["Item"]["hits"]["N"] == "2"
    other: Any = {"Update": {**item["Update"], "ExpressionAttributeValues": {":one": {"N": "5"}}}}
    with pytest.raises(ClientError, match="IdempotentParameterMismatch"):
        jobs_table.transact_write_items(TransactItems=[other], ClientRequestToken="reused")


def test_a_cancel_whose_answer_was_lost_is_made_and_starts_its_webhook(
    repo: JobsRepository, faults: DynamoFaults
) -> None:
    job, _ = repo.create(make_job())
    fault = faults.add(lost_answer(job.job_id))
    submissions = SubmissionService(repo, JobQueue(repo._ddb, "unused"), Settings())  # type: ignore[arg-type]
    notified: list[Job] = []
    cancelled = submissions.cancel(TENANT, job.job_id, notify=notified.append)
    assert fault.hits == 1
    assert cancelled.status == JobStatus.CANCELLED  # a 200, not a 409 for its own write
    assert [j.status for j in notified] == [JobStatus.CANCELLED]  # and its job.cancelled notice
    with pytest.raises(InvalidTransition):  # a second cancel is another call: the job has finished
        submissions.cancel(TENANT, job.job_id)


def hand_back(repo: JobsRepository, claimed: Job) -> Job:
    """Worker w-1 hands its claim back (RUNNING -> QUEUED)."""
    return repo.transition(
        claimed.job_id,
        JobStatus.QUEUED,
        tenant=TENANT,
        sources=[JobStatus.RUNNING],
        claim=Claim(attempt=claimed.attempt, worker_id="w-1"),
    )


def test_a_hand_back_whose_answer_was_lost_is_made(repo: JobsRepository, faults: DynamoFaults) -> None:
    """A worker handing its claim back (RUNNING -> QUEUED): read as refused, the worker would drop the job's
    message, and the QUEUED job would have none."""
    job, _ = repo.create(make_job())
    claimed = repo.claim(job.job_id, TENANT, worker_id="w-1", lease_s=60, now=time.time())
    fault = faults.add(lost_answer(job.job_id))
    queued = hand_back(repo, claimed)
    assert fault.hits == 1
    assert queued.status == JobStatus.QUEUED


def test_a_re_sent_change_reports_no_finish_it_did_not_write(
    repo: JobsRepository, jobs_table: DynamoDBClient, faults: DynamoFaults
) -> None:
    """The hand-back landed, its answer was lost, and before the re-send another worker claimed and finished the
    job: the re-send finds its own token but a status it did not write, so it reports no finish (metrics count the
    job once, where it finished)."""
    finished: list[Job] = []
    metered = JobsRepository(jobs_table, JOBS_TABLE, on_finished=finished.append)
    job, _ = repo.create(make_job())
    claimed = repo.claim(job.job_id, TENANT, worker_id="w-1", lease_s=60, now=time.time())

    def another_worker_finishes_it() -> None:
        # A claim, then the state machine's MarkSucceeded: neither writes a transition token.
        repo.claim(job.job_id, TENANT, worker_id="w-2", lease_s=60, now=time.time())
        jobs_table.update_item(
            TableName=JOBS_TABLE,
            Key={"pk": {"S": f"JOB#{job.job_id}"}},
            UpdateExpression="SET #s = :succ",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":succ": {"S": "SUCCEEDED"}},
        )

    fault = faults.add(Fault(**{**lost_answer(job.job_id).__dict__, "meanwhile": another_worker_finishes_it}))
    answered = hand_back(metered, claimed)
    assert fault.hits == 1
    assert answered.status == JobStatus.SUCCEEDED  # the job as it stands
    assert finished == []


def test_an_abandoned_job_failed_with_its_answer_lost_gets_its_webhook(
    repo: JobsRepository, faults: DynamoFaults
) -> None:
    job, _ = repo.create(make_job())
    repo.claim(job.job_id, TENANT, worker_id="w-dead", lease_s=60, now=time.time() - 7200)  # lapsed an hour ago
    fault = faults.add(lost_answer(job.job_id))
    notified: list[Job] = []
    sweeper = RequeueSweeper(
        repo,
        JobQueue(repo._ddb, "unused"),  # type: ignore[arg-type]
        requeue_after_s=120,
        abandoned_after_s=3600,
        notify=notified.append,
    )
    report = sweeper.sweep()
    assert fault.hits == 1
    assert report.abandoned == 1
    assert [(j.job_id, j.status) for j in notified] == [(job.job_id, JobStatus.FAILED)]  # its one job.failed
    failed = repo.get(job.job_id)
    assert failed.error is not None
    assert failed.error.code == "ABANDONED"


def test_a_refused_status_change_is_still_refused(repo: JobsRepository) -> None:
    """The token tells this call's own write only: a job another call finished stays a refusal."""
    job, _ = repo.create(make_job())
    repo.transition(job.job_id, JobStatus.FAILED, tenant=TENANT, error=JobError(code="X", message="x"))
    with pytest.raises(InvalidTransition):
        repo.transition(job.job_id, JobStatus.CANCELLED, tenant=TENANT)
