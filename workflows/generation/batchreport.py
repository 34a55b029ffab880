"""What one batch did, its ``batch`` log line (parsed by the tests and ``sdq bench loop``) and its metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from shared.observability import emit_metrics
from workflows.generation.heldmessages import Held

logger = Logger(service="sdq-worker")


@dataclass(frozen=True)
class GpuUse:
    """One job's part of a batch: its share of the GPU seconds of every pipeline call it ran in (by images; the
    jobs of a call share its steps), and the call that made its images (jobs, images)."""

    gpu_s: float
    batch_jobs: int
    batch_images: int


@dataclass
class BatchReport:
    jobs: int = 0
    images: int = 0
    seconds: float = 0.0  # inside the pipeline (generation), claims excluded
    claim_s: float = 0.0
    started_at: float = 0.0  # wall clock (epoch seconds) of the pipeline call's start and end
    ended_at: float = 0.0
    failed: int = 0
    cancelled: int = 0
    released: int = 0  # failed here, but handed back to the queue for another worker (the device is suspect)
    gpu_s_by_job: dict[str, float] = field(default_factory=dict)  # each job's share of the pipeline calls


def log_batch(
    number: int,
    jobs: list[Held],
    report: BatchReport,
    metrics: Metrics,
    extra_fields: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """Log batch ``number`` (1 for the first) and flush its metrics; ``extra_fields`` adds to the log line."""
    now = time.monotonic()
    waits = [now - report.seconds - h.arrived for h in jobs]
    req = jobs[0].request
    ips = report.images / report.seconds if report.seconds > 0 else 0.0
    logger.info(
        "batch",
        batch=number,
        job_ids=[h.job_id for h in jobs],
        jobs=report.jobs,
        images=report.images,
        shape=f"{req.width}x{req.height}x{req.num_inference_steps}/{req.scheduler}",
        seconds=round(report.seconds, 3),
        claim_s=round(report.claim_s, 3),
        started_at=round(report.started_at, 3),
        ended_at=round(report.ended_at, 3),
        images_per_s=round(ips, 3),
        queue_wait_s=round(max(waits), 3) if waits else 0.0,
        failed=report.failed,
        cancelled=report.cancelled,
        released=report.released,
        job_gpu_s={job_id: round(s, 4) for job_id, s in report.gpu_s_by_job.items()},
        **(extra_fields() if extra_fields else {}),
    )
    metrics.add_metric(name="ImagesPerSecond", unit=MetricUnit.CountPerSecond, value=ips)
    metrics.add_metric(name="BatchImages", unit=MetricUnit.Count, value=report.images)
    metrics.add_metric(name="QueueWait", unit=MetricUnit.Seconds, value=max(waits) if waits else 0.0)
    metrics.add_metric(name="JobFailures", unit=MetricUnit.Count, value=report.failed)
    emit_metrics(metrics)
