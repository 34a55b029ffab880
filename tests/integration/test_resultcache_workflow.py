"""The state machine settles the jobs that joined the one it finishes (SettleJoined), on its success and on its
failure path, in the real ASL run by the local cloud; a job nobody joined takes no extra state."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from ulid import ULID

from localcloud.receiver import ScriptedReceiver
from shared.contracts import Job, JobStatus, utcnow
from shared.jobs import expiry_epoch
from tests.integration.conftest import RunningService, service_fixture
from tests.integration.executions import ExecutionHarness, ServiceHarness

service = service_fixture("sdq-settle", {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "1000"})


@pytest.fixture
def harness(service: RunningService) -> Iterator[tuple[ExecutionHarness, Any]]:
    tenant, client = service.new_named_tenant("settle")
    yield ServiceHarness(service, tenant), client
    client.close()


def join(h: ExecutionHarness, source: Job, callback_url: str | None) -> Job:
    """An identical request joining ``source``, as the submission's cache stores it."""
    now = utcnow()
    request = source.request.model_copy(update={"callback_url": callback_url})
    follower = Job(
        job_id=str(ULID()),
        tenant=source.tenant,
        status=JobStatus.QUEUED,
        request=request,
        created_at=now,
        cache_key=source.cache_key,
        expires_at=expiry_epoch(now + timedelta(0), 7),
        joined_to=source.job_id,
    )
    stored = h.repo.create_joined(follower, source_id=source.job_id, alive_until=int(time.time()))
    assert stored is not None
    return stored[0]


def queued_message_ids(service: RunningService) -> list[str]:
    sqs = service.boto("sqs")
    found: list[str] = []
    for _ in range(5):
        resp = sqs.receive_message(QueueUrl=service.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for m in resp.get("Messages", []):
            found.append(json.loads(m["Body"])["job_id"])
            sqs.delete_message(QueueUrl=service.queue_url, ReceiptHandle=m["ReceiptHandle"])
    return found


def test_a_succeeded_job_answers_the_jobs_that_joined_it_each_with_its_own_webhook(
    harness: tuple[ExecutionHarness, Any], receiver: ScriptedReceiver
) -> None:
    h, client = harness
    receiver.secret = client.webhook_secret()
    source = h.running_job(receiver.url, seed=11)
    followers = [join(h, source, receiver.url), join(h, source, None)]
    arn = h.start(source, h.stage(source, 1))
    assert h.wait(arn) == "SUCCEEDED"
    assert "SettleJoined" in h.entered_states(arn)
    done = h.repo.get(source.job_id)
    for follower in followers:
        answered = h.repo.get(follower.job_id)
        assert answered.status == JobStatus.SUCCEEDED
        assert answered.cache_source == source.job_id
        assert answered.outputs == done.outputs
        assert answered.usage is not None
        assert answered.usage.gpu_s == 0
    deadline = time.monotonic() + 60
    while len(receiver.deliveries) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    by_type = sorted((d.json()["data"]["id"], d.json()["type"], d.verified) for d in receiver.deliveries)
    assert by_type == sorted([(source.job_id, "job.succeeded", True), (followers[0].job_id, "job.succeeded", True)])


def test_a_failed_job_sends_the_jobs_that_joined_it_to_the_queue(
    harness: tuple[ExecutionHarness, Any], service: RunningService
) -> None:
    h, _ = harness
    queued_message_ids(service)  # an empty queue to start from
    source = h.running_job(None, seed=12)
    follower = join(h, source, None)
    arn = h.start(source, [], worker_error={"code": "GENERATION_FAILED", "message": "injected"})
    assert h.wait(arn) == "SUCCEEDED"
    assert "SettleJoinedFailed" in h.entered_states(arn)
    assert h.repo.get(source.job_id).status == JobStatus.FAILED
    released = h.repo.get(follower.job_id)
    assert released.status == JobStatus.QUEUED
    assert released.joined_to is None
    assert queued_message_ids(service) == [follower.job_id]  # it generates itself; nothing else was sent
    assert h.repo.unqueued_before(time.time() + 3600, limit=100).count(follower.job_id) == 0  # marked sent


def test_a_job_nobody_joined_takes_no_extra_state(harness: tuple[ExecutionHarness, Any]) -> None:
    h, _ = harness
    source = h.running_job(None, seed=13)
    arn = h.start(source, h.stage(source, 1))
    assert h.wait(arn) == "SUCCEEDED"
    assert h.entered_states(arn) == [
        "Route",
        "Postprocess",
        "Postprocessed",
        "MarkSucceeded",
        "CountSucceeded",
        "HasCallback",
        "Done",
    ]
