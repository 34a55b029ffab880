"""started/progress webhooks: the worker's sender (newest state wins, started first, progress spaced), the
in-flight mark they keep on the job (moto's in-process DynamoDB), and the terminal webhook waiting for it."""

from __future__ import annotations

import itertools
import threading
import time
from typing import TYPE_CHECKING

import boto3
import pytest
import torch

from shared.contracts import Job, JobStatus, Progress
from shared.eventrecords import EventRecords
from shared.jobs import JOB_ATTRIBUTES, JobsRepository, job_pk
from shared.media import MediaStore, preview_key
from shared.settings import Settings
from shared.webhooksecrets import WebhookSecrets
from tests.unit.conftest import JOBS_TABLE, TENANT, make_job
from workflows.generation.previews import SD15_FACTORS, Captured, LatentFormat
from workflows.generation.progressevents import EventSender, ProgressEvents
from workflows.jobevents import PROGRESS, STARTED
from workflows.webhooks import (
    EVENT_IN_FLIGHT_S,
    EVENT_TIMEOUT_S,
    EventNotifier,
    Notifier,
    WebhookRetryable,
    event_webhook_id,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


def new_job(**request: object) -> Job:
    return make_job(request={"callback_url": "http://127.0.0.1:9/hooks", **request})


def at_step(job: Job, step: int) -> Job:
    return job.model_copy(update={"status": JobStatus.RUNNING, "progress": Progress(step=step, total=50)})


def test_the_sender_sends_started_first_then_the_newest_progress_at_most_once_per_interval() -> None:
    sent: list[tuple[str, int, float]] = []
    done = threading.Event()

    def send(job: Job, event: str) -> None:
        sent.append((event, job.progress.step, time.monotonic()))
        if job.progress.step == 30:
            done.set()

    sender = EventSender(send, interval_s=0.6)
    job = new_job()
    sender.offer(at_step(job, 0), STARTED)
    for step in range(1, 11):
        sender.offer(at_step(job, step), PROGRESS)
    time.sleep(0.2)
    for step in range(11, 31):
        sender.offer(at_step(job, step), PROGRESS)
        time.sleep(0.01)
    assert done.wait(5)
    time.sleep(0.8)
    assert sent[0][:2] == (STARTED, 0)
    progress = [(step, at) for event, step, at in sent if event == PROGRESS]
    assert progress[-1][0] == 30  # the newest state wins
    assert len(progress) <= 3  # 30 steps offered, a few sent
    gaps = [b[1] - a[1] for a, b in itertools.pairwise(progress)]
    assert all(gap >= 0.55 for gap in gaps), gaps
    steps = [step for step, _ in progress]
    assert steps == sorted(steps)


def test_one_jobs_slow_progress_does_not_hold_back_another_jobs_started() -> None:
    sent: list[tuple[str, str]] = []
    sender = EventSender(lambda job, event: sent.append((job.job_id, event)), interval_s=10)
    first, second = new_job(), new_job()
    sender.offer(at_step(first, 3), PROGRESS)
    time.sleep(0.2)
    sender.offer(at_step(first, 4), PROGRESS)  # due only in 10 s
    sender.offer(at_step(second, 0), STARTED)
    deadline = time.monotonic() + 3
    while (second.job_id, STARTED) not in sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sent == [(first.job_id, PROGRESS), (second.job_id, STARTED)]


@pytest.fixture
def repo(jobs_table: DynamoDBClient) -> JobsRepository:
    return JobsRepository(jobs_table, JOBS_TABLE)


def running(repo: JobsRepository, worker_id: str, **request: object) -> Job:
    job, _ = repo.create(new_job(**request))
    return repo.claim(job.job_id, TENANT, worker_id=worker_id, lease_s=60, now=time.time())


def test_a_send_is_marked_in_flight_only_for_the_running_jobs_own_worker(
    jobs_table: DynamoDBClient, repo: JobsRepository
) -> None:
    records = EventRecords(jobs_table, JOBS_TABLE)
    job = running(repo, "w-1")
    assert not records.begin(job.job_id, "w-2", in_flight_s=EVENT_IN_FLIGHT_S)
    assert records.in_flight_until(job.job_id) == 0
    assert records.begin(job.job_id, "w-1", in_flight_s=EVENT_IN_FLIGHT_S)
    assert records.in_flight_until(job.job_id) > time.time()
    in_flight = jobs_table.get_item(TableName=JOBS_TABLE, Key={"pk": {"S": job_pk(job.job_id)}})["Item"]
    records.finish(job.job_id, PROGRESS, "msg_x", outcome="delivered", status=200, error=None)
    recorded = jobs_table.get_item(TableName=JOBS_TABLE, Key={"pk": {"S": job_pk(job.job_id)}})["Item"]
    assert set(in_flight) | set(recorded) <= JOB_ATTRIBUTES, (set(in_flight) | set(recorded)) - JOB_ATTRIBUTES
    assert records.in_flight_until(job.job_id) == 0
    last = records.last(job.job_id)
    assert last is not None
    assert (last["event"], last["outcome"], last["count"]) == (PROGRESS, "delivered", 1)
    # The terminal webhook's record (what GET shows) is untouched.
    assert repo.get(job.job_id).webhook is None
    repo.transition(job.job_id, JobStatus.CANCELLED, tenant=TENANT)
    # finished: no more started/progress events
    assert not records.begin(
        job.job_id, "w-1", in_flight_s=EVENT_IN_FLIGHT_S
    )  # finished: no more started/progress events


def test_the_terminal_webhook_waits_while_a_progress_webhook_is_in_flight(
    jobs_table: DynamoDBClient, repo: JobsRepository
) -> None:
    records = EventRecords(jobs_table, JOBS_TABLE)
    s3 = boto3.client("s3", region_name="us-east-1")
    notifier = Notifier(
        repo,
        MediaStore(s3, "media"),
        WebhookSecrets(jobs_table, JOBS_TABLE, overlap_s=0),
        Settings(allow_loopback_callbacks=True),
        events=records,
    )
    job = running(repo, "w-1", webhook_events=["progress", "completed"])
    assert records.begin(job.job_id, "w-1", in_flight_s=EVENT_IN_FLIGHT_S)
    repo.transition(job.job_id, JobStatus.CANCELLED, tenant=TENANT)
    with pytest.raises(WebhookRetryable, match="still in flight"):
        notifier.notify(job.job_id, TENANT)
    assert repo.get(job.job_id).webhook is None  # no attempt was made or recorded
    records.finish(job.job_id, PROGRESS, "msg_x", outcome="delivered", status=200, error=None)
    attempt = notifier.notify(job.job_id, TENANT)  # now it is sent (port 9 refuses: a retry, recorded)
    assert attempt is not None
    assert attempt.outcome == "retry"
    record = repo.get(job.job_id).webhook
    assert record is not None
    assert record.event == "job.cancelled"
    assert record.attempts == 1


def test_each_distinct_event_has_its_own_webhook_id() -> None:
    job = new_job()
    ids = {
        event_webhook_id(at_step(job, 0), STARTED),
        event_webhook_id(at_step(job, 5), PROGRESS),
        event_webhook_id(at_step(job, 9), PROGRESS),
        event_webhook_id(at_step(job, 5).model_copy(update={"attempt": 2}), PROGRESS),
    }
    assert len(ids) == 4


def test_a_preview_stored_for_a_job_cancelled_meanwhile_is_deleted(repo: JobsRepository) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="media")
    events = ProgressEvents(MediaStore(s3, "media"), repo, outputs_prefix="outputs/")
    latents = Captured(keys=[], host=torch.zeros(1, 4, 8, 8), done=None, format=LatentFormat("sd15", SD15_FACTORS))
    job = running(repo, "w-1")
    assert events.store_preview(job, latents, 0, worker_id="w-1", step=2, total=10)
    key = preview_key("outputs/", TENANT, job.job_id)
    assert s3.list_objects_v2(Bucket="media")["KeyCount"] == 1
    assert repo.get(job.job_id).preview_key == key
    repo.transition(job.job_id, JobStatus.CANCELLED, tenant=TENANT)
    # The next preview is uploaded, its record refused (the job is no longer RUNNING), and the object removed.
    assert not events.store_preview(job, latents, 0, worker_id="w-1", step=4, total=10)
    assert s3.list_objects_v2(Bucket="media")["KeyCount"] == 0


