"""One claimed batch on the GPU thread: one pipeline call, split in halves on an error or out-of-memory until the
bad job stands alone, cancelled jobs let go, every generated or failed job passed to the hand-off."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Protocol, runtime_checkable

from aws_lambda_powertools import Logger
from PIL.Image import Image

from shared.tracing import segment, subsegment
from workflows.generation.batchreport import BatchReport, GpuUse
from workflows.generation.claims import ClaimedBatch
from workflows.generation.heldmessages import Held
from workflows.generation.pipeline import BatchShape, GenerationCancelled, GenerationOOM, ImageJob
from workflows.generation.progress import ProgressRecorder

logger = Logger(service="sdq-worker")


class Generator(Protocol):
    """What the loop needs from a pipeline runner (:class:`workflows.generation.pipeline.PipelineRunner`)."""

    @property
    def model_name(self) -> str: ...

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
    ) -> dict[str, list[Image]]: ...


@runtime_checkable
class ServesModels(Protocol):
    """A generator that names the models it has loaded (:class:`~workflows.generation.pipeline.PipelineRunner`)."""

    @property
    def models(self) -> frozenset[str]: ...


# The error code of a job whose mode (image-to-image, inpainting) no pipeline of this worker runs.
MODE_NOT_SERVED = "MODE_NOT_SERVED"


def served_models(generator: Generator) -> frozenset[str]:
    """The model ids ``generator`` can generate for: its ``models``, else its one ``model_name``."""
    if isinstance(generator, ServesModels):
        return generator.models
    return frozenset({generator.model_name})


class BatchHandOff(Protocol):
    """Where the batch run passes its jobs (:class:`workflows.generation.handoff.HandOff`)."""

    def complete_later(
        self, last_write: Future[None] | None, held: Held, images: list[Image], use: GpuUse | None = None
    ) -> None: ...

    def fail_later(self, held: Held, code: str, message: str) -> None: ...

    def drop_later(self, held: Held) -> None: ...

    def drop(self, held: Held) -> None: ...


class BatchRunner:
    def __init__(
        self,
        generator: Generator,
        progress: ProgressRecorder,
        handoff: BatchHandOff,
        hard_stop: threading.Event,
        *,
        xray: bool = False,
    ) -> None:
        self._gen = generator
        self._progress = progress
        self._handoff = handoff
        self._hard_stop = hard_stop
        self._xray = xray
        self.gpu_seconds = 0.0  # inside pipeline calls, failed ones included

    def run(self, claimed: ClaimedBatch) -> BatchReport | None:
        """Generate a claimed batch and hand its jobs off (on the finisher threads); None when no claim was won."""
        jobs = claimed.jobs
        if not jobs:
            return None
        report = BatchReport(jobs=len(jobs), images=sum(h.request.num_images for h in jobs))
        report.claim_s = claimed.seconds
        started = time.monotonic()
        report.started_at = time.time()
        with segment("sdq-worker-batch", enabled=self._xray), subsegment("generate", enabled=self._xray):
            self._generate(jobs, report)
        report.seconds = time.monotonic() - started
        report.ended_at = report.started_at + report.seconds
        return report

    def _generate(self, jobs: list[Held], report: BatchReport) -> None:
        """One pipeline call for ``jobs``; on OOM or an error, split and retry to isolate the bad job."""
        live = [h for h in jobs if not h.dropped]
        if not live:
            return
        req = live[0].request
        if req.mode != "text":
            # Batches never mix modes (the batch key holds it). Image-to-image and inpainting inputs are checked and
            # stored at submit, but this worker has no pipeline for them yet: fail the jobs, never run them as text.
            for h in live:
                report.failed += 1
                self._handoff.fail_later(h, MODE_NOT_SERVED, f"This worker does not run {req.mode} jobs yet.")
            return
        # Batches never mix models (the batch key holds it): the runner refuses one it has not loaded.
        shape = BatchShape(
            req.width, req.height, req.num_inference_steps, float(req.guidance_scale), req.scheduler, req.model
        )
        work = [
            ImageJob(h.job_id, h.request.prompt, h.request.negative_prompt, h.request.seed or 0, h.request.num_images)
            for h in live
        ]
        progress = self._progress.writer(live)
        t0 = time.monotonic()
        try:
            images = self._gen.generate(work, shape, progress)
        except GenerationCancelled:
            self._spent(live, time.monotonic() - t0, report)
            _wait(progress.close())
            if self._hard_stop.is_set():
                return
            for h in live:
                if h.dropped:
                    report.cancelled += 1
                    self._handoff.drop(h)
            return
        except Exception as exc:
            self._spent(live, time.monotonic() - t0, report)
            _wait(progress.close())
            oom = isinstance(exc, GenerationOOM)
            # Jobs cancelled (or taken over) during the failed call are let go now: the retries below skip them,
            # and nothing else would delete or forget their messages.
            for h in live:
                if h.dropped:
                    report.cancelled += 1
                    self._handoff.drop_later(h)
            live = [h for h in live if not h.dropped]
            if not live:
                return
            if len(live) > 1:
                logger.warning("batch failed; splitting", jobs=len(live), oom=oom, error=type(exc).__name__)
                half = len(live) // 2
                self._generate(live[:half], report)
                self._generate(live[half:], report)
                return
            code = "OUT_OF_MEMORY" if oom else "GENERATION_FAILED"
            logger.error("job failed in generation", job_id=live[0].job_id, code=code, error=str(exc)[:500])
            report.failed += 1
            self._handoff.fail_later(live[0], code, f"{type(exc).__name__}: {exc}"[:1000])
            return
        self._spent(live, time.monotonic() - t0, report)
        # The last progress write may still be in flight: the finishers wait for it (it can reveal a cancel),
        # the GPU thread does not.
        last_write = progress.close()
        report.cancelled += sum(1 for h in live if h.dropped)
        batch_images = sum(h.request.num_images for h in live)
        for h in live:
            use = GpuUse(report.gpu_s_by_job[h.job_id], len(live), batch_images)
            self._handoff.complete_later(last_write, h, images[h.job_id], use=use)

    def _spent(self, jobs: list[Held], seconds: float, report: BatchReport) -> None:
        """``seconds`` of one pipeline call over ``jobs``, shared by their images (the steps are the batch's)."""
        self.gpu_seconds += seconds
        images = sum(h.request.num_images for h in jobs) or 1
        for h in jobs:
            report.gpu_s_by_job[h.job_id] = (
                report.gpu_s_by_job.get(h.job_id, 0.0) + seconds * h.request.num_images / images
            )


def _wait(future: Future[None] | None) -> None:
    if future is not None:
        future.result()
