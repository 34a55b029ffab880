"""A job's own X-Ray trace on every message sent for it, as the worker receives it (the message's
``AWSTraceHeader``): its submit stores the trace header on the job, and the requeue sweeper and the result cache's
release of a joined job send the job's message again in that trace, not in their own invocation's. Real
repository, submission and SQS adapters on moto, in process."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from shared.contracts import GenerationRequest, Job, JobStatus, WorkflowInput
from shared.jobs import JobsRepository
from shared.queue import JobQueue, WorkerQueue
from shared.ratelimit import DailyGpuBudget
from shared.settings import Settings
from shared.tracing import continued, current_header
from tests.unit.conftest import JOBS_TABLE, make_job
from workflows.requeue import RequeueSweeper
from workflows.resultcache import ResultCache
from workflows.submission import SubmissionService
from workflows.webhooks import start_notice

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

SUBMIT = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"  # the job's submit
SOURCE = "Root=1-5759e988-00000000000000000000000c;Parent=0000000000000002;Sampled=1"  # another job's submit
OWN = "Root=1-5759e988-00000000000000000000000d;Parent=0000000000000003;Sampled=1"  # the sending Lambda's own
REQUEST = {"prompt": "a fox", "seed": 42, "width": 256, "height": 256, "num_inference_steps": 2}


class Notices:
    """Step Functions for webhook notices: the trace header each execution was started in, by job id."""

    started: dict[str, str | None] = {}

    def start(self, name: str, workflow_input: WorkflowInput) -> str:
        self.started[workflow_input.job_id] = current_header()
        return name


class World:
    def __init__(self, ddb: DynamoDBClient) -> None:
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="jobs")["QueueUrl"]
        settings = Settings()
        self.repo = JobsRepository(ddb, JOBS_TABLE)
        self.queue = JobQueue(sqs, url)
        self.worker_queue = WorkerQueue(sqs, url)
        budget = DailyGpuBudget(ddb, JOBS_TABLE)
        self.notices = Notices()
        self.notices.started = {}
        self.cache = ResultCache(self.repo, self.queue, settings, orchestrator=self.notices, budget=budget)  # type: ignore[arg-type]
        self.api = SubmissionService(self.repo, self.queue, settings, cache=self.cache, budget=budget)

    def submit(self, header: str, **changes: Any) -> Job:
        """A submit as the API makes it, in its request's trace."""
        with continued(header):
            return self.api.submit("t1", GenerationRequest.model_validate(REQUEST | changes)).job

    def received(self) -> dict[str, str | None]:
        """The trace header of each message on the queue, by job id (taken off the queue)."""
        found: dict[str, str | None] = {}
        while got := self.worker_queue.receive(max_messages=10, wait_s=0, visibility_s=60):
            for r in got:
                assert r.message is not None
                found[r.message.job_id] = r.trace_header
            self.worker_queue.delete(got)
        return found


@pytest.fixture
def world(jobs_table: DynamoDBClient) -> World:
    return World(jobs_table)


def test_a_submit_stores_its_trace_on_the_job_and_sends_the_message_in_it(world: World) -> None:
    job = world.submit(SUBMIT)
    assert world.repo.get(job.job_id).trace_header == SUBMIT
    assert world.received() == {job.job_id: SUBMIT}


def test_the_sweeper_sends_a_stranded_job_in_the_trace_of_its_submit(world: World) -> None:
    with continued(SUBMIT):  # the submission's write, in its request's trace; the call died before the send
        stranded, _ = world.repo.create(make_job(tenant="t1"))
    untraced, _ = world.repo.create(make_job(tenant="t1"))  # submitted without a trace
    with continued(OWN):  # the sweeper's own invocation
        report = RequeueSweeper(world.repo, world.queue, requeue_after_s=0, clock=lambda: time.time() + 60).sweep()
    assert report.requeued == 2
    assert world.received() == {stranded.job_id: SUBMIT, untraced.job_id: OWN}


def test_a_joined_job_sent_to_run_itself_goes_in_its_own_trace_not_its_sources(world: World) -> None:
    source = world.submit(SOURCE)
    follower = world.submit(SUBMIT)
    assert follower.joined_to == source.job_id
    assert world.received() == {source.job_id: SOURCE}
    world.repo.transition(source.job_id, JobStatus.CANCELLED, tenant="t1")
    with continued(SOURCE):  # the settling runs in the source's execution, in the source's trace
        assert world.cache.settle(source.job_id).released == 1
    assert world.received() == {follower.job_id: SUBMIT}


def test_a_cancels_webhook_runs_in_the_jobs_trace_not_the_cancel_requests(world: World) -> None:
    job = world.submit(SUBMIT, callback_url="https://hooks.example.com/x")
    with continued(OWN):  # the cancel request's own invocation
        world.api.cancel("t1", job.job_id, notify=lambda cancelled: start_notice(world.notices, cancelled, "cancelled"))  # type: ignore[arg-type]
    assert world.notices.started == {job.job_id: SUBMIT}
