"""Dead-lettered job messages: poison fails its job once; a healthy job caught in worker crashes runs again.

SQS counts every receive, so a valid message that merely waited in a worker that was killed a few times can
reach ``maxReceiveCount`` without ever being the problem. What separates the two is the job's own attempt
count, which only a claim (real GPU work) raises: a job with attempts left is sent back to the jobs queue as
a fresh message; an unreadable message, or a job that used up its attempts, ends FAILED (``DEAD_LETTERED``),
with its ``job.failed`` webhook when it has a callback. A job some worker holds (RUNNING under a live lease) or
has handed off (POSTPROCESSING) is never failed here, and the failure is one conditional write at the attempt
and status that were read (for RUNNING, with the lease still lapsed), so a claim or a renewal in between wins.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aws_lambda_powertools import Logger

from shared.contracts import Job, JobError, JobErrorCode, JobStatus, QueueMessage, utcnow
from shared.errors import InvalidTransition, JobNotFound, RetryableError
from shared.jobs import Claim, JobsRepository
from shared.queue import JobQueue, parse_body
from shared.tracing import continued

logger = Logger(service="sdq-dlq", child=True)

DEAD_LETTER_ERROR = JobError(
    code=JobErrorCode.DEAD_LETTERED,
    message="The job's queue message could not be processed after repeated deliveries and was dead-lettered.",
)


def job_ref(body: str, attributes: dict[str, str]) -> tuple[str, str] | None:
    """(job_id, tenant) from the body, or from the message attributes when the body is unreadable."""
    message: QueueMessage | None = parse_body(body)
    if message is not None:
        return message.job_id, message.tenant
    job_id, tenant = attributes.get("job_id"), attributes.get("tenant")
    return (job_id, tenant) if job_id and tenant else None


def handle_dead_letter(
    repo: JobsRepository,
    queue: JobQueue,
    body: str,
    attributes: dict[str, str],
    *,
    max_attempts: int,
    notify: Callable[[Job], object] | None = None,
    clock: Callable[[], float] = time.time,
    trace_header: str | None = None,
) -> str:
    """Requeue or fail the message's job; returns ``requeued``, ``failed``, ``already_final``, ``handed_off``
    (its execution finishes it), ``moved_on`` (claimed again or handed off since it was read) or ``unknown``.

    Only a job no worker holds is failed: QUEUED, or RUNNING with its lease lapsed, at the attempt read here (one
    conditional write). A job RUNNING under a live lease raises RetryableError: the record comes back after the
    dead-letter queue's visibility timeout, when that worker has handed the job off or its lease has lapsed.
    ``notify`` starts a failed job's webhook; it may raise (the record is then retried, and the retry, finding
    the job already dead-lettered, starts the notice again: it must be idempotent).

    Both the message sent again and the webhook's execution continue the job's own trace: ``trace_header`` (the
    dead letter's ``AWSTraceHeader``), else the one the job stored at its submit.
    """
    message = parse_body(body)
    ref = job_ref(body, attributes)
    if ref is None:
        logger.error("dead-lettered message names no job; dropped", body_prefix=body[:200])
        return "unknown"
    job_id, tenant = ref
    try:
        job = repo.get(job_id)
    except JobNotFound:
        logger.warning("dead-lettered job not found", job_id=job_id)
        return "unknown"
    if job.tenant != tenant:
        logger.warning("dead-lettered message names another tenant's job; dropped", job_id=job_id)
        return "unknown"
    with continued(trace_header or job.trace_header):
        if job.status.terminal:
            _notify_if_dead_lettered(job, notify)
            return "already_final"
        if job.status == JobStatus.POSTPROCESSING:
            logger.info("dead-lettered job already handed off; its execution finishes it", job_id=job_id)
            return "handed_off"
        if job.status == JobStatus.RUNNING and repo.lease_remaining(job_id, clock()) > 0:
            raise RetryableError(f"job {job_id} is running under a live lease; its dead letter is tried again later")
        if message is not None and job.attempt < max_attempts:
            queue.send(message.model_copy(update={"enqueued_at": utcnow()}))
            logger.warning("dead-lettered job requeued", job_id=job.job_id, attempt=job.attempt)
            return "requeued"
        return _fail(repo, job, notify, now=clock())


def _fail(repo: JobsRepository, job: Job, notify: Callable[[Job], object] | None, *, now: float) -> str:
    """Mark the job FAILED (``DEAD_LETTERED``) if it is still as it was read: QUEUED, or RUNNING with its lease
    lapsed (its worker may have renewed it since), at the attempt read."""
    running = job.status == JobStatus.RUNNING
    try:
        failed = repo.transition(
            job.job_id,
            JobStatus.FAILED,
            tenant=job.tenant,
            sources=[job.status],
            claim=Claim(attempt=job.attempt),
            lease_lapsed_before=now if running else None,
            error=DEAD_LETTER_ERROR,
        )
    except InvalidTransition as exc:
        current = repo.get(job.job_id)
        if current.status.terminal:
            _notify_if_dead_lettered(current, notify)
            return "already_final"
        logger.info("dead-lettered job moved on since it was read", job_id=job.job_id, status=exc.current)
        return "moved_on"
    logger.warning("dead-lettered job failed", job_id=job.job_id, attempt=job.attempt)
    if notify is not None:
        notify(failed)
    return "failed"


def _notify_if_dead_lettered(job: Job, notify: Callable[[Job], object] | None) -> None:
    """A dead letter seen again after its job was failed here (the first try's notice may not have started)."""
    if notify is not None and job.status == JobStatus.FAILED and job.error and job.error.code == DEAD_LETTER_ERROR.code:
        notify(job)
