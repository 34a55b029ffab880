"""Dead-lettered job messages: the job they carry ends FAILED with a reason, once."""

from __future__ import annotations

from aws_lambda_powertools import Logger

from shared.contracts import JobError, JobStatus, QueueMessage
from shared.errors import InvalidTransition, JobNotFound
from shared.jobs import JobsRepository
from shared.queue import parse_body

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


def fail_dead_lettered(repo: JobsRepository, body: str, attributes: dict[str, str]) -> str:
    """Mark the message's job FAILED; returns what happened (``failed``, ``already_final``, ``unknown``)."""
    ref = job_ref(body, attributes)
    if ref is None:
        logger.error("dead-lettered message names no job; dropped", body_prefix=body[:200])
        return "unknown"
    job_id, tenant = ref
    try:
        repo.transition(job_id, JobStatus.FAILED, tenant=tenant, error=DEAD_LETTER_ERROR)
    except InvalidTransition as exc:
        logger.info("dead-lettered job already final", job_id=job_id, status=exc.current)
        return "already_final"
    except JobNotFound:
        logger.warning("dead-lettered job not found", job_id=job_id)
        return "unknown"
    logger.warning("dead-lettered job failed", job_id=job_id)
    return "failed"
