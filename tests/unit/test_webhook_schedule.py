"""The terminal webhook's retry schedule: one setting, applied by the Notify task, waited out by the state
machine (a Wait state between attempts), bounded by the execution's timeout."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from pydantic import ValidationError

from shared.contracts import JobStatus
from shared.jobs import JobsRepository
from shared.media import MediaStore
from shared.settings import MAX_WEBHOOK_DELIVERY_S, MAX_WEBHOOK_RETRY_SPAN_S, WORKFLOW_TIMEOUT_S, Settings
from shared.webhooksecrets import WebhookSecrets
from tests.unit.conftest import JOBS_TABLE, TENANT, make_job
from workflows.webhooks import Notifier, delivery_span_s, next_attempt_at

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

ASL = json.loads((Path(__file__).resolve().parents[2] / "statemachine.asl.json").read_text())
NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)


def test_the_default_schedule_is_standard_webhooks_and_survives_an_outage_of_a_day() -> None:
    schedule = Settings().webhook_retry_schedule_s
    waits = []
    for made in range(1, len(schedule) + 2):
        at = next_attempt_at(schedule, made, None, NOW)
        waits.append(None if at is None else (at - NOW).total_seconds())
    assert waits == [5, 300, 1800, 7200, 18000, 36000, 36000, None]
    assert sum(schedule) > 24 * 3600


def test_a_longer_retry_after_delays_the_retry_up_to_the_longest_wait() -> None:
    schedule = [5, 60]
    assert next_attempt_at(schedule, 1, 30, NOW) == NOW + timedelta(seconds=30)
    assert next_attempt_at(schedule, 1, 2, NOW) == NOW + timedelta(seconds=5)
    assert next_attempt_at(schedule, 1, 10**6, NOW) == NOW + timedelta(seconds=60)


def test_the_schedule_is_one_setting_bounded_by_the_execution_timeout() -> None:
    assert Settings(webhook_retry_schedule_s=[1, 2]).webhook_retry_schedule_s == [1, 2]
    for bad in ([], [0, 5], [MAX_WEBHOOK_RETRY_SPAN_S, 1]):
        with pytest.raises(ValidationError):
            Settings(webhook_retry_schedule_s=bad)
    # The longest schedule allowed, its attempts (each within its task timeout and retries) and the rest of
    # an execution fit in the state machine's timeout.
    assert ASL["TimeoutSeconds"] == WORKFLOW_TIMEOUT_S >= MAX_WEBHOOK_RETRY_SPAN_S + 8 * 3600
    # No attempt is scheduled later than MAX_WEBHOOK_DELIVERY_S after the execution began: the last one (its
    # task's timeout and retries) and the execution's end fit in the hours left.
    assert delivery_span_s([MAX_WEBHOOK_RETRY_SPAN_S]) == MAX_WEBHOOK_DELIVERY_S <= WORKFLOW_TIMEOUT_S - 4 * 3600


def schedule_from(started: datetime, schedule: list[int], retry_after: int | None, took_s: int) -> list[datetime]:
    """The attempts of one delivery whose every attempt fails (``retry_after`` from the receiver), each taking
    ``took_s`` (the first made ``took_s`` after the execution began, as after its postprocessing)."""
    attempts, at = [], started + timedelta(seconds=took_s)
    while True:
        attempts.append(at)
        due = next_attempt_at(schedule, len(attempts), retry_after, at, started)
        if due is None:
            return attempts
        at = due + timedelta(seconds=took_s)


def test_a_receivers_retry_after_cannot_stretch_a_delivery_past_its_span() -> None:
    """Each wait stretched to 10 h would have the 8 attempts span 70 h, past the execution's 48 h timeout: its
    record would stay `retrying` for ever. The delivery gives up instead once an attempt would be due past the
    schedule's span and its longest wait from the execution's start."""
    schedule = Settings().webhook_retry_schedule_s
    span = timedelta(seconds=delivery_span_s(schedule))
    assert span == timedelta(seconds=sum(schedule) + 36000)  # about 37.6 h
    attempts = schedule_from(NOW, schedule, 36000, took_s=60)
    assert len(attempts) == 4  # 0 h, 10 h, 20 h, 30 h: a 40 h one would be past the span
    assert attempts[-1] - NOW <= span < timedelta(seconds=WORKFLOW_TIMEOUT_S)
    # A receiver's shorter Retry-After, or none, is never cut short: every attempt of the schedule is made, even
    # with a slow first attempt (10 min of postprocessing) and each taking a minute.
    for retry_after in (None, 600):
        assert len(schedule_from(NOW, schedule, retry_after, took_s=600)) == len(schedule) + 1


def test_the_state_machine_waits_between_attempts_without_a_lambda() -> None:
    states = ASL["States"]
    for notify in ("Notify", "NotifyFailed", "RetryNotify"):
        assert states[notify]["Next"] == "WebhookRetryDue", notify
        assert states[notify]["ResultPath"] == "$.notify"
    assert states["WebhookRetryDue"]["Choices"] == [
        {"Variable": "$.notify.result.retry_at", "IsPresent": True, "Next": "WaitForWebhookRetry"}
    ]
    assert states["WebhookRetryDue"]["Default"] == "Done"
    assert states["WaitForWebhookRetry"] == {
        "Type": "Wait",
        "TimestampPath": "$.notify.result.retry_at",
        "Next": "RetryNotify",
    }
    assert states["RetryNotify"]["Parameters"]["Payload"]["made.$"] == "$.notify.result.made"
    for notify in ("Notify", "NotifyFailed", "RetryNotify"):  # the delivery's span counts from the start
        assert states[notify]["Parameters"]["Payload"]["started_at.$"] == "$$.Execution.StartTime", notify


class Failing:
    """A receiver on 127.0.0.1 that answers 503 to every request."""

    def __init__(self) -> None:
        self.requests = 0
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.bodies.append(self.rfile.read(int(self.headers.get("content-length", "0"))))
                receiver.requests += 1
                self.send_response(503)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"


@pytest.fixture
def failing() -> Iterator[Failing]:
    receiver = Failing()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def test_each_failed_attempt_records_when_the_next_is_due_and_the_last_gives_up(
    jobs_table: DynamoDBClient, failing: Failing
) -> None:
    repo = JobsRepository(jobs_table, JOBS_TABLE)
    job, _ = repo.create(make_job(request={"callback_url": failing.url}))
    repo.transition(job.job_id, JobStatus.CANCELLED, tenant=TENANT)
    settings = Settings(allow_loopback_callbacks=True, webhook_retry_schedule_s=[5, 300])
    notifier = Notifier(
        repo,
        MediaStore(boto3.client("s3", region_name="us-east-1"), "media"),
        WebhookSecrets(jobs_table, JOBS_TABLE, overlap_s=0),
        settings,
        now=lambda: NOW,
    )
    first = notifier.deliver(job.job_id, TENANT)
    assert first is not None
    assert (first.outcome, first.status, first.retry_at) == ("retry", 503, NOW + timedelta(seconds=5))
    record = repo.get(job.job_id).webhook
    assert record is not None
    assert (record.state, record.attempts, record.next_attempt_at) == ("retrying", 1, NOW + timedelta(seconds=5))

    second = notifier.deliver(job.job_id, TENANT, made=1)
    assert second is not None
    assert second.retry_at == NOW + timedelta(seconds=300)

    last = notifier.deliver(job.job_id, TENANT, made=2)
    assert last is not None
    assert (last.outcome, last.retry_at) == ("gave_up", None)
    record = repo.get(job.job_id).webhook
    assert record is not None
    assert (record.state, record.attempts, record.next_attempt_at) == ("failed", 3, None)
    assert record.last_error == "HTTP 503"
    assert failing.requests == 3


def test_every_attempt_of_one_event_sends_the_same_body_stamped_when_the_job_finished(
    jobs_table: DynamoDBClient, failing: Failing
) -> None:
    repo = JobsRepository(jobs_table, JOBS_TABLE)
    job, _ = repo.create(make_job(request={"callback_url": failing.url}))
    cancelled = repo.transition(job.job_id, JobStatus.CANCELLED, tenant=TENANT)
    notifier = Notifier(
        repo,
        MediaStore(boto3.client("s3", region_name="us-east-1"), "media"),
        WebhookSecrets(jobs_table, JOBS_TABLE, overlap_s=0),
        Settings(allow_loopback_callbacks=True, webhook_retry_schedule_s=[5, 300]),
    )
    notifier.deliver(job.job_id, TENANT)
    time.sleep(0.01)  # the clock moves between the attempts
    notifier.deliver(job.job_id, TENANT, made=1)
    first, second = failing.bodies
    assert first == second
    assert cancelled.finished_at is not None
    assert datetime.fromisoformat(json.loads(first)["timestamp"]) == cancelled.finished_at
