"""The finished-job metrics as the local stack emits them: EMF lines in its log, one per finished job, whichever
writer finished it (the state machine's marks, a Lambda, the API), in the shape the template's alarms read."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from shared.jobs import JobsRepository
from tests.integration.conftest import RunningService, service_fixture, store_queued_job
from tests.integration.executions import ServiceHarness

service = service_fixture("sdq-metrics", {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "1000"})


@pytest.fixture
def harness(service: RunningService) -> ServiceHarness:
    tenant, _client = service.new_named_tenant("metrics")
    return ServiceHarness(service, tenant)


def emf_lines(service: RunningService) -> list[dict[str, Any]]:
    found = []
    for line in service.log_path.read_text(errors="replace").splitlines():
        start = line.find('{"_aws"')
        if start < 0:
            continue
        try:
            found.append(json.loads(line[start:]))
        except ValueError:
            continue
    return found


def finished_metrics(service: RunningService, job_id: str, timeout_s: float = 20) -> list[dict[str, Any]]:
    """The JobsFinished lines of ``job_id``, once at least one is in the log (and a moment for a second one)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = [e for e in emf_lines(service) if e.get("job_id") == job_id and "JobsFinished" in e]
        if lines:
            time.sleep(1.0)
            return [e for e in emf_lines(service) if e.get("job_id") == job_id and "JobsFinished" in e]
        time.sleep(0.3)
    raise AssertionError(f"no JobsFinished metric for job {job_id} in {service.log_path}")


def assert_alarm_shape(line: dict[str, Any], status: str) -> None:
    """What the template's alarms read: namespace sdq, dimensions service=jobs and status, a count of 1 and a
    latency in seconds."""
    [directive] = line["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "sdq"
    assert sorted(directive["Dimensions"][0]) == ["service", "status"]
    assert {m["Name"]: m["Unit"] for m in directive["Metrics"]} == {"JobsFinished": "Count", "JobLatency": "Seconds"}
    assert (line["service"], line["status"]) == ("jobs", status)
    assert line["JobsFinished"] == [1.0]
    [latency] = line["JobLatency"]
    assert 0 <= latency < 600


def test_a_succeeded_job_is_counted_once_with_its_latency(harness: ServiceHarness) -> None:
    job = harness.running_job(None)
    arn = harness.start(job, harness.stage(job))
    assert harness.wait(arn) == "SUCCEEDED"
    assert "CountSucceeded" in harness.entered_states(arn)
    [line] = finished_metrics(harness.service, job.job_id)
    assert_alarm_shape(line, "SUCCEEDED")
    stored = harness.repo.get(job.job_id)
    assert stored.finished_at is not None
    assert line["JobLatency"][0] == pytest.approx((stored.finished_at - stored.created_at).total_seconds(), abs=0.01)


def test_a_failure_in_a_succeeded_execution_is_counted_as_failed(harness: ServiceHarness) -> None:
    job = harness.running_job(None)
    arn = harness.start(job, [], worker_error={"code": "OUT_OF_MEMORY", "message": "CUDA out of memory"})
    assert harness.wait(arn) == "SUCCEEDED"
    [line] = finished_metrics(harness.service, job.job_id)
    assert_alarm_shape(line, "FAILED")


def test_a_job_failed_by_the_dead_letter_handler_is_counted_once(service: RunningService) -> None:
    tenant, _client = service.new_named_tenant("metrics-dlq")
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    job = store_queued_job(repo, tenant)
    service.boto("sqs").send_message(
        QueueUrl=service.env["SDQ_DLQ_URL"],
        MessageBody="not a job message",
        MessageAttributes={
            "job_id": {"DataType": "String", "StringValue": job.job_id},
            "tenant": {"DataType": "String", "StringValue": tenant},
        },
    )
    [line] = finished_metrics(service, job.job_id)
    assert_alarm_shape(line, "FAILED")
    assert repo.get(job.job_id).status.value == "FAILED"


def test_a_cancel_is_counted_apart_from_the_error_rate(service: RunningService) -> None:
    client = service.new_tenant("metrics-cancel")
    job = client.submit({"prompt": "a red fox", "width": 256, "height": 256})
    client.cancel(job["id"])
    [line] = finished_metrics(service, job["id"])
    assert_alarm_shape(line, "CANCELLED")


def test_an_accepted_job_is_logged_and_counted_by_the_api(service: RunningService) -> None:
    """One "job accepted" line naming the job and its tenant, and one JobsSubmitted metric line, each a whole JSON
    line of the API's output."""
    tenant, client = service.new_named_tenant("metrics-accepted")
    job = client.submit({"prompt": "a red fox", "width": 256, "height": 256, "seed": 5})
    deadline = time.monotonic() + 20
    accepted: list[dict[str, Any]] = []
    while not accepted and time.monotonic() < deadline:
        time.sleep(0.2)
        for text in service.log_path.read_text(errors="replace").splitlines():
            if '"job accepted"' in text and job["id"] in text:
                accepted.append(json.loads(text[text.find("{") :]))
    assert [(line["message"], line["job_id"], line["tenant"]) for line in accepted] == [
        ("job accepted", job["id"], tenant)
    ]
    counted = [e for e in emf_lines(service) if "JobsSubmitted" in e]
    assert counted, "no JobsSubmitted metric line"
    assert all(e["JobsSubmitted"] in (1.0, [1.0]) and "ResultCacheHit" in e for e in counted[-1:])
