"""Jobs whose workflow execution failed, timed out or was aborted before it recorded a result.

Every failure inside the state machine is caught and ends in MarkFailed, so an execution that fails outright
means the orchestration itself broke: an error its Catch does not cover (``States.Runtime``), a terminal write
that kept failing past its retries, the execution's own timeout, or an operator's StopExecution. The worker
deleted the job's message when it started the execution, so nothing else would ever finish the job: it would
stay RUNNING or POSTPROCESSING, counted against its tenant's cap, with no webhook.

EventBridge reports each such execution (``Step Functions Execution Status Change``); this marks its job FAILED
(``WORKFLOW_FAILED``), only from RUNNING or POSTPROCESSING at the execution's own attempt, and starts the job's
``job.failed`` webhook through the notice-only path, once. A job the execution did finish before it failed (its
terminal write landed, its Notify never ran) gets its webhook the same way. A webhook such an execution (a job run
or a notice alone) left ``retrying`` is recorded ``failed``: no attempt will come, and a redelivery may be asked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger

from shared.contracts import WORKFLOW_SOURCES, Job, JobError, JobErrorCode, JobStatus
from shared.errors import InvalidTransition, JobNotFound
from shared.jobs import Claim, JobsRepository

logger = Logger(service="sdq-failed-execution", child=True)

FAILED_STATUSES = frozenset({"FAILED", "TIMED_OUT", "ABORTED"})


def how_it_ended(status: str) -> str:
    """An execution's end in words: ``failed``, ``timed out``, ``was stopped``."""
    return {"FAILED": "failed", "TIMED_OUT": "timed out", "ABORTED": "was stopped"}.get(status, status.lower())


def workflow_error(status: str, error: str | None) -> JobError:
    cause = f" ({error})" if error else ""
    return JobError(
        code=JobErrorCode.WORKFLOW_FAILED,
        message=f"The job's workflow {how_it_ended(status)}{cause} before it recorded a result.",
    )


def execution_input(detail: Mapping[str, Any]) -> dict[str, Any] | None:
    """The execution's input as an object, or None when the event leaves it out (an input near the size limit)
    or it is not one."""
    try:
        payload = json.loads(detail.get("input") or "null")
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


# A job run's execution is named ``<job id>-<attempt>`` by the worker (notices are ``<job id>-<reason>[-<ulid>]``).
JOB_RUN_NAME = re.compile(r"^(?P<job_id>[0-9A-HJKMNP-TV-Z]{26})-(?P<attempt>[0-9]+)$")
NOTICE_NAME = re.compile(r"^(?P<job_id>[0-9A-HJKMNP-TV-Z]{26})-(?P<reason>[a-z_]+)(-[0-9A-HJKMNP-TV-Z]{26})?$")


@dataclass(frozen=True)
class JobRun:
    job_id: str
    tenant: str
    attempt: int


def job_run(repo: JobsRepository, detail: Mapping[str, Any]) -> JobRun | None:
    """The job run an execution was, from its input, or from its name when the event leaves the input out (an
    input near the size limit); None for a notice or anything else."""
    payload = execution_input(detail)
    if payload is not None:
        if payload.get("notify_only"):
            return None
        job_id, tenant, attempt = payload.get("job_id"), payload.get("tenant"), payload.get("attempt")
        if isinstance(job_id, str) and isinstance(tenant, str) and isinstance(attempt, int):
            return JobRun(job_id, tenant, attempt)
    match = JOB_RUN_NAME.match(str(detail.get("name", "")))
    if match is None:
        return None
    try:
        job = repo.get(match["job_id"])
    except JobNotFound:
        return None
    return JobRun(job.job_id, job.tenant, int(match["attempt"]))


def notice_job(detail: Mapping[str, Any]) -> str | None:
    """The job id of a notice-only execution (``webhooks.start_notice``), from its input or its name; None for
    anything else."""
    payload = execution_input(detail)
    if payload is not None:
        job_id = payload.get("job_id")
        return job_id if payload.get("notify_only") and isinstance(job_id, str) else None
    match = NOTICE_NAME.match(str(detail.get("name", "")))
    return match["job_id"] if match else None