def test_a_receiver_that_hangs_holds_back_neither_other_jobs_events_nor_its_own_order() -> None:
    """One tenant's callback host that takes the whole send timeout to answer must not delay another job's
    webhooks; its own job's events still go one at a time, in order."""
    hung = threading.Event()
    release = threading.Event()
    sent: list[tuple[str, str, int]] = []

    def send(job: Job, event: str) -> None:
        if job.job_id == slow.job_id and event == STARTED:
            hung.set()
            release.wait(5)
        sent.append((job.job_id, event, job.progress.step))

    sender = EventSender(send, interval_s=0.0)
    slow, other = new_job(), new_job()
    sender.offer(at_step(slow, 0), STARTED)
    assert hung.wait(3)
    sender.offer(at_step(slow, 5), PROGRESS)  # waits behind the slow job's own hung send
    sender.offer(at_step(other, 0), STARTED)
    sender.offer(at_step(other, 5), PROGRESS)
    deadline = time.monotonic() + 3
    while len(sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sent == [(other.job_id, STARTED, 0), (other.job_id, PROGRESS, 5)]
    release.set()
    deadline = time.monotonic() + 3
    while len(sent) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sent[2:] == [(slow.job_id, STARTED, 0), (slow.job_id, PROGRESS, 5)]


class MarkWatchingSecrets(WebhookSecrets):
    """The tenant's real secrets, read the way the sender reads them, noting whether the send was already marked
    in flight at that moment (a slow read there would have eaten the mark's time)."""

    def __init__(self, jobs_table: DynamoDBClient, records: EventRecords, job_id: str) -> None:
        super().__init__(jobs_table, JOBS_TABLE, overlap_s=0)
        self._records, self._job_id = records, job_id
        self.marked_when_read: list[bool] = []

    def signing_secrets(self, tenant: str) -> list[str]:
        self.marked_when_read.append(self._records.in_flight_until(self._job_id) > time.time())
        return super().signing_secrets(tenant)


def event_notifier(
    jobs_table: DynamoDBClient, records: EventRecords, secrets: WebhookSecrets, **kwargs: object
) -> EventNotifier:
    return EventNotifier(
        records,
        MediaStore(boto3.client("s3", region_name="us-east-1"), "media"),
        secrets,
        Settings(allow_loopback_callbacks=True),
        worker_id="w-1",
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_progress_webhook_is_signed_before_its_in_flight_mark_so_the_mark_covers_only_the_post(
    jobs_table: DynamoDBClient, repo: JobsRepository
) -> None:
    records = EventRecords(jobs_table, JOBS_TABLE)
    job = at_step(running(repo, "w-1", webhook_events=["progress", "completed"]), 3)
    secrets = MarkWatchingSecrets(jobs_table, records, job.job_id)
    attempt = event_notifier(jobs_table, records, secrets).send(job, PROGRESS)
    assert attempt is not None
    assert attempt.outcome == "retry"  # port 9 refuses: the POST was made
    assert secrets.marked_when_read == [False]
    assert records.in_flight_until(job.job_id) == 0  # and the mark is lifted after it


def test_a_progress_webhook_whose_mark_came_too_late_is_not_sent(
    jobs_table: DynamoDBClient, repo: JobsRepository
) -> None:
    """Marking the send in flight took the whole send timeout (a throttled table): the POST could outlast the
    mark, and the job's terminal webhook may go meanwhile, so it is not made."""
    records = EventRecords(jobs_table, JOBS_TABLE)
    job = at_step(running(repo, "w-1", webhook_events=["progress", "completed"]), 3)
    ticks = itertools.chain([1000.0], itertools.repeat(1000.0 + EVENT_TIMEOUT_S))
    notifier = event_notifier(
        jobs_table, records, WebhookSecrets(jobs_table, JOBS_TABLE, overlap_s=0), clock=lambda: next(ticks)
    )
    attempt = notifier.send(job, PROGRESS)
    assert attempt is not None
    assert (attempt.outcome, attempt.status) == ("gave_up", None)
    last = records.last(job.job_id)
    assert last is not None
    assert (last["event"], last["outcome"]) == (PROGRESS, "gave_up")
    assert records.in_flight_until(job.job_id) == 0
