"""The hand-off against the real JobsRepository and S3 (moto, in process): a StartExecution that fails after the
upload is retried with the uploaded images, never by generating again; a dropped job's message is deleted only
when no worker needs it any more."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.exceptions import ClientError
from PIL import Image as PILImage

from shared.contracts import Job, JobErrorCode, JobStatus, WorkflowInput
from shared.jobs import JobsRepository
from shared.media import MediaStore
from shared.orchestration import Orchestrator
from tests.unit.conftest import JOBS_TABLE, make_job
from tests.unit.workerfakes import RecordingQueue, held
from workflows.generation.encoding import PngEncoder
from workflows.generation.handoff import START_ATTEMPTS, HandOff
from workflows.generation.heldmessages import Held, HeldMessages

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

WORKER = "worker-a"
BUCKET = "media"


class FlakyOrchestrator(Orchestrator):
    """Step Functions that refuses the first ``failures`` starts (throttled), recording every start's name."""

    def __init__(self, failures: int) -> None:
        super().__init__(None, "arn:aws:states:us-east-1:1:stateMachine:sdq")  # type: ignore[arg-type]
        self.failures = failures
        self.names: list[str] = []
        self.inputs: list[dict[str, Any]] = []

    def start(self, name: str, workflow_input: WorkflowInput) -> str:
        self.names.append(name)
        if self.failures > 0:
            self.failures -= 1
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "StartExecution")
        self.inputs.append(workflow_input.payload())
        return f"arn:aws:states:us-east-1:1:execution:sdq:{name}"


class Setup:
    def __init__(
        self, table: DynamoDBClient, failures: int = 0, repository: type[JobsRepository] = JobsRepository
    ) -> None:
        self.repo = repository(table, JOBS_TABLE)
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        self.s3 = s3
        self.queue = RecordingQueue()
        self.held = HeldMessages(self.queue, max_batch_images=8, max_batch_wait_s=0.0)
        self.sfn = FlakyOrchestrator(failures)
        self.pauses: list[float] = []
        self.finishers = ThreadPoolExecutor(1)
        self.handoff = HandOff(
            self.held,
            self.repo,
            MediaStore(s3, BUCKET),
            self.sfn,
            PngEncoder(0),
            self.finishers,
            staging_prefix="staging/",
            worker_id=WORKER,
            model_name="tiny",
            sleep=self.pauses.append,
        )

    def stored(self, status: JobStatus = JobStatus.QUEUED) -> Held:
        """A held message whose job is stored ``status``; claimed by this worker when RUNNING."""
        h = held()
        job = make_job(tenant=h.tenant).model_copy(update={"job_id": h.job_id, "request": h.request})
        self.repo.create(job)
        self.held.accept([h.received])
        (taken,) = self.held.take_waiting()  # the record the worker holds
        if status != JobStatus.QUEUED:
            claimed: Job = self.repo.claim(h.job_id, h.tenant, worker_id=WORKER, lease_s=60, now=time.time())
            taken.job, taken.claimed_at = claimed, time.monotonic()
        return taken

    def staged(self, job_id: str) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"staging/{job_id}/")
        return [o["Key"] for o in listed.get("Contents", [])]


