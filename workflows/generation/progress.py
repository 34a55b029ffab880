"""A batch's progress: step/total written to the table off the GPU thread, at most once per interval, and the
pipeline call stopped when every job in it was cancelled (or taken over) or the worker must stop now.

With :class:`~workflows.generation.progressevents.ProgressEvents` the writer also takes previews (the pipeline
hands it each job's latents every few steps: a device-side shrink and an asynchronous copy, finished here on a
writer thread) and offers ``job.started`` / ``job.progress`` webhooks to its sender thread."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Executor, Future

from aws_lambda_powertools import Logger

from shared.jobs import JobsRepository
from workflows.generation.heldmessages import AwsError, Held
from workflows.generation.pipeline import GenerationCancelled
from workflows.generation.previews import Captured
from workflows.generation.progressevents import PREVIEW_EVERY_STEPS, ProgressEvents

logger = Logger(service="sdq-worker")


class ProgressRecorder:
    """Writes progress for the jobs of a batch: one conditional write per job, issued together on the table pool
    (from a writer thread, so the GPU thread never waits for them)."""

    def __init__(
        self,
        repo: JobsRepository,
        *,
        worker_id: str,
        interval_s: float,
        hard_stop: threading.Event,
        writers: Executor,
        table_pool: Executor,
        events: ProgressEvents | None = None,
    ) -> None:
        self._repo = repo
        self.events = events
        self._worker_id = worker_id
        self.interval_s = interval_s
        self._hard_stop = hard_stop
        self._writers = writers
        self._table_pool = table_pool

    def writer(self, jobs: list[Held]) -> ProgressWriter:
        """The step callback for one pipeline call over ``jobs`` (whose generation starts now)."""
        if self.events is not None:
            for h in jobs:
                # Once: a batch split after an error runs its jobs again, already past their start.
                if h.job is not None and not h.dropped and h.job.progress.step == 0:
                    self.events.started(h.job)
        return ProgressWriter(self, jobs)

    def must_stop_now(self) -> bool:
        return self._hard_stop.is_set()

    def write_later(self, jobs: list[Held], step: int, total: int) -> Future[None]:
        """Write step/total for the jobs still ours; a job the write finds no longer this worker's is dropped."""
        return self._writers.submit(self._write, jobs, step, total)

    def _write(self, jobs: list[Held], step: int, total: int) -> None:
        live = [h for h in jobs if not h.dropped and h.job is not None]
        list(self._table_pool.map(lambda h: self._write_one(h, step, total), live))

    def _write_one(self, h: Held, step: int, total: int) -> None:
        assert h.job is not None
        try:
            still_ours = self._repo.record_progress(h.job_id, worker_id=self._worker_id, step=step, total=total)
        except AwsError as exc:
            logger.warning("progress write failed", job_id=h.job_id, error=str(exc))
            return
        if still_ours:
            h.job.progress.step, h.job.progress.total = step, total
            if self.events is not None:
                self.events.progressed(h.job)
        else:
            logger.info("job cancelled or taken over during generation; dropping it", job_id=h.job_id)
            h.dropped = True

    def preview_later(self, jobs: list[Held], step: int, total: int, latents: Captured) -> Future[None]:
        """Encode, upload and record each job's preview on a writer thread."""
        return self._writers.submit(self._preview, jobs, step, total, latents)

    def _preview(self, jobs: list[Held], step: int, total: int, latents: Captured) -> None:
        assert self.events is not None
        by_key = {h.job_id: h for h in jobs}
        for row, key in enumerate(latents.keys):
            h = by_key.get(key)
            if h is None or h.dropped or h.job is None:
                continue
            try:
                ours = self.events.store_preview(h.job, latents, row, worker_id=self._worker_id, step=step, total=total)
            except AwsError as exc:
                logger.warning("preview not stored", job_id=h.job_id, error=str(exc))
                continue
            except Exception:
                logger.exception("preview failed", job_id=h.job_id)
                continue
            if not ours:
                logger.info("job cancelled or taken over during generation; dropping it", job_id=h.job_id)
                h.dropped = True


class ProgressWriter:
    """The pipeline's step callback: writes step/total at most once per interval (off the GPU thread) and
    stops the call when every job in it was cancelled or the worker must stop now."""

    def __init__(self, recorder: ProgressRecorder, jobs: list[Held]) -> None:
        self._recorder = recorder
        self._jobs = jobs
        self._last = 0.0
        self._pending: Future[None] | None = None
        self._last_preview = 0.0
        self._last_preview_step = 0
        self._preview: Future[None] | None = None
        self._lane: Future[None] | None = None  # the latest of the two: it started after the other was done

    def __call__(self, step: int, total: int) -> None:
        if self._recorder.must_stop_now():
            raise GenerationCancelled()
        now = time.monotonic()
        # One lane: a progress write and a preview both record the step, on writer threads that run side by side,
        # so neither starts while the other is in flight (a preview of step 10 landing after the write of step 12
        # would take the job's progress backwards).
        if now - self._last >= self._recorder.interval_s and _idle(self._pending) and _idle(self._preview):
            self._last = now
            self._pending = self._lane = self._recorder.write_later(self._jobs, step, total)
        if all(h.dropped for h in self._jobs):
            raise GenerationCancelled()

    def wants_latents(self, step: int, total: int) -> bool:
        """A preview every few steps and at most once per preview interval, while the previous one is not still
        being made; none at the last step (the image itself is next)."""
        events = self._recorder.events
        if events is None or step >= total or step - self._last_preview_step < PREVIEW_EVERY_STEPS:
            return False
        if not (_idle(self._preview) and _idle(self._pending)):  # one lane (see __call__)
            return False
        return time.monotonic() - self._last_preview >= events.preview_interval_s

    def take_latents(self, step: int, total: int, latents: Captured) -> None:
        self._last_preview, self._last_preview_step = time.monotonic(), step
        self._preview = self._lane = self._recorder.preview_later(self._jobs, step, total, latents)

    def close(self) -> Future[None] | None:
        """The last write of the call, a progress write or a preview, if any (not waited for here): either can find
        a job cancelled or taken over, and one lane means the others were done before it started."""
        return self._lane


def _idle(work: Future[None] | None) -> bool:
    return work is None or work.done()
