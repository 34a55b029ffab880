"""Jobs whose submission stored them and died before sending their queue message: the requeue sweeper (a
scheduled function, run every few seconds by the local service) sends it and the job runs.

Queue contents are checked by depth, never by receiving: a receive counts toward the queue's maxReceiveCount
and would dead-letter the messages it looks at."""

from __future__ import annotations

import time
from collections.abc import Callable

from localcloud.receiver import ScriptedReceiver
from shared.contracts import GenerationRequest, Job
from shared.jobs import UNQUEUED_SHARDS, JobsRepository, job_pk
from shared.queue import JobQueue
from shared.settings import Settings
from tests.integration.conftest import RunningService, store_queued_job
from workflows.requeue import RequeueSweeper
from workflows.submission import SubmissionService

SMALL = {"width": 256, "height": 256, "num_inference_steps": 2}


def stored_but_never_sent(repo: JobsRepository, tenant: str, prompt: str) -> Job:
    """The table as a submission leaves it when its API call dies between the job write and the queue send."""
    return store_queued_job(repo, tenant, enqueued=False, prompt=prompt, **SMALL)


def marked(repo: JobsRepository, job_id: str) -> bool:
    return job_id in repo.unqueued_before(time.time() + 3600, limit=10_000)


def later(seconds: float) -> Callable[[], float]:
    return lambda: time.time() + seconds


def test_a_job_stored_but_never_sent_is_queued_by_the_schedule_and_runs(service: RunningService) -> None:
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    tenant, client = service.new_named_tenant("requeue")
    depth = service.queue_depth()
    job = stored_but_never_sent(repo, tenant, "a stranded fox")
    assert client.get(job.job_id)["status"] == "QUEUED"
    assert marked(repo, job.job_id)
    # The local profile requeues after 15 s, on a 5 s schedule; on AWS after 120 s, every minute. The mark goes
    # only once the message is sent.
    deadline = time.monotonic() + 60
    while marked(repo, job.job_id):
        assert time.monotonic() < deadline, "the sweeper never sent the stranded job's message"
        time.sleep(1)
    assert service.queue_depth() == depth + 1
    time.sleep(12)  # two more sweeps: the job is no longer marked, so no second message
    assert service.queue_depth() == depth + 1
    worker = service.start_worker(env={"SDQ_RECEIVE_WAIT_S": "1", "SDQ_MAX_BATCH_WAIT_MS": "0"})
    try:
        deadline = time.monotonic() + 120
        while client.get(job.job_id)["status"] != "SUCCEEDED":
            assert time.monotonic() < deadline, client.get(job.job_id)
            assert worker.poll() is None
            time.sleep(0.5)
        assert client.get(job.job_id)["attempt"] == 1
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def test_a_submitted_or_claimed_job_carries_no_mark(service: RunningService) -> None:
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    submissions = SubmissionService(repo, JobQueue(service.boto("sqs"), service.queue_url), Settings())
    request = GenerationRequest.model_validate({"prompt": "sent normally", **SMALL}, context={"settings": Settings()})
    sent = submissions.submit("tenant-requeue-sent", request).job
    assert not marked(repo, sent.job_id)
    claimed = stored_but_never_sent(repo, "tenant-requeue-claimed", "claimed from an earlier message")
    repo.claim(claimed.job_id, claimed.tenant, worker_id="w-1", lease_s=300, now=time.time())
    assert not marked(repo, claimed.job_id)


def test_a_marked_job_that_is_no_longer_queued_is_cleared_without_a_message(service: RunningService) -> None:
    """A job whose mark outlived its QUEUED status (written by an older version, say) gets no message."""
    ddb = service.boto("dynamodb")
    repo = JobsRepository(ddb, service.table)
    job = stored_but_never_sent(repo, "tenant-requeue-moved", "moved on")
    ddb.update_item(
        TableName=service.table,
        Key={"pk": {"S": job_pk(job.job_id)}},
        UpdateExpression="SET #s = :running",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":running": {"S": "RUNNING"}},
    )
    others = len(repo.unqueued_before(time.time() + 60, limit=10_000)) - 1
    depth = service.queue_depth()
    report = RequeueSweeper(
        repo, JobQueue(service.boto("sqs"), service.queue_url), requeue_after_s=0, clock=later(60)
    ).sweep()
    assert report.cleared >= 1
    assert service.queue_depth() == depth + report.requeued
    assert report.requeued <= others
    assert not marked(repo, job.job_id)