def handed_off(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The fields of the worker's ``"job handed off"`` lines: one per job the state machine now has."""
    return [vars(r) for r in caplog.records if r.getMessage() == "job handed off"]


@pytest.fixture
def setup(jobs_table: DynamoDBClient) -> Iterator[Setup]:
    running = Setup(jobs_table, failures=START_ATTEMPTS - 1)
    yield running
    running.finishers.shutdown()


def test_a_start_that_fails_after_the_upload_is_retried_with_the_same_images(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    h = setup.stored(JobStatus.RUNNING)
    image = PILImage.new("RGB", (8, 8))
    with caplog.at_level("INFO"):
        setup.handoff.complete_later(None, h, [image, image])
        setup.handoff.wait()
    name = f"{h.job_id}-1"
    assert setup.sfn.names == [name] * START_ATTEMPTS  # one execution name: the same hand-off each time
    assert setup.pauses == [1.0, 2.0, 4.0, 8.0]
    keys = [f"staging/{h.job_id}/1/0.png", f"staging/{h.job_id}/1/1.png"]
    assert setup.sfn.inputs[0]["staging_keys"] == keys
    assert setup.staged(h.job_id) == keys  # uploaded once, started with them: never generated again
    assert setup.repo.get(h.job_id).status == JobStatus.POSTPROCESSING
    assert setup.queue.deleted == [h.received.message_id]
    assert len(setup.held) == 0
    [line] = handed_off(caplog)  # once, after the retried start: the job can be followed into its execution
    assert (line["job_id"], line["tenant"], line["attempt"], line["images"]) == (h.job_id, h.tenant, 1, 2)


def test_a_start_that_keeps_failing_leaves_the_job_to_run_again(setup: Setup) -> None:
    setup.sfn.failures = START_ATTEMPTS
    h = setup.stored(JobStatus.RUNNING)
    setup.handoff.complete_later(None, h, [PILImage.new("RGB", (8, 8))])
    setup.handoff.wait()
    assert len(setup.sfn.names) == START_ATTEMPTS
    assert setup.repo.get(h.job_id).status == JobStatus.RUNNING  # its lease lapses, the next receiver runs it
    assert setup.queue.deleted == setup.queue.visibility == []  # the message reappears when its visibility ends
    assert len(setup.held) == 0


def test_a_dropped_job_queued_again_keeps_its_message_and_it_goes_back_now(setup: Setup) -> None:
    h = setup.stored(JobStatus.QUEUED)  # handed back (a takeover released it unstarted) while this worker ran it
    h.dropped = True
    setup.handoff.drop(h)
    assert setup.queue.deleted == []
    assert setup.queue.visibility == [(h.received.message_id, 0)]
    assert len(setup.held) == 0


@pytest.mark.parametrize("status", [JobStatus.CANCELLED, JobStatus.RUNNING])
def test_a_dropped_job_cancelled_loses_its_message_and_one_taken_over_keeps_it(setup: Setup, status: JobStatus) -> None:
    h = setup.stored(JobStatus.RUNNING)
    if status == JobStatus.CANCELLED:
        setup.repo.transition(h.job_id, JobStatus.CANCELLED, tenant=h.tenant)
    h.dropped = True
    setup.handoff.drop(h)
    assert setup.queue.deleted == ([h.received.message_id] if status == JobStatus.CANCELLED else [])
    assert setup.queue.visibility == []
    assert len(setup.held) == 0


def taken_over_and_handed_back(setup: Setup, h: Held) -> None:
    """This worker's lease lapsed mid-generation; another worker claimed the job (attempt 2), then handed it back
    unstarted on a warm stop: QUEUED again, its message needed to run it."""
    assert setup.repo.record_preview(h.job_id, worker_id=WORKER, key="previews/p.jpg", step=12, total=30)
    other: Job = setup.repo.claim(h.job_id, h.tenant, worker_id="worker-b", lease_s=60, now=time.time() + 3600)
    assert setup.repo.release_claim(h.job_id, h.tenant, worker_id="worker-b", attempt=other.attempt)
    queued = setup.repo.get(h.job_id)
    assert queued.status == JobStatus.QUEUED
    # Nothing of either attempt's run is left on it: no preview, no step, no lease.
    assert (queued.progress.step, queued.progress.total, queued.preview_key) == (0, 0, None)
    assert setup.repo.lease_until(h.job_id) is None


def test_a_hand_off_after_the_claim_was_lost_keeps_the_message_the_job_needs(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    setup.sfn.failures = 0
    h = setup.stored(JobStatus.RUNNING)
    taken_over_and_handed_back(setup, h)
    with caplog.at_level("INFO"):
        setup.handoff.complete_later(None, h, [PILImage.new("RGB", (8, 8))])
        setup.handoff.wait()
    assert handed_off(caplog) == []  # not this worker's any more: its execution settles nothing
    assert setup.queue.deleted == []  # deleting it would leave a QUEUED job that nothing ever sends
    assert setup.queue.visibility == [(h.received.message_id, 0)]
    assert setup.repo.get(h.job_id).status == JobStatus.QUEUED


def test_a_failure_hand_off_after_the_claim_was_lost_keeps_the_message_too(setup: Setup) -> None:
    setup.sfn.failures = 0
    h = setup.stored(JobStatus.RUNNING)
    taken_over_and_handed_back(setup, h)
    setup.handoff.fail(h, JobErrorCode.GENERATION_FAILED, "out of memory")
    assert setup.queue.deleted == []
    assert setup.queue.visibility == [(h.received.message_id, 0)]


def test_a_failure_hand_off_of_a_job_still_claimed_deletes_its_message(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    setup.sfn.failures = 0
    h = setup.stored(JobStatus.RUNNING)
    with caplog.at_level("INFO"):
        setup.handoff.fail(h, JobErrorCode.GENERATION_FAILED, "out of memory")
    assert setup.queue.deleted == [h.received.message_id]  # the execution records the failure at this attempt
    [line] = handed_off(caplog)
    assert (line["job_id"], line["tenant"], line["error_code"]) == (h.job_id, h.tenant, "GENERATION_FAILED")


def test_a_job_handed_back_runs_again_elsewhere_with_its_attempt_counted(setup: Setup) -> None:
    h = setup.stored(JobStatus.RUNNING)
    assert setup.repo.record_preview(h.job_id, worker_id=WORKER, key="previews/p.jpg", step=12, total=30)
    setup.handoff.release_later(h)
    setup.handoff.wait()
    job = setup.repo.get(h.job_id)
    assert (job.status, job.attempt) == (JobStatus.QUEUED, 1)
    # Queued again as if never run: no worker, no lease, no progress for a client to read.
    assert (job.progress.step, job.progress.total, job.preview_key) == (0, 0, None)
    assert setup.repo.lease_until(h.job_id) is None
    assert setup.queue.visibility == [(h.received.message_id, 0)]  # visible now: no lease to wait for
    assert setup.queue.deleted == []
    assert len(setup.held) == 0
    again = setup.repo.claim(h.job_id, h.tenant, worker_id="worker-b", lease_s=60, now=time.time())
    assert again.attempt == 2


def test_a_job_handed_back_after_it_was_cancelled_is_dropped(setup: Setup) -> None:
    h = setup.stored(JobStatus.RUNNING)
    setup.repo.transition(h.job_id, JobStatus.CANCELLED, tenant=h.tenant)
    setup.handoff.release(h)
    assert setup.repo.get(h.job_id).status == JobStatus.CANCELLED
    assert setup.queue.deleted == [h.received.message_id]
    assert len(setup.held) == 0


class BrokenRepo(JobsRepository):
    """A repository whose reads fail in a way the hand-off does not expect."""

    def get(self, job_id: str, *, tenant: str | None = None, within_retention: bool = True) -> Job:
        raise RuntimeError(f"unexpected: {job_id}")


def test_every_hand_off_that_raises_is_logged_and_waiting_for_them_does_not_raise(
    jobs_table: DynamoDBClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A warm stop waits for the hand-offs, then finishes its shutdown (finishers, letting go, scale-in protection):
    one hand-off's error must not cut it short, and none may go unlogged."""
    setup = Setup(jobs_table, repository=BrokenRepo)
    try:
        jobs = [setup.stored(JobStatus.RUNNING) for _ in range(3)]
        with caplog.at_level("ERROR"):
            for h in jobs:
                setup.handoff.drop_later(h)
            setup.handoff.wait()  # raises nothing
        logged = [r.getMessage() for r in caplog.records if r.getMessage() == "hand-off failed"]
        assert len(logged) == 3
        assert all(f"unexpected: {h.job_id}" in caplog.text for h in jobs)
        assert len(setup.held) == 3  # still held: the worker lets them go with the rest
    finally:
        setup.finishers.shutdown()
