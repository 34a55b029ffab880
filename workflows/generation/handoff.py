"""The hand-off, on the finisher threads (overlapping the next batch): staging PNGs uploaded, the execution started
with a :class:`WorkflowInput`, the job marked POSTPROCESSING, its message deleted; or the failure handed off, or a
job no longer this worker's let go."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, wait
from contextlib import contextmanager
from typing import Any

from aws_lambda_powertools import Logger
from PIL.Image import Image

from shared.contracts import JobErrorCode, JobStatus, Usage, WorkerError, WorkflowInput
from shared.errors import InvalidTransition, JobNotFound
from shared.jobs import Claim, JobsRepository
from shared.media import MediaStore
from shared.observability import job_fields
from shared.orchestration import Orchestrator
from shared.pricing import GpuPrice, gpu_price
from shared.settings import get_settings
from shared.tracing import recorded, segment, subsegment
from workflows.generation.batchreport import GpuUse
from workflows.generation.encoding import PngEncoder
from workflows.generation.heldmessages import AwsError, Held, HeldMessages

logger = Logger(service="sdq-worker")

# A start that fails after the upload is retried with the uploaded images (the execution's name makes a repeated
# start a no-op), 1 + 2 + 4 + 8 s apart, while the heartbeat keeps the lease; only then does the job run again.
START_ATTEMPTS = 5
START_BACKOFF_S = 1.0
# The worker's X-Ray segment of each job it hands off (shared/tracing.py).
WORKER_SEGMENT = "sdq-worker"


class HandOff:
    def __init__(
        self,
        held: HeldMessages,
        repo: JobsRepository,
        media: MediaStore,
        orchestrator: Orchestrator,
        encoder: PngEncoder,
        finishers: Executor,
        *,
        staging_prefix: str,
        worker_id: str,
        model_name: str,
        xray: bool = False,
        price: GpuPrice | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``price`` turns a job's GPU seconds into its estimated cost (default: the configured instance type's);
        ``sleep`` waits between the attempts of a failed StartExecution."""
        self._sleep = sleep
        self._price = price or gpu_price(get_settings().gpu_instance_type)
        self._held = held
        self._repo = repo
        self._media = media
        self._sfn = orchestrator
        self._encoder = encoder
        self._finishers = finishers
        self._staging = staging_prefix
        self._worker_id = worker_id
        self._model_name = model_name
        self._xray = xray
        self._in_flight: list[Future[None]] = []  # submitted from the GPU thread only

    @property
    def media(self) -> MediaStore:
        """The media bucket it uploads to; the batch run reads jobs' stored inputs from it too."""
        return self._media

    # -- submitted from the GPU thread ---------------------------------------------------------------

    def complete_later(
        self, last_write: Future[None] | None, held: Held, images: list[Image], use: GpuUse | None = None
    ) -> None:
        """Hand off a generated job once its last progress write is done (it can reveal a cancel); ``use`` is its
        part of the batch, recorded as the job's ``usage``."""
        self._submit(self._complete, last_write, held, images, use)

    def fail_later(self, held: Held, code: JobErrorCode, message: str) -> None:
        self._submit(self.fail, held, code, message)

    def drop_later(self, held: Held) -> None:
        self._submit(self.drop, held)

    def release_later(self, held: Held, delay_s: int = 0) -> None:
        self._submit(self.release, held, delay_s)

    def wait(self) -> None:
        """Wait for every hand-off submitted so far (a warm stop). One that raised was logged on its thread; its
        message is still held, and goes with the rest when the worker lets go."""
        wait(list(self._in_flight))

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        future = self._finishers.submit(_logging_errors, fn, *args)
        self._in_flight = [f for f in self._in_flight if not f.done()] + [future]

    # -- on the finisher threads ------------------------------------------------------------------------

    def _complete(
        self, last_write: Future[None] | None, held: Held, images: list[Image], use: GpuUse | None = None
    ) -> None:
        if last_write is not None:
            try:
                last_write.result()
            except Exception:
                logger.exception("progress write failed; handing off anyway", job_id=held.job_id)
        if held.dropped:
            self.drop(held)
        else:
            self._hand_off(held, images, use)

    def drop(self, held: Held) -> None:
        """Let go of a job this worker no longer owns. A finished, cancelled or handed-off job's message is
        deleted; a job another worker took over keeps its message (that worker may die, and the message is the
        only way back), so it is only forgotten here; a job handed back to the queue (QUEUED again) needs its
        message to run, so it is made visible now."""
        try:
            current = self._repo.get(held.job_id).status
        except JobNotFound:
            current = None
        except AwsError as exc:
            logger.warning("could not read a dropped job; leaving its message", job_id=held.job_id, error=str(exc))
            self._held.forget(held)
            return
        if current == JobStatus.RUNNING:
            logger.info("job taken over by another worker; keeping its message", job_id=held.job_id)
            self._held.forget(held)
        elif current == JobStatus.QUEUED:
            logger.info("job queued again; its message goes back", job_id=held.job_id)
            self._held.let_go([held], 0)
        else:
            self._held.finish(held)

    def release(self, held: Held, delay_s: int = 0) -> None:
        """Hand a claimed job back to the queue for another worker, its attempt counted (this worker's device is
        suspect, or a LoRA cannot be fetched now): QUEUED again at this claim, message visible after ``delay_s``
        seconds (0: now). A job no longer this claim's is dropped; when
        the write cannot be made, the message is let go all the same and the next claim waits for the lease."""
        assert held.job is not None
        claim = Claim(attempt=held.job.attempt, worker_id=self._worker_id)
        try:
            self._repo.transition(
                held.job_id, JobStatus.QUEUED, tenant=held.tenant, sources=[JobStatus.RUNNING], claim=claim
            )
        except (InvalidTransition, JobNotFound):
            self.drop(held)  # cancelled or taken over meanwhile
            return
        except AwsError as exc:
            logger.warning("could not hand the job back; its lease will lapse", job_id=held.job_id, error=str(exc))
        logger.info("job handed back for another worker", job_id=held.job_id, attempt=held.job.attempt)
        self._held.let_go([held], delay_s)

    def _hand_off(self, held: Held, images: list[Image], use: GpuUse | None = None) -> None:
        assert held.job is not None
        attempt = held.job.attempt
        keys = []
        try:
            # The job's trace, continued from its message: the execution started below joins it.
            with self._job_segment(held, use):
                with subsegment("upload", enabled=self._xray):
                    for i, image in enumerate(images):
                        key = f"{self._staging}{held.job_id}/{attempt}/{i}.png"
                        self._media.put(key, self._encoder.encode(image), "image/png")
                        keys.append(key)
                self._start(
                    held,
                    WorkflowInput.generated(
                        held.job,
                        staging_keys=keys,
                        worker_id=self._worker_id,
                        model=self._model_name,
                        has_callback=held.request.wants_webhook("completed"),
                    ),
                )
        except Exception as exc:
            # Leave the message to reappear after its visibility timeout; the lease lapses with it and
            # the next receiver re-runs the job (attempt + 1).
            logger.exception("hand-off failed; job will be retried", job_id=held.job_id, error=str(exc))
            self._held.forget(held)
            return
        if self._mark_handed_off(held, use):
            logger.info("job handed off", job_id=held.job_id, tenant=held.tenant, attempt=attempt, images=len(keys))
            self._held.finish(held)
        else:
            # The job stopped being this claim's while it generated (its lease lapsed and another worker took it
            # over, perhaps handing it back): the execution just started settles nothing, so the message is kept
            # or shown again as a drop would.
            self.drop(held)

    @contextmanager
    def _job_segment(self, held: Held, use: GpuUse | None = None) -> Iterator[None]:
        """The worker's segment of the job (when tracing is on), in the job's trace (its message's), from the
        message's arrival to the end of its hand-off: annotated with the job (``job_id``, ``tenant``), its stages
        here recorded as subsegments, ``generate`` annotated with ``use`` (its GPU share). The calls inside carry
        it."""
        wall = time.time() - time.monotonic()  # a monotonic time plus this is its epoch time
        with segment(
            WORKER_SEGMENT,
            enabled=self._xray,
            trace_header=held.received.trace_header,
            started_at=held.arrived + wall,
            annotations=job_fields(held.job_id, held.tenant),
        ):
            gpu = {"gpu_s": use.gpu_s, "batch_jobs": use.batch_jobs, "batch_images": use.batch_images} if use else None
            for name, start, end in held.stages():
                annotations = gpu if name == "generate" else None
                recorded(name, start + wall, end + wall, enabled=self._xray, annotations=annotations)
            yield

    def _start(self, held: Held, workflow_input: WorkflowInput) -> None:
        """Start the job's execution, retrying AWS errors ``START_ATTEMPTS`` times with a doubling backoff; raises
        the last one. The same name each time: a start that did go through before its answer was lost counts."""
        assert held.job is not None
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._sfn.start(f"{held.job_id}-{held.job.attempt}", workflow_input)
                return
            except AwsError as exc:
                if attempt == START_ATTEMPTS:
                    raise
                logger.warning(
                    "execution start failed; retrying", job_id=held.job_id, attempt=attempt, error=type(exc).__name__
                )
                self._sleep(START_BACKOFF_S * 2 ** (attempt - 1))

    def _mark_handed_off(self, held: Held, use: GpuUse | None = None) -> bool:
        """RUNNING -> POSTPROCESSING once the execution is started, while this worker's lease still holds, with
        the job's usage (its GPU share, batch, estimated cost) in the same claim-bound write. Returns False when the
        write found the job no longer this claim's RUNNING job (handed off by the state machine, cancelled, taken
        over or handed back: the caller reads which); True when it landed, or could not be made (an AWS error:
        the lease covers the job until the state machine moves it, as before the mark existed).

        The state machine makes the same move when its postprocessing starts, but that can come after the
        lease lapses (a slow or throttled first task). Until then a duplicate delivery of the job's message
        could claim the RUNNING job again and generate it twice; out of RUNNING, no claim can."""
        assert held.job is not None
        claim = Claim(attempt=held.job.attempt, worker_id=self._worker_id)
        try:
            if use is None:
                self._repo.transition(
                    held.job_id, JobStatus.POSTPROCESSING, tenant=held.tenant, sources=[JobStatus.RUNNING], claim=claim
                )
                return True
            usage = Usage.measured(
                held.request,
                gpu_s=use.gpu_s,
                batch_jobs=use.batch_jobs,
                batch_images=use.batch_images,
                price=self._price,
            )
            # False: the job is no longer this claim's (cancelled, handed back, taken over) or the state machine
            # moved it first; the caller reads which.
            return self._repo.mark_handed_off(held.job_id, tenant=held.tenant, claim=claim, usage=usage)
        except (InvalidTransition, JobNotFound):
            return False  # the state machine got there first, or the job was cancelled or taken over
        except AwsError as exc:
            logger.warning("could not mark the hand-off; the lease covers it", job_id=held.job_id, error=str(exc))
            return True

    def fail(self, held: Held, code: JobErrorCode, message: str) -> None:
        """Hand a job that failed in generation to the state machine, which records the failure."""
        assert held.job is not None
        try:
            with self._job_segment(held):
                self._start(
                    held,
                    WorkflowInput.worker_failed(
                        held.job,
                        error=WorkerError(code=code, message=message),
                        worker_id=self._worker_id,
                        has_callback=held.request.wants_webhook("completed"),
                    ),
                )
        except Exception:
            logger.exception("failure hand-off failed; job will be retried", job_id=held.job_id)
            self._held.forget(held)
            return
        if self._claim_lost(held):
            self.drop(held)
        else:
            logger.info(
                "job handed off", job_id=held.job_id, tenant=held.tenant, attempt=held.job.attempt, error_code=code
            )
            self._held.finish(held)  # the execution records the failure at this attempt

    def _claim_lost(self, held: Held) -> bool:
        """Whether the job is known to be no longer RUNNING at this worker's attempt (every claim adds one to it,
        and one handed back is QUEUED, so no other claim runs at that attempt). A read that fails says nothing:
        the lease covers the job, as before this check existed."""
        assert held.job is not None
        try:
            current = self._repo.get(held.job_id)
        except JobNotFound:
            return True
        except AwsError:
            return False
        return current.status != JobStatus.RUNNING or current.attempt != held.job.attempt


def _logging_errors(fn: Callable[..., None], *args: Any) -> None:
    """Run one hand-off, logging what it raised (each error, once: nothing reads a hand-off's result)."""
    try:
        fn(*args)
    except Exception as exc:
        logger.exception("hand-off failed", error=f"{type(exc).__name__}: {exc}")
