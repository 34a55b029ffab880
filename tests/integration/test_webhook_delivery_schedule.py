"""The terminal webhook's retry schedule on the local stack: the real ASL waits between attempts (Wait states, no
Lambda running), the job view shows when the next attempt is due, and a receiver back from an outage gets it.
Redeliveries are limited per job and per tenant."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest
from sdq_client import ApiError, RateLimited

from localcloud.receiver import ScriptedReceiver
from tests.integration.conftest import RunningService, service_fixture, wait_until
from tests.integration.executions import ServiceHarness

# A shortened schedule (the default spans hours): waits of 1 s, 4 s, 1 s; 2 redeliveries a job, 3 a tenant.
service = service_fixture(
    "sdq-webhook-schedule",
    {
        "SDQ_WEBHOOK_RETRY_SCHEDULE_S": "[1, 4, 1]",
        "SDQ_WEBHOOK_REDELIVERIES_PER_JOB": "2",
        "SDQ_WEBHOOK_REDELIVERIES_PER_TENANT": "3",
    },
)


@pytest.fixture
def harness(service: RunningService) -> tuple[ServiceHarness, Any]:
    tenant, client = service.new_named_tenant("schedule")
    return ServiceHarness(service, tenant), client


def test_a_receiver_that_fails_three_times_gets_the_fourth_attempt_and_the_view_shows_the_next(
    harness: tuple[ServiceHarness, Any], receiver: ScriptedReceiver
) -> None:
    h, client = harness
    receiver.secret = client.webhook_secret()
    receiver.script = [503, 500, 429, 200]
    job = h.running_job(receiver.url)
    arn = h.start(job, h.stage(job))

    # During the 4 s wait after the second attempt the job says when the third is due.
    deadline = time.monotonic() + 30
    while len(receiver.deliveries) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    waiting = client.get(job.job_id)["webhook"]
    assert waiting["state"] == "retrying"
    assert waiting["attempts"] == 2
    due = datetime.fromisoformat(waiting["next_attempt_at"])
    assert 1 < due.timestamp() - time.time() <= 4.5

    assert h.wait(arn, timeout_s=60) == "SUCCEEDED"
    assert [d.answered for d in receiver.deliveries] == [503, 500, 429, 200]
    assert all(d.verified for d in receiver.deliveries)
    assert len({d.webhook_id for d in receiver.deliveries}) == 1
    webhook = client.get(job.job_id)["webhook"]
    assert (webhook["state"], webhook["attempts"], webhook["next_attempt_at"]) == ("delivered", 4, None)
    states = h.entered_states(arn)
    assert states.count("WaitForWebhookRetry") == 3
    assert states.count("RetryNotify") == 3
    assert states[-1] == "Done"


def test_a_receiver_down_for_the_whole_schedule_is_given_up_after_its_last_retry(
    harness: tuple[ServiceHarness, Any], receiver: ScriptedReceiver
) -> None:
    h, client = harness
    receiver.default = 503
    job = h.running_job(receiver.url)
    assert h.wait(h.start(job, h.stage(job)), timeout_s=60) == "SUCCEEDED"
    assert len(receiver.deliveries) == 4  # the first attempt and one retry per entry of the schedule
    view = client.get(job.job_id)
    assert view["status"] == "SUCCEEDED"
    assert (view["webhook"]["state"], view["webhook"]["next_attempt_at"]) == ("failed", None)


def test_a_receivers_retry_after_cannot_keep_a_delivery_past_its_span(
    harness: tuple[ServiceHarness, Any], receiver: ScriptedReceiver
) -> None:
    """Retry-After stretches each wait to the longest (4 s): the schedule's 4 attempts would span 12 s, past the
    delivery's span (its 6 s and its longest wait again: 10 s from the execution's start). The delivery gives up
    on the attempt whose retry would fall past it, and its record ends `failed` (on AWS the waits would have
    outlasted the execution's timeout and left it `retrying` for ever)."""
    h, client = harness
    receiver.default, receiver.retry_after = 503, "100"
    job = h.running_job(receiver.url)
    arn = h.start(job, h.stage(job))
    assert h.wait(arn, timeout_s=60) == "SUCCEEDED"
    started = h.sfn.describe_execution(executionArn=arn)["startDate"]
    # This job's deliveries: a receiver's port, once free, may be another test's callback URL too.
    attempts = receiver.by_job(job.job_id)
    seen = [(d.webhook_id, d.answered) for d in receiver.deliveries]
    assert 2 <= len(attempts) <= 3, seen  # not the schedule's 4
    webhook = client.get(job.job_id)["webhook"]
    assert (webhook["state"], webhook["next_attempt_at"]) == ("failed", None)
    assert webhook["attempts"] == len(attempts)
    assert "Retry-After: 100" in webhook["last_error"]
    assert "not retried" in webhook["last_error"]
    ended = datetime.fromisoformat(webhook["last_attempt_at"])
    assert (ended - started).total_seconds() <= 10 + 2  # the last attempt was due within the span


def test_redeliver_is_409_while_the_delivery_is_still_retrying_and_202_once_it_ended(
    harness: tuple[ServiceHarness, Any], receiver: ScriptedReceiver
) -> None:
    h, client = harness
    receiver.script = [503, 503]
    job = h.running_job(receiver.url)
    arn = h.start(job, h.stage(job))
    # During the 4 s wait after the second attempt, a redelivery would only race the delivery under way.
    wait_until(lambda: len(receiver.deliveries) >= 2, 30, "the second attempt")
    wait_until(lambda: client.get(job.job_id)["webhook"]["attempts"] == 2, 5, "the second attempt's record")
    with pytest.raises(ApiError) as refused:
        client.api.redeliver_webhook(job.job_id)
    assert (refused.value.status, refused.value.code) == (409, "webhook_delivery_in_progress")
    next_attempt_at = client.get(job.job_id)["webhook"]["next_attempt_at"]
    assert next_attempt_at in refused.value.message
    assert h.wait(arn, timeout_s=60) == "SUCCEEDED"
    assert [d.answered for d in receiver.deliveries] == [503, 503, 200]  # the refused one sent nothing
    assert client.get(job.job_id)["webhook"]["state"] == "delivered"
    client.api.redeliver_webhook(job.job_id)  # ended: a redelivery is taken (and counted against the limits)


def test_redeliver_is_limited_per_job_and_per_tenant_with_retry_after(
    harness: tuple[ServiceHarness, Any], receiver: ScriptedReceiver, service: RunningService
) -> None:
    h, client = harness
    first, second = h.running_job(receiver.url), h.running_job(receiver.url)
    for job in (first, second):
        assert h.wait(h.start(job, h.stage(job))) == "SUCCEEDED"
    client.api.redeliver_webhook(first.job_id)
    client.api.redeliver_webhook(first.job_id)
    with pytest.raises(RateLimited) as per_job:
        client.api.redeliver_webhook(first.job_id)
    assert per_job.value.code == "too_many_requests"
    retry_after = per_job.value.retry_after
    assert retry_after is not None
    assert 0 < retry_after <= 3600
    client.api.redeliver_webhook(second.job_id)  # the tenant's third
    with pytest.raises(RateLimited) as per_tenant:
        client.api.redeliver_webhook(second.job_id)
    assert "redeliveries in an hour" in per_tenant.value.message

    # Each accepted redelivery sent one webhook, a refused one none; other tenants are not held back.
    deadline = time.monotonic() + 30
    while len(receiver.deliveries) < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    assert len(receiver.deliveries) == 5
    other_tenant, other_client = service.new_named_tenant("schedule-other")
    other = ServiceHarness(service, other_tenant)
    job = other.running_job(receiver.url)
    assert other.wait(other.start(job, other.stage(job))) == "SUCCEEDED"
    other_client.api.redeliver_webhook(job.job_id)


def test_webhook_secrets_are_encrypted_at_rest_with_the_stacks_key(
    harness: tuple[ServiceHarness, Any], service: RunningService
) -> None:
    h, client = harness
    secret = client.webhook_secret()
    item = service.boto("dynamodb").get_item(TableName=service.table, Key={"pk": {"S": f"TENANT#{h.tenant}"}})["Item"]
    assert set(item) == {"pk", "webhook_secret_enc"}
    assert secret.encode() not in bytes(item["webhook_secret_enc"]["B"])
    key_id = service.env["SDQ_WEBHOOK_SECRETS_KEY"]
    plain = service.boto("kms").decrypt(
        CiphertextBlob=item["webhook_secret_enc"]["B"], EncryptionContext={"sdq:tenant": h.tenant}
    )
    assert plain["KeyId"].endswith(key_id)
    assert plain["Plaintext"].decode() == secret