def test_a_requeue_that_cannot_send_keeps_the_job_marked_for_the_next_pass(service: RunningService) -> None:
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    job = stored_but_never_sent(repo, "tenant-requeue-retry", "sent on the second pass")
    missing = JobQueue(service.boto("sqs"), service.queue_url.rsplit("/", 1)[0] + "/no-such-queue")
    first = RequeueSweeper(repo, missing, requeue_after_s=0, clock=later(60)).sweep()
    assert first.failed >= 1
    assert marked(repo, job.job_id)
    depth = service.queue_depth()
    queue = JobQueue(service.boto("sqs"), service.queue_url)
    second = RequeueSweeper(repo, queue, requeue_after_s=0, clock=later(60)).sweep()
    assert second.requeued >= 1
    assert service.queue_depth() == depth + second.requeued
    assert not marked(repo, job.job_id)


def test_a_sweep_whose_budget_is_spent_sends_nothing_more_and_leaves_the_jobs_marked(service: RunningService) -> None:
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    job = stored_but_never_sent(repo, "tenant-requeue-budget", "left for the next pass")
    depth = service.queue_depth()
    report = RequeueSweeper(
        repo, JobQueue(service.boto("sqs"), service.queue_url), requeue_after_s=0, budget_s=0, clock=later(60)
    ).sweep()
    assert (report.requeued, report.deferred_shards) == (0, UNQUEUED_SHARDS)
    assert service.queue_depth() == depth
    assert marked(repo, job.job_id)


def test_a_job_abandoned_running_with_no_message_is_failed_by_the_schedule_with_its_webhook(
    service: RunningService, receiver: ScriptedReceiver
) -> None:
    """A worker died holding a job whose message was gone (deleted or dead-lettered meanwhile): nothing would ever
    run or fail it. The sweeper fails it (`ABANDONED`) once its lease lapsed `SDQ_ABANDONED_AFTER_S` ago (an hour),
    and sends its webhook; a job held by a live worker, or whose lease lapsed a moment ago, is left be."""
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    tenant, client = service.new_named_tenant("abandoned")
    receiver.secret = client.webhook_secret()

    def running(prompt: str, lease_s: float) -> Job:
        job = store_queued_job(repo, tenant, prompt=prompt, callback_url=receiver.url, **SMALL)
        return repo.claim(job.job_id, tenant, worker_id="gone", lease_s=lease_s, now=time.time())

    abandoned = running("abandoned two hours ago", -7200)
    lapsed_now = running("its message brings a worker soon", -60)
    held = running("a live worker runs it", 600)
    deadline = time.monotonic() + 60  # the local schedule sweeps every 5 s
    while client.get(abandoned.job_id)["status"] != "FAILED":
        assert time.monotonic() < deadline, "the sweeper never failed the abandoned job"
        time.sleep(1)
    view = client.get(abandoned.job_id)
    assert view["error"]["code"] == "ABANDONED"
    assert view["attempt"] == 1
    assert {client.get(j.job_id)["status"] for j in (lapsed_now, held)} == {"RUNNING"}
    deadline = time.monotonic() + 60
    while not receiver.by_job(abandoned.job_id):
        assert time.monotonic() < deadline, "no webhook for the abandoned job"
        time.sleep(0.5)
    time.sleep(6)  # another sweep: the job is no longer RUNNING, so no second webhook
    [delivery] = receiver.by_job(abandoned.job_id)
    assert delivery.verified
    assert delivery.json()["type"] == "job.failed"
    assert delivery.json()["data"]["error"]["code"] == "ABANDONED"
