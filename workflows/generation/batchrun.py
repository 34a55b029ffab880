"""One claimed batch on the GPU thread: the inputs of image-to-image and inpainting jobs read first, one pipeline
call, split in halves on an error or out-of-memory until the bad job stands alone, cancelled jobs let go, every
generated or failed job passed to the hand-off.

A job that fails alone is failed, unless the job failed alone before it did too, with no successful call between:
then the worker is as likely at fault as the job (a sticky CUDA error fails every call), and the job goes back to the
queue with its attempt counted, for another worker (failed once it has used its attempts). After
``max_failures_in_a_row`` such jobs the runner counts its device faulty: the batch's other jobs go back unrun, and
the worker stops and exits to be replaced (``faulty``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Protocol, runtime_checkable

from aws_lambda_powertools import Logger
from PIL.Image import Image

from shared.contracts import JobErrorCode
from shared.errors import PermanentError
from shared.media import MediaStore
from shared.settings import get_settings
from workflows.generation.batchreport import BatchReport, GpuUse
from workflows.generation.claims import ClaimedBatch
from workflows.generation.heldmessages import Held
from workflows.generation.inputs import InputReader, InputUnavailable, JobInputs
from workflows.generation.loras import LoraUnavailable
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


@runtime_checkable
class WarmsUp(Protocol):
    """A generator that compiles its shapes ahead of their first batch
    (:class:`~workflows.generation.pipeline.PipelineRunner`)."""

    def warm_next(self) -> bool:
        """Compile (and record) the next shape no call has run yet; False when none is left."""
        ...


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

    def fail_later(self, held: Held, code: JobErrorCode, message: str) -> None: ...

    def drop_later(self, held: Held) -> None: ...

    def drop(self, held: Held) -> None: ...

    def release_later(self, held: Held, delay_s: int = 0) -> None: ...


@runtime_checkable
class HasMedia(Protocol):
    """A hand-off that names its media bucket (:class:`~workflows.generation.handoff.HandOff`): jobs' stored inputs
    are read from it."""

    @property
    def media(self) -> MediaStore: ...


# A job's own failures: a permanent error of its request (a LoRA not served here), a request the pipeline refuses.
# The others may be the device's: a CUDA error, an error of the runtime, and out of memory alone too (requests are
# bounded and the batch limit is sized from the card's memory at start, so a lone job that no longer fits says that
# the card has less free memory than it had).
JOBS_OWN_ERRORS: tuple[type[Exception], ...] = (PermanentError, ValueError)
# A batch handed back because its LoRA could not be fetched comes back after this many seconds per attempt used.
LORA_RETRY_DELAY_S = 30


class BatchRunner:
    def __init__(
        self,
        generator: Generator,
        progress: ProgressRecorder,
        handoff: BatchHandOff,
        hard_stop: threading.Event,
        *,
        inputs: InputReader | None = None,
        max_failures_in_a_row: int | None = None,
        max_attempts: int | None = None,
    ) -> None:
        """``inputs`` reads jobs' stored inputs (default: from the hand-off's media bucket, under the configured
        outputs prefix; without either, image-to-image and inpainting jobs fail ``MODE_NOT_SERVED``).
        ``max_failures_in_a_row``: jobs failed alone with no successful call between, after which the device is
        counted faulty (default: ``SDQ_MAX_CONSECUTIVE_FAILURES``); ``max_attempts``: a job handed back for another
        worker is failed instead once it has used this many claims (default: ``SDQ_MAX_GENERATION_ATTEMPTS``)."""
        settings = get_settings()
        if inputs is None and isinstance(handoff, HasMedia):
            inputs = InputReader(handoff.media, settings.outputs_prefix)
        self._inputs = inputs
        self._gen = generator
        self._progress = progress
        self._handoff = handoff
        self._hard_stop = hard_stop
        self.gpu_seconds = 0.0  # inside pipeline calls, failed ones included
        if max_failures_in_a_row is None:
            max_failures_in_a_row = settings.worker.max_consecutive_failures
        self._max_failures_in_a_row = max_failures_in_a_row
        self._max_attempts = max_attempts if max_attempts is not None else settings.max_generation_attempts
        # Jobs failed alone since the last successful pipeline call (a split's own failed calls are not counted:
        # they are the isolation of a job that may be at fault).
        self.failed_in_a_row = 0
        self.faulty = False  # the device failed job after job: nothing more runs here

    def run(self, claimed: ClaimedBatch) -> BatchReport | None:
        """Generate a claimed batch and hand its jobs off (on the finisher threads); None when no claim was won."""
        jobs = claimed.jobs
        if not jobs:
            return None
        report = BatchReport(jobs=len(jobs), images=sum(h.request.num_images for h in jobs))
        report.claim_s = claimed.seconds
        started = time.monotonic()
        report.started_at = time.time()
        for h in jobs:
            h.generating_at = started
        inputs = self._read_inputs(jobs, report)
        self._generate([h for h in jobs if h.request.mode == "text" or h.job_id in inputs], report, inputs)
        report.seconds = time.monotonic() - started
        report.ended_at = report.started_at + report.seconds
        return report

    def _read_inputs(self, jobs: list[Held], report: BatchReport) -> dict[str, JobInputs]:
        """The stored inputs of the image-to-image and inpainting jobs among ``jobs``, read at once, by job id; a
        job whose inputs cannot be read is failed here with the code of :mod:`~workflows.generation.inputs`."""
        wanting = [h for h in jobs if h.request.mode != "text"]
        if not wanting:
            return {}
        if self._inputs is None:
            for h in wanting:
                report.failed += 1
                self._handoff.fail_later(
                    h, JobErrorCode.MODE_NOT_SERVED, f"This worker cannot read {h.request.mode} jobs' inputs."
                )
            return {}
        read = self._inputs.read_all([(h.tenant, h.job_id, h.request) for h in wanting])
        found: dict[str, JobInputs] = {}
        for h, got in zip(wanting, read, strict=True):
            if isinstance(got, InputUnavailable):
                logger.error("job inputs unusable", job_id=h.job_id, code=got.code, error=str(got))
                report.failed += 1
                self._handoff.fail_later(h, got.code, str(got))
            else:
                found[h.job_id] = got
        return found

    def _generate(self, jobs: list[Held], report: BatchReport, inputs: dict[str, JobInputs]) -> None:
        """One pipeline call for ``jobs`` (with ``inputs``, by job id, in the image modes); on OOM or an error,
        split and retry to isolate the bad job."""
        live = []
        for h in jobs:
            if h.dropped:  # cancelled or taken over since the call that split them: let go, never generated
                report.cancelled += 1
                self._handoff.drop_later(h)
            else:
                live.append(h)
        if not live:
            return
        if self.faulty:
            for h in live:  # never run: another worker runs them (the claim stays counted)
                report.released += 1
                self._handoff.release_later(h)
            return
        req = live[0].request
        # Batches never mix models, modes, strengths or LoRA sets (the batch key holds them): the runner refuses a
        # model it has not loaded.
        shape = BatchShape(
            req.width,
            req.height,
            req.num_inference_steps,
            float(req.guidance_scale),
            req.scheduler,
            req.model,
            mode=req.mode,
            strength=req.strength,
            loras=req.lora_set,
        )
        work = [_image_job(h, inputs.get(h.job_id)) for h in live]
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
            _wait(progress.close())  # the call's last write, progress or preview: it may find a job cancelled
            oom = isinstance(exc, GenerationOOM)
            # Jobs cancelled (or taken over) during the failed call are let go now: the retries below skip them,
            # and nothing else would delete or forget their messages.
            for h in live:
                if h.dropped:
                    report.cancelled += 1
                    self._handoff.drop_later(h)
            called, live = live, [h for h in live if not h.dropped]
            if not live:
                return
            if isinstance(exc, LoraUnavailable):
                # The batch's LoRA set could not be fetched now (S3 throttling, a dropped connection): neither a
                # job's fault nor the device's, and a split would only fetch again. Every job goes back for a later
                # try, attempt counted; one on its last claim fails.
                logger.warning("LoRA not fetched; handing the batch back", jobs=len(live), error=str(exc)[:500])
                for h in live:
                    # Not at once: this worker (and S3) would likely take it back into the same outage.
                    delay = LORA_RETRY_DELAY_S * (h.job.attempt if h.job is not None else 1)
                    self._hand_back_or_fail(h, JobErrorCode.GENERATION_FAILED, exc, report, delay_s=delay)
                return
            if len(called) > 1:  # not yet any one job's fault, even with one job left: retry the rest in halves
                logger.warning("batch failed; splitting", jobs=len(live), oom=oom, error=type(exc).__name__)
                half = max(1, len(live) // 2)
                self._generate(live[:half], report, inputs)
                self._generate(live[half:], report, inputs)
                return
            self._failed_alone(live[0], exc, report)
            return
        self.failed_in_a_row = 0
        self._spent(live, time.monotonic() - t0, report)
        # The last progress write may still be in flight: the finishers wait for it (it can reveal a cancel),
        # the GPU thread does not.
        last_write = progress.close()
        report.cancelled += sum(1 for h in live if h.dropped)
        batch_images = sum(h.request.num_images for h in live)
        for h in live:
            use = GpuUse(report.gpu_s_by_job[h.job_id], len(live), batch_images)
            self._handoff.complete_later(last_write, h, images[h.job_id], use=use)

    def _hand_back_or_fail(
        self, held: Held, code: JobErrorCode, exc: Exception, report: BatchReport, *, delay_s: int = 0
    ) -> None:
        """Send ``held`` back to the queue for another try after ``delay_s``, attempt counted; fail it if that was
        its last."""
        assert held.job is not None
        if held.job.attempt < self._max_attempts:
            report.released += 1
            self._handoff.release_later(held, delay_s)
        else:
            self._fail(held, code, exc, report)

    def _fail(self, held: Held, code: JobErrorCode, exc: Exception, report: BatchReport) -> None:
        logger.error("job failed in generation", job_id=held.job_id, code=code, error=str(exc)[:500])
        report.failed += 1
        self._handoff.fail_later(held, code, f"{type(exc).__name__}: {exc}"[:1000])

    def _failed_alone(self, held: Held, exc: Exception, report: BatchReport) -> None:
        """A job failed a call of its own: the job's fault, unless the job failed alone before it did too (no
        successful call between), when the worker is as likely at fault: then it goes back to the queue for another
        worker, attempt counted (failed once its attempts are used). Enough of those in a row: the device is faulty."""
        code = JobErrorCode.OUT_OF_MEMORY if isinstance(exc, GenerationOOM) else JobErrorCode.GENERATION_FAILED
        if isinstance(exc, JOBS_OWN_ERRORS):
            # Says nothing of the device (a LoRA this worker cannot serve, inputs the job lacks): the job fails,
            # and neither counts towards a faulty device nor clears the count.
            self._fail(held, code, exc, report)
            return
        self.failed_in_a_row += 1
        if self.failed_in_a_row > 1:
            logger.warning(
                "job failed after another one did; handing it back for another worker",
                job_id=held.job_id,
                code=code,
                failed_in_a_row=self.failed_in_a_row,
                error=str(exc)[:500],
            )
            self._hand_back_or_fail(held, code, exc, report)
        else:
            self._fail(held, code, exc, report)
        if self.failed_in_a_row >= self._max_failures_in_a_row:
            logger.error("jobs failed one after another: the device is faulty", failed_in_a_row=self.failed_in_a_row)
            self.faulty = True

    def _spent(self, jobs: list[Held], seconds: float, report: BatchReport) -> None:
        """``seconds`` of one pipeline call over ``jobs``, just ended, shared by their images (the steps are the
        batch's)."""
        self.gpu_seconds += seconds
        images = sum(h.request.num_images for h in jobs) or 1
        ended = time.monotonic()
        for h in jobs:
            h.generated_at = ended
            report.gpu_s_by_job[h.job_id] = (
                report.gpu_s_by_job.get(h.job_id, 0.0) + seconds * h.request.num_images / images
            )


def _image_job(held: Held, inputs: JobInputs | None) -> ImageJob:
    req = held.request
    image, mask = (inputs.image, inputs.mask) if inputs is not None else (None, None)
    return ImageJob(held.job_id, req.prompt, req.negative_prompt, req.seed or 0, req.num_images, image, mask)


def _wait(future: Future[None] | None) -> None:
    if future is not None:
        future.result()
