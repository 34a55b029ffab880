"""Shapes a stored job into what clients see: presigned URLs issued fresh, timings, the noise-model note."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta

from shared.contracts import (
    CacheInfo,
    Job,
    JobList,
    JobStatus,
    JobView,
    OutputView,
    ProgressView,
    QueueInfo,
    Timings,
    utcnow,
)
from shared.jobs import Page, cursor_after
from shared.media import MediaStore
from shared.settings import get_settings
from shared.tinymodel import TINY_MODEL_NOTE


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is not None and end is not None:
        return round((end - start).total_seconds(), 3)
    return None


def _cache_info(job: Job) -> CacheInfo:
    """Whether the result cache answers ``job``, and by which job. Under a global cache
    (``SDQ_RESULT_CACHE_SCOPE=global``) that job may be another tenant's, and which tenant's is not on this one's
    record: its id (which also tells when it was submitted) is left out, for every job alike."""
    shared = get_settings().result_cache_scope == "global"
    return CacheInfo(
        hit=job.cache_source is not None,
        source_job=None if shared else job.cache_source,
        joined_job=job.joined_to if job.status == JobStatus.QUEUED and not shared else None,
    )


def job_view(job: Job, media: MediaStore, presign_expiry_s: int, *, queue: QueueInfo | None = None) -> JobView:
    """The public view of ``job``; each call presigns its outputs (and its preview) anew with ``presign_expiry_s``.
    ``queue`` is where a QUEUED job stands, when the caller looked it up."""
    outputs = [
        OutputView(
            index=o.index,
            url=media.presign_get(o.key, presign_expiry_s),
            thumbnail_url=media.presign_get(o.thumbnail_key, presign_expiry_s) if o.thumbnail_key else None,
            content_type=o.content_type,
            width=o.width,
            height=o.height,
            bytes=o.bytes,
            sha256=o.sha256,
        )
        for o in job.outputs
    ]
    return JobView(
        id=job.job_id,
        status=job.status,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        attempt=job.attempt,
        progress=ProgressView(
            # Steps are written at intervals while a job runs, so the last one written may be short of the total.
            step=job.progress.total if job.status == JobStatus.SUCCEEDED else job.progress.step,
            total=job.progress.total,
            preview_url=(
                media.presign_get(job.preview_key, presign_expiry_s)
                if job.preview_key and job.status == JobStatus.RUNNING
                else None
            ),
        ),
        timings=Timings(
            queued_s=_seconds(job.created_at, job.started_at),
            run_s=_seconds(job.started_at, job.finished_at),
            total_s=_seconds(job.created_at, job.finished_at),
        ),
        request=job.request,
        outputs=outputs,
        outputs_expire_at=(utcnow() + timedelta(seconds=presign_expiry_s)) if outputs else None,
        error=job.error,
        model_note=TINY_MODEL_NOTE if job.model_is_noise else None,
        model_revision=job.model_revision,
        lora_revisions=job.lora_revisions,
        metadata=dict(job.request.metadata),
        webhook=job.webhook,
        cache=_cache_info(job),
        queue=queue if job.status == JobStatus.QUEUED else None,
        usage=job.usage,
    )


# The most a page of ``GET /v1/jobs`` may hold, in bytes of JSON with non-ASCII escaped (as the API writes it): well
# inside the 6 MB a Lambda function may answer, whatever the jobs' prompts and metadata hold.
LIST_BODY_BUDGET = 4_000_000


def job_list(page: Page, view: Callable[[Job], JobView], status: JobStatus | None) -> JobList:
    """The views of ``page``'s jobs, cut short where the next one would take the answer past LIST_BODY_BUDGET
    (never before the first): then ``next_cursor`` continues right after the last job shown."""
    views: list[JobView] = []
    used = 0
    for job in page.jobs:
        shown = view(job)
        used += len(json.dumps(shown.model_dump(mode="json"))) + 1
        if views and used > LIST_BODY_BUDGET:
            return JobList(jobs=views, next_cursor=cursor_after(page.jobs[len(views) - 1], status))
        views.append(shown)
    return JobList(jobs=views, next_cursor=page.next_cursor)
