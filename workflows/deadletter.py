"""Dead-lettered job messages: poison fails its job once; a healthy job caught in worker crashes runs again.

SQS counts every receive, so a valid message that merely waited in a worker that was killed a few times can
reach ``maxReceiveCount`` without ever being the problem. What separates the two is the job's own attempt
count, which only a claim (real GPU work) raises: a job with attempts left is sent back to the jobs queue as
a fresh message; an unreadable message, or a job that used up its attempts, ends FAILED (``DEAD_LETTERED``),
with its ``job.failed`` webhook when it has a callback.
"""

from __future__ import annotations

from collections.abc import Callable

from aws_lambda_powertools import Logger

from shared.contracts import Job, JobError, JobStatus, QueueMessage, utcnow
from shared.errors import InvalidTransition, JobNotFound
from shared.jobs import JobsRepository
from shared.queue import JobQueue, parse_body

logger = Logger(service="sdq-dlq", child=True)

DEAD_LETTER_ERROR = JobError(
    code="DEAD_LETTERED",
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
) -> str:
    """Requeue or fail the message's job; returns ``requeued``, ``failed``, ``already_final`` or ``unknown``.

    ``notify`` starts a failed job's webhook; it may raise (the record is then retried, and the retry, finding
    the job already dead-lettered, starts the notice again: it must be idempotent).
    """
    message = parse_body(body)
    if message is not None:
        try:
            job = repo.get(message.job_id)
        except JobNotFound:
            logger.warning("dead-lettered job not found", job_id=message.job_id)
            return "unknown"
        if job.status.terminal:
            _notify_if_dead_lettered(job, notify)
            return "already_final"
        if job.attempt < max_attempts:
            queue.send(message.model_copy(update={"enqueued_at": utcnow()}))
            logger.warning("dead-lettered job requeued", job_id=job.job_id, attempt=job.attempt)
            return "requeued"
    return fail_dead_lettered(repo, body, attributes, notify)


def fail_dead_lettered(
    repo: JobsRepository, body: str, attributes: dict[str, str], notify: Callable[[Job], object] | None = None
) -> str:
    """Mark the message's job FAILED; returns what happened (``failed``, ``already_final``, ``unknown``)."""
    ref = job_ref(body, attributes)
    if ref is None:
        logger.error("dead-lettered message names no job; dropped", body_prefix=body[:200])
        return "unknown"
    job_id, tenant = ref
    try:
        failed = repo.transition(job_id, JobStatus.FAILED, tenant=tenant, error=DEAD_LETTER_ERROR)
    except InvalidTransition as exc:
        logger.info("dead-lettered job already final", job_id=job_id, status=exc.current)
        if notify is not None and exc.current == JobStatus.FAILED.value:
            _notify_if_dead_lettered(repo.get(job_id), notify)
        return "already_final"
    except JobNotFound:
        logger.warning("dead-lettered job not found", job_id=job_id)
        return "unknown"
    logger.warning("dead-lettered job failed", job_id=job_id)
    if notify is not None:
        notify(failed)
    return "failed"


def _notify_if_dead_lettered(job: Job, notify: Callable[[Job], object] | None) -> None:
    """A dead letter seen again after its job was failed here (the first try's notice may not have started)."""
    if notify is not None and job.status == JobStatus.FAILED and job.error and job.error.code == DEAD_LETTER_ERROR.code:
        notify(job)
