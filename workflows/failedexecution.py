"""Jobs whose workflow execution failed, timed out or was aborted before it recorded a result.

Every failure inside the state machine is caught and ends in MarkFailed, so an execution that fails outright
means the orchestration itself broke: an error its Catch does not cover (``States.Runtime``), a terminal write
that kept failing past its retries, the execution's own timeout, or an operator's StopExecution. The worker
deleted the job's message when it started the execution, so nothing else would ever finish the job: it would
stay RUNNING or POSTPROCESSING, counted against its tenant's cap, with no webhook.

EventBridge reports each such execution (``Step Functions Execution Status Change``); this marks its job FAILED
(``WORKFLOW_FAILED``), only from RUNNING or POSTPROCESSING at the execution's own attempt, and starts the job's
``job.failed`` webhook through the notice-only path, once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools import Logger

from shared.contracts import Job, JobError, JobStatus
from shared.errors import InvalidTransition, JobNotFound
from shared.jobs import JobsRepository

logger = Logger(service="sdq-failed-execution", child=True)

FAILED_STATUSES = frozenset({"FAILED", "TIMED_OUT", "ABORTED"})
WORKFLOW_FAILED = "WORKFLOW_FAILED"


def workflow_error(status: str, error: str | None) -> JobError:
    ended = {"FAILED": "failed", "TIMED_OUT": "timed out", "ABORTED": "was stopped"}.get(status, status.lower())
    cause = f" ({error})" if error else ""
    return JobError(code=WORKFLOW_FAILED, message=f"The job's workflow {ended}{cause} before it recorded a result.")


def handle_failed_execution(
    repo: JobsRepository, detail: Mapping[str, Any], *, notify: Callable[[Job], object] | None = None
) -> str:
    """Fail the job of one failed execution; returns ``failed``, ``not_a_job_run`` (a notice-only execution or
    an input without a job), ``already_moved_on`` (finished, cancelled, handed back or claimed again) or
    ``unknown`` (no such job).

    ``notify`` starts the failed job's webhook; it may raise (the event is then retried, and the retry, finding
    the job already failed by this handler, starts it again: it must be idempotent).
    """
    status = str(detail.get("status", ""))
    if status not in FAILED_STATUSES:
        return "not_a_job_run"
    try:
        payload = json.loads(detail.get("input") or "{}")
    except ValueError:
        payload = None
    if not isinstance(payload, dict) or payload.get("notify_only"):
        # A webhook notice that failed leaves its job as it is (the job finished before the notice started).
        logger.warning("a notice execution failed", execution=detail.get("executionArn"), status=status)
        return "not_a_job_run"
    job_id, tenant, attempt = payload.get("job_id"), payload.get("tenant"), payload.get("attempt")
    if not isinstance(job_id, str) or not isinstance(tenant, str) or not isinstance(attempt, int):
        logger.error("a failed execution names no job", execution=detail.get("executionArn"))
        return "not_a_job_run"
    error = workflow_error(status, detail.get("error"))
    try:
        job = repo.transition(
            job_id,
            JobStatus.FAILED,
            tenant=tenant,
            sources=[JobStatus.RUNNING, JobStatus.POSTPROCESSING],
            extra_condition=("attempt = :attempt", {":attempt": attempt}),
            error=error,
        )
    except InvalidTransition as exc:
        if notify is not None and exc.current == JobStatus.FAILED.value:
            current = repo.get(job_id)
            if current.error is not None and current.error.code == WORKFLOW_FAILED and current.attempt == attempt:
                notify(current)  # a retried event whose first try failed the job but not its notice
        logger.info("failed execution's job already moved on", job_id=job_id, status=exc.current)
        return "already_moved_on"
    except JobNotFound:
        logger.warning("failed execution's job not found", job_id=job_id)
        return "unknown"
    logger.error("job failed: its workflow execution ended", job_id=job_id, status=status, error=detail.get("error"))
    if notify is not None:
        notify(job)
    return "failed"