def execution_job(detail: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The job id and tenant an execution names, for its log lines: from its input (a job run's or a notice's),
    else the job id alone from its name (an input the event left out); ``(None, None)`` for anything else."""
    payload = execution_input(detail)
    if payload is not None:
        job_id, tenant = payload.get("job_id"), payload.get("tenant")
        return (job_id if isinstance(job_id, str) else None), (tenant if isinstance(tenant, str) else None)
    match = JOB_RUN_NAME.match(str(detail.get("name", ""))) or NOTICE_NAME.match(str(detail.get("name", "")))
    return (match["job_id"] if match else None), None


def stop_stranded_delivery(repo: JobsRepository, job: Job, status: str, stopped_ms: object = None) -> bool:
    """Record the job's webhook ``failed`` if it is ``retrying``: the execution retrying it ended outright (at
    ``stopped_ms``, the event's ``stopDate``). A record with an attempt after that is another execution's, alive
    (a redelivery, a late duplicate of the event): it is left alone."""
    webhook = job.webhook
    if webhook is None or webhook.state != "retrying":
        return False
    last = webhook.last_attempt_at
    if isinstance(stopped_ms, int | float) and last is not None and last.timestamp() * 1000 > stopped_ms:
        return False
    ended = how_it_ended(status)
    error = f"no further attempt: the delivery's execution {ended}; POST /v1/jobs/{job.job_id}/webhook/redeliver"
    stopped = repo.stop_webhook_retries(job.job_id, attempts=webhook.attempts, error=error)
    if stopped:
        logger.warning("webhook retries stopped with their execution", job_id=job.job_id, status=status)
    return stopped


def handle_failed_execution(
    repo: JobsRepository, detail: Mapping[str, Any], *, notify: Callable[[Job], object] | None = None
) -> str:
    """Fail the job of one failed execution; returns ``failed``, ``not_a_job_run`` (a notice-only execution or
    an execution that names no job), ``already_moved_on`` (finished, cancelled, handed back or claimed again)
    or ``unknown`` (no such job). A notice-only execution, or a job run that had finished its job, stops the
    retries of the webhook it left ``retrying`` (:func:`stop_stranded_delivery`; ``delivery_stopped``).

    ``notify`` starts a finished job's webhook, named after the job and its status so that it is sent once
    (``start_notice(..., once=True)``); it may raise, and the event is then retried. It is called for the job
    failed here, again for a retried event (the first try may have failed before its notice started), and for
    a job this execution finished (SUCCEEDED or FAILED at its attempt) that has no webhook recorded: the write
    landed, then the execution failed before its Notify state.
    """
    status = str(detail.get("status", ""))
    if status not in FAILED_STATUSES:
        return "not_a_job_run"
    notice = notice_job(detail)
    if notice is not None:
        try:
            stopped = stop_stranded_delivery(repo, repo.get(notice), status, detail.get("stopDate"))
        except JobNotFound:
            stopped = False
        return "delivery_stopped" if stopped else "not_a_job_run"
    run = job_run(repo, detail)
    if run is None:
        logger.warning("a failed execution was not a job run", execution=detail.get("executionArn"), status=status)
        return "not_a_job_run"
    error = workflow_error(status, detail.get("error"))
    try:
        job = repo.transition(
            run.job_id,
            JobStatus.FAILED,
            tenant=run.tenant,
            sources=WORKFLOW_SOURCES[JobStatus.FAILED],
            claim=Claim(attempt=run.attempt),
            error=error,
        )
    except InvalidTransition as exc:
        current = repo.get(run.job_id)
        if notify is not None and _finished_here_without_webhook(current, run):
            notify(current)
        elif (
            current.attempt == run.attempt
            and current.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)  # its own outcome: a cancel's is its notice's
            and stop_stranded_delivery(repo, current, status, detail.get("stopDate"))
        ):
            return "delivery_stopped"
        logger.info("failed execution's job already moved on", job_id=run.job_id, status=exc.current)
        return "already_moved_on"
    except JobNotFound:
        logger.warning("failed execution's job not found", job_id=run.job_id)
        return "unknown"
    logger.error(
        "job failed: its workflow execution ended", job_id=run.job_id, status=status, error=detail.get("error")
    )
    if notify is not None:
        notify(job)
    return "failed"


def _finished_here_without_webhook(job: Job, run: JobRun) -> bool:
    if job.attempt != run.attempt or job.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        return False
    failed_here = job.error is not None and job.error.code == JobErrorCode.WORKFLOW_FAILED
    return failed_here or job.webhook is None
