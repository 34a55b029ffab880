"""JobsRepository against moto's in-process DynamoDB: a claim-bound transition, the terminal write's index
cleanup, the item layout, and the typed error for a bad cursor."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError

from shared.contracts import Job, JobError, JobStatus, Usage, utcnow
from shared.errors import InvalidCursor, InvalidTransition, ServiceError
from shared.jobs import JOB_ATTRIBUTES, REMOVED_WHEN_FINISHED, Claim, JobsRepository, job_pk, job_to_item
from shared.pricing import gpu_price
from tests.unit.conftest import JOBS_TABLE, TENANT, make_job

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

TABLE = JOBS_TABLE


@pytest.fixture
def ddb(jobs_table: DynamoDBClient) -> DynamoDBClient:
    return jobs_table


def raw_item(ddb: DynamoDBClient, job_id: str) -> dict[str, Any]:
    return dict(ddb.get_item(TableName=TABLE, Key={"pk": {"S": job_pk(job_id)}}, ConsistentRead=True)["Item"])


def claimed(repo: JobsRepository, worker_id: str) -> Job:
    job, _ = repo.create(make_job())
    return repo.claim(job.job_id, TENANT, worker_id=worker_id, lease_s=60, now=time.time())


def test_a_claim_bound_transition_is_written_only_for_that_claim(ddb: DynamoDBClient) -> None:
    repo = JobsRepository(ddb, TABLE)
    job = claimed(repo, "w-1")
    assert job.attempt == 1
    for other in (Claim(attempt=2), Claim(attempt=2, worker_id="w-1"), Claim(attempt=1, worker_id="w-2")):
        with pytest.raises(InvalidTransition):
            repo.transition(job.job_id, JobStatus.POSTPROCESSING, tenant=TENANT, claim=other)
        assert repo.get(job.job_id).status == JobStatus.RUNNING
    moved = repo.transition(
        job.job_id, JobStatus.POSTPROCESSING, tenant=TENANT, claim=Claim(attempt=1, worker_id="w-1")
    )
    assert moved.status == JobStatus.POSTPROCESSING
    # Without a worker the claim is its attempt alone (the state machine's executions know no worker).
    failed = repo.transition(job.job_id, JobStatus.FAILED, tenant=TENANT, claim=Claim(attempt=1))
    assert failed.status == JobStatus.FAILED


def test_a_terminal_transition_removes_the_unfinished_jobs_index_attributes(ddb: DynamoDBClient) -> None:
    repo = JobsRepository(ddb, TABLE)
    job, _ = repo.create(make_job())
    assert set(REMOVED_WHEN_FINISHED) <= set(raw_item(ddb, job.job_id))  # a new job is active and unqueued
    repo.transition(job.job_id, JobStatus.FAILED, tenant=TENANT, error=JobError(code="X", message="x"))
    item = raw_item(ddb, job.job_id)
    assert not set(REMOVED_WHEN_FINISHED) & set(item)
    assert item["status"] == {"S": "FAILED"}
    assert "finished_at" in item


def test_every_attribute_the_repository_writes_is_in_the_item_layout(ddb: DynamoDBClient) -> None:
    repo = JobsRepository(ddb, TABLE)
    job = claimed(repo, "w-1")
    repo.record_progress(job.job_id, worker_id="w-1", step=1, total=2)
    repo.transition(job.job_id, JobStatus.CANCELLED, tenant=TENANT)
    repo.record_webhook_attempt(
        job.job_id, event="job.cancelled", webhook_id="msg", outcome="delivered", status=200, error=None
    )
    written = set(raw_item(ddb, job.job_id)) | set(job_to_item(job))
    assert written <= JOB_ATTRIBUTES, written - JOB_ATTRIBUTES
    fresh, _ = repo.create(make_job())
    assert set(raw_item(ddb, fresh.job_id)) <= JOB_ATTRIBUTES


@pytest.mark.parametrize("outcome", ["retry", "gave_up", "blocked"])
def test_a_delivered_webhook_stays_delivered_whatever_a_later_attempt_found(ddb: DynamoDBClient, outcome: str) -> None:
    """A redelivery (or a delivery racing another) that fails after one delivered is counted, never recorded as
    retrying, failed or blocked."""
    repo = JobsRepository(ddb, TABLE)
    job, _ = repo.create(make_job())
    repo.transition(job.job_id, JobStatus.CANCELLED, tenant=TENANT)
    attempt = partial(repo.record_webhook_attempt, job.job_id, event="job.cancelled", webhook_id="msg")
    attempt(outcome="delivered", status=200, error=None)
    delivered = repo.get(job.job_id).webhook
    assert delivered is not None
    attempt(outcome=outcome, status=503, error="HTTP 503", next_attempt_at=utcnow() + timedelta(seconds=5))
    after = repo.get(job.job_id).webhook
    assert after is not None
    assert (after.state, after.delivered_at, after.next_attempt_at) == ("delivered", delivered.delivered_at, None)
    assert (after.attempts, after.last_status, after.last_error) == (2, 503, "HTTP 503")
    # A job that is gone is not written back into being.
    ddb.delete_item(TableName=TABLE, Key={"pk": {"S": f"JOB#{job.job_id}"}})
    with pytest.raises(ClientError):
        attempt(outcome=outcome, status=503, error="HTTP 503")
    assert "Item" not in ddb.get_item(TableName=TABLE, Key={"pk": {"S": f"JOB#{job.job_id}"}})


# Not base64; {}; {"pk": "x"}; the caller's own listing's keys with an empty job id (DynamoDB refuses an empty
# key value in a start key, so it would be a 500 on AWS, though moto takes it).
EMPTY_ID_CURSOR = base64.urlsafe_b64encode(json.dumps({"job_id": "", "pk": "JOB#", "tenant": TENANT}).encode()).decode()


# A nesting bomb under the length limit: the JSON parser's recursion, not the cursor's shape, would refuse it.
NESTED_CURSOR = base64.urlsafe_b64encode(b"[" * 1500).decode()


@pytest.mark.parametrize("cursor", ["%%%garbage", "e30", "eyJwayI6IngifQ", EMPTY_ID_CURSOR, NESTED_CURSOR])
def test_a_bad_cursor_is_its_own_error_not_an_http_one(ddb: DynamoDBClient, cursor: str) -> None:
    repo = JobsRepository(ddb, TABLE)
    with pytest.raises(InvalidCursor) as info:
        repo.list_for_tenant(TENANT, cursor=cursor)
    assert not isinstance(info.value, ServiceError)


def test_the_hand_off_mark_records_the_usage_of_its_own_claim_once(ddb: DynamoDBClient) -> None:
    repo = JobsRepository(ddb, TABLE)
    job = claimed(repo, "w-1")
    usage = Usage.measured(job.request, gpu_s=1.5, batch_jobs=2, batch_images=3, price=gpu_price("g5.xlarge"))
    # Another worker's or attempt's mark writes nothing.
    for other in (Claim(attempt=1, worker_id="w-2"), Claim(attempt=2, worker_id="w-1")):
        assert not repo.mark_handed_off(job.job_id, tenant=TENANT, claim=other, usage=usage)
    assert repo.get(job.job_id).usage is None
    assert repo.mark_handed_off(job.job_id, tenant=TENANT, claim=Claim(attempt=1, worker_id="w-1"), usage=usage)
    marked = repo.get(job.job_id)
    assert marked.status == JobStatus.POSTPROCESSING
    assert marked.usage == usage
    hourly = gpu_price("g5.xlarge").usd_per_hour  # the price table's, not a copy of it
    assert usage.estimated_cost_usd == round(1.5 * hourly / 3600, 6)
    assert usage.price_basis == gpu_price("g5.xlarge").basis
    assert usage.pixel_steps == 512 * 512 * 30
    # Once recorded, a repeated mark changes nothing.
    again = usage.model_copy(update={"gpu_s": 9.0})
    assert not repo.mark_handed_off(job.job_id, tenant=TENANT, claim=Claim(attempt=1, worker_id="w-1"), usage=again)
    assert repo.get(job.job_id).usage == usage


def test_the_hand_off_mark_still_records_usage_when_the_workflow_moved_first(ddb: DynamoDBClient) -> None:
    repo = JobsRepository(ddb, TABLE)
    job = claimed(repo, "w-1")
    repo.transition(job.job_id, JobStatus.POSTPROCESSING, tenant=TENANT, claim=Claim(attempt=1))  # Postprocess
    usage = Usage.measured(job.request, gpu_s=0.5, batch_jobs=1, batch_images=1, price=gpu_price("g6.xlarge"))
    assert repo.mark_handed_off(job.job_id, tenant=TENANT, claim=Claim(attempt=1, worker_id="w-1"), usage=usage)
    assert repo.get(job.job_id).usage == usage
    assert "g6.xlarge" in usage.price_basis


def test_a_result_cache_entry_never_shows_in_the_tenants_job_listing(ddb: DynamoDBClient) -> None:
    repo = JobsRepository(ddb, TABLE)
    job = make_job()
    created = repo.create_cache_source(job, entry_pk=f"CACHE#{TENANT}#{job.cache_key}", replaces=None)
    assert created is not None
    listed = repo.list_for_tenant(TENANT)
    assert [j.job_id for j in listed.jobs] == [job.job_id]
