"""Jobs whose submission stored them and died before sending their queue message: the requeue sweeper (a
scheduled function, run every few seconds by the local service) sends it, once, and the job runs."""

from __future__ import annotations

import time
from collections.abc import Callable

from ulid import ULID

from shared.contracts import GenerationRequest, Job, JobStatus, utcnow
from shared.jobs import JobsRepository, expiry_epoch
from shared.queue import JobQueue, parse_body
from shared.settings import Settings
from tests.integration.conftest import RunningService
from workflows.requeue import RequeueSweeper
from workflows.submission import SubmissionService

SMALL = {"width": 256, "height": 256, "num_inference_steps": 2}


def stored_but_never_sent(repo: JobsRepository, tenant: str, prompt: str) -> Job:
    """The table as a submission leaves it when its API call dies between the job write and the queue send."""
    request = GenerationRequest.model_validate({"prompt": prompt, **SMALL}, context={"settings": Settings()})
    normalised = request.normalised(Settings())
    now = utcnow()
    job = Job(
        job_id=str(ULID()),
        tenant=tenant,
        status=JobStatus.QUEUED,
        request=normalised,
        created_at=now,
        cache_key=normalised.cache_key(),
        expires_at=expiry_epoch(now, 1),
    )
    stored, created = repo.create(job)
    assert created
    return stored


def queued_job_ids(service: RunningService) -> list[str]:
    """The job id of each message in the queue (one entry per message), read without consuming them."""
    sqs, by_message = service.boto("sqs"), {}
    for _ in range(5):
        for m in sqs.receive_message(
            QueueUrl=service.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0
        ).get("Messages", []):
            message = parse_body(m["Body"])
            assert message is not None
            by_message[m["MessageId"]] = message.job_id
    return list(by_message.values())


def later(seconds: float) -> Callable[[], float]:
    return lambda: time.time() + seconds


def test_a_job_stored_but_never_sent_is_queued_by_the_schedule_once_and_runs(service: RunningService) -> None:
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    tenant, client = service.new_named_tenant("requeue")
    job = stored_but_never_sent(repo, tenant, "a stranded fox")
    assert client.get(job.job_id)["status"] == "QUEUED"
    # The local profile requeues after 15 s, on a 5 s schedule; on AWS after 120 s, every minute.
    deadline = time.monotonic() + 60
    while job.job_id not in queued_job_ids(service):
        assert time.monotonic() < deadline, "the sweeper never sent the stranded job's message"
        time.sleep(1)
    assert repo.unqueued_before(time.time() + 3600, limit=100) == []
    time.sleep(12)  # two more sweeps: the job is no longer marked, so no second message
    assert queued_job_ids(service).count(job.job_id) == 1
    worker = service.start_worker(env={"SDQ_RECEIVE_WAIT_S": "1", "SDQ_MAX_BATCH_WAIT_MS": "0"})
    try:
        deadline = time.monotonic() + 120
        while client.get(job.job_id)["status"] != "SUCCEEDED":
            assert time.monotonic() < deadline, client.get(job.job_id)
            assert worker.poll() is None
            time.sleep(0.5)
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def test_a_submitted_job_is_not_requeued_and_a_claimed_one_is_let_be(service: RunningService) -> None:
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    queue = JobQueue(service.boto("sqs"), service.queue_url)
    submissions = SubmissionService(repo, queue, Settings())
    request = GenerationRequest.model_validate({"prompt": "sent normally", **SMALL}, context={"settings": Settings()})
    sent = submissions.submit("tenant-requeue-sent", request).job
    claimed = stored_but_never_sent(repo, "tenant-requeue-claimed", "claimed by a worker from an earlier message")
    repo.claim(claimed.job_id, claimed.tenant, worker_id="w-1", lease_s=300, now=time.time())
    report = RequeueSweeper(repo, queue, requeue_after_s=0, clock=later(60)).sweep()
    assert report.requeued == 0
    assert queued_job_ids(service).count(sent.job_id) == 1
    assert claimed.job_id not in queued_job_ids(service)


def test_a_requeue_that_cannot_send_keeps_the_job_marked_for_the_next_pass(service: RunningService) -> None:
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    job = stored_but_never_sent(repo, "tenant-requeue-retry", "sent on the second pass")
    missing = JobQueue(service.boto("sqs"), service.queue_url.rsplit("/", 1)[0] + "/no-such-queue")
    first = RequeueSweeper(repo, missing, requeue_after_s=0, clock=later(60)).sweep()
    assert first.failed >= 1
    assert job.job_id in repo.unqueued_before(time.time() + 60, limit=1000)
    queue = JobQueue(service.boto("sqs"), service.queue_url)
    second = RequeueSweeper(repo, queue, requeue_after_s=0, clock=later(60)).sweep()
    assert second.requeued >= 1
    assert job.job_id in queued_job_ids(service)
    assert job.job_id not in repo.unqueued_before(time.time() + 60, limit=1000)
