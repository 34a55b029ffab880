"""The metrics of finished jobs: ``JobsFinished`` (one per job) and ``JobLatency`` (submit to finished, seconds).

One shape, written here: namespace ``sdq``, dimensions ``service=jobs`` and ``status`` (SUCCEEDED, FAILED or
CANCELLED), one EMF line per finished job, so the job error rate alarm (FAILED over SUCCEEDED + FAILED) and the
latency alarm count every job once, whichever writer finished it. Two kinds of writer emit it:

- the state machine's own terminal writes (MarkSucceeded, MarkFailed), through its CountSucceeded and
  CountFailed states (:func:`record_marked`, called by the Postprocess function);
- every other terminal write (the DLQ, failed-execution and requeue handlers, a cancel, a job expired in the
  queue, a job answered by the result cache), made through :class:`MeteredJobsRepository`.

Every terminal write is one conditional write that lands once, so emitting after it lands counts each job once.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from shared.contracts import Job, JobStatus
from shared.jobs import JobsRepository
from shared.observability import emit_metrics

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

NAMESPACE = "sdq"
SERVICE = "jobs"
FINISHED_METRIC = "JobsFinished"
LATENCY_METRIC = "JobLatency"


def record_finished(
    job_id: str,
    status: JobStatus,
    created_at: datetime,
    finished_at: datetime,
    *,
    tenant: str | None = None,
    error_code: str | None = None,
) -> None:
    """Emit one finished job: an EMF line on stdout, which CloudWatch Logs turns into the metrics, with the job's
    id, its tenant and a failure's error code as properties (not dimensions), to find and group jobs by in the
    logs."""
    if not status.terminal:
        raise ValueError(f"{status.value} is not a finished status")
    metrics = EphemeralMetrics(namespace=NAMESPACE, service=SERVICE)
    metrics.add_dimension(name="status", value=status.value)
    metrics.add_metadata(key="job_id", value=job_id)
    if tenant:
        metrics.add_metadata(key="tenant", value=tenant)
    if error_code:
        metrics.add_metadata(key="error_code", value=error_code)
    metrics.add_metric(name=FINISHED_METRIC, unit=MetricUnit.Count, value=1)
    latency = max(0.0, (finished_at - created_at).total_seconds())
    metrics.add_metric(name=LATENCY_METRIC, unit=MetricUnit.Seconds, value=latency)
    emit_metrics(metrics)


def record_job(job: Job) -> None:
    """:func:`record_finished` for a job as written (its ``finished_at`` set by the terminal write)."""
    if job.status.terminal and job.finished_at is not None:
        record_finished(
            job.job_id,
            job.status,
            job.created_at,
            job.finished_at,
            tenant=job.tenant,
            error_code=job.error.code if job.error is not None else None,
        )


def record_marked(event: Mapping[str, Any]) -> dict[str, str]:
    """The state machine's CountSucceeded/CountFailed: ``{"job_id", "status", "created_at", "finished_at"}`` taken
    from the item MarkSucceeded or MarkFailed wrote (times as ISO 8601 strings), and ``tenant`` and ``error_code``
    where the payload passes them."""
    status = JobStatus(str(event["status"]))
    tenant, error_code = event.get("tenant"), event.get("error_code")
    record_finished(
        str(event["job_id"]),
        status,
        datetime.fromisoformat(str(event["created_at"]).replace("Z", "+00:00")),
        datetime.fromisoformat(str(event["finished_at"]).replace("Z", "+00:00")),
        tenant=str(tenant) if tenant else None,
        error_code=str(error_code) if error_code else None,
    )
    return {"counted": status.value}


class MeteredJobsRepository(JobsRepository):
    """The jobs repository of the Lambdas and the worker: every terminal write it makes emits the job's metrics
    once it has landed."""

    def __init__(self, dynamodb: DynamoDBClient, table_name: str) -> None:
        super().__init__(dynamodb, table_name, on_finished=record_job)
