"""What GET shows after the state machine gave a delivery up in its ``WebhookFailed`` task: that task's own
update (read from statemachine.asl.json) applied to a job in moto's in-process DynamoDB, then read back as the
API reads it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.contracts import JobStatus, webhook_id
from shared.jobs import JobsRepository, job_pk
from tests.unit.conftest import JOBS_TABLE, TENANT, make_job

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

ASL = json.loads((Path(__file__).resolve().parents[2] / "statemachine.asl.json").read_text())


def give_up(jobs_table: DynamoDBClient, job_id: str) -> None:
    """Run WebhookFailed's updateItem as Step Functions would for ``job_id``."""
    params: dict[str, Any] = dict(ASL["States"]["WebhookFailed"]["Parameters"])
    params["TableName"] = JOBS_TABLE
    params["Key"] = {"pk": {"S": job_pk(job_id)}}
    jobs_table.update_item(**params)


def finished(repo: JobsRepository, status: JobStatus) -> str:
    job, _ = repo.create(make_job(request={"callback_url": "https://hooks.example.com/sdq"}))
    repo.transition(job.job_id, status, tenant=TENANT)
    return job.job_id


def test_a_delivery_given_up_before_any_attempt_shows_as_failed_not_as_no_webhook(
    jobs_table: DynamoDBClient,
) -> None:
    repo = JobsRepository(jobs_table, JOBS_TABLE)
    job_id = finished(repo, JobStatus.CANCELLED)
    assert repo.get(job_id).webhook is None  # not yet tried: nothing to show
    give_up(jobs_table, job_id)
    webhook = repo.get(job_id).webhook
    assert webhook is not None
    assert (webhook.state, webhook.attempts, webhook.event) == ("failed", 0, "job.cancelled")
    assert webhook.webhook_id == webhook_id(job_id, "job.cancelled")


def test_a_delivery_given_up_after_a_retry_keeps_its_attempts_and_drops_its_next_attempt(
    jobs_table: DynamoDBClient,
) -> None:
    repo = JobsRepository(jobs_table, JOBS_TABLE)
    job_id = finished(repo, JobStatus.FAILED)
    msg_id = webhook_id(job_id, "job.failed")
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    repo.record_webhook_attempt(
        job_id, event="job.failed", webhook_id=msg_id, outcome="retry", status=503, error="HTTP 503",
        next_attempt_at=due,
    )  # fmt: skip
    retrying = repo.get(job_id).webhook
    assert retrying is not None
    assert (retrying.state, retrying.next_attempt_at) == ("retrying", due)
    give_up(jobs_table, job_id)
    webhook = repo.get(job_id).webhook
    assert webhook is not None
    assert (webhook.state, webhook.attempts, webhook.last_status) == ("failed", 1, 503)
    assert (webhook.webhook_id, webhook.next_attempt_at) == (msg_id, None)
