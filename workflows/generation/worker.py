"""The GPU worker loop: long-poll SQS, batch compatible jobs, claim, one pipeline call, hand off to Step Functions.

Threads (one GPU thread, the rest I/O):
- receiver: long-polls the queue and feeds the batcher, holding back when enough work is waiting;
- heartbeat: keeps every held message invisible and every claimed job's lease alive;
- main (GPU): takes ready batches, claims their jobs, runs one pipeline call per batch;
- finishers: encode PNGs, upload to staging, start executions, delete messages, overlapping the next batch;
- stop (on a warm stop only): hands back the batch claimed ahead and the waiting messages at once.

Guarantees: a message is deleted only after its job's hand-off (or once its job needs nothing more), so a
crash at any point loses nothing; the conditional claim makes duplicate deliveries and a second worker
no-ops; an expired lease lets a restarted worker take over a job whose worker died.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import BotoCoreError, ClientError
from PIL.Image import Image

from shared.contracts import (
    GenerationRequest,
    Job,
    JobError,
    JobStatus,
    QueueMessage,
    WorkerError,
    WorkflowInput,
)
from shared.errors import InvalidTransition, JobExpired, JobNotFound
from shared.jobs import Claim, JobsRepository
from shared.media import MediaStore
from shared.orchestration import Orchestrator
from shared.queue import Received, WorkerQueue
from shared.tracing import segment, subsegment
from workflows.generation.batcher import Batcher, Pending
from workflows.generation.encoding import PngEncoder
from workflows.generation.pipeline import BatchShape, GenerationCancelled, GenerationOOM, ImageJob

logger = Logger(service="sdq-worker")

AwsError = (ClientError, BotoCoreError)


class Generator(Protocol):
    """What the loop needs from a pipeline runner (:class:`workflows.generation.pipeline.PipelineRunner`)."""

    @property
    def model_name(self) -> str: ...

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
    ) -> dict[str, list[Image]]: ...


@dataclass
class WorkerConfig:
    """The loop's knobs. Those without a default come from ``settings.worker`` (``handlers.worker.worker_config``)."""

    max_batch_images: int
    max_batch_wait_s: float
    receive_wait_s: int
    visibility_s: int
    heartbeat_s: float
    grace_s: float
    progress_interval_s: float
    xray: bool  # X-Ray segments around claim, generate and upload (the daemon runs beside the worker)
    finisher_threads: int = 4
    # PNG encoding in helper processes (0: in the finisher threads); the worker resolves SDQ_ENCODE_PROCESSES for
    # its device once the model is loaded.
    encode_processes: int = 0
    backlog_factor: int = 2
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


@dataclass
class Held:
    """A received job message the worker is responsible for until it is deleted or released."""

    received: Received
    message: QueueMessage
    arrived: float
    job: Job | None = None
    dropped: bool = False
    let_go_visibility: int | None = None  # set once the worker lets the message go: the visibility it set
    claimed_at: float | None = None  # monotonic time of this worker's claim

    @property
    def job_id(self) -> str:
        return self.message.job_id

    @property
    def tenant(self) -> str:
        return self.message.tenant

    @property
    def request(self) -> GenerationRequest:
        return self.message.request


@dataclass
class ClaimedBatch:
    jobs: list[Held]
    seconds: float  # how long the claims took (overlapped with the previous batch when prefetched)


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


class Worker:
    """One worker process's loop. ``run()`` returns when stopped; see ``request_stop``."""

    def __init__(
        self,
        *,
        queue: WorkerQueue,
        repo: JobsRepository,
        media: MediaStore,
        orchestrator: Orchestrator,
        generator: Generator,
        config: WorkerConfig,
        staging_prefix: str = "staging/",
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        batch_log_fields: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._queue = queue
        self._repo = repo
        self._media = media
        self._sfn = orchestrator
        self._gen = generator
        self.config = config
        self._staging = staging_prefix
        self._metrics = metrics or Metrics(namespace="sdq", service="worker")
        self._clock = clock
        # Extra fields for each batch's log line (the loop benchmark adds CPU time per thread).
        self._batch_log_fields = batch_log_fields
        self._batcher: Batcher[Held] = Batcher(config.max_batch_images, config.max_batch_wait_s)
        self._held: dict[str, Held] = {}  # message id -> held
        self._lock = threading.Condition()
        # The next batch's claim, running while the current batch generates; a warm stop hands it back at once.
        self._claim_lock = threading.Lock()
        self._next_claim: Future[ClaimedBatch] | None = None
        self._stop_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._hard_stop = threading.Event()
        self._finishers = ThreadPoolExecutor(config.finisher_threads, thread_name_prefix="sdq-finish")
        # Per-job table writes (claims, progress) are independent conditional writes: issued together, a
        # batch's writes cost one round trip instead of one per job.
        self._table_pool = ThreadPoolExecutor(max(1, min(16, config.max_batch_images)), thread_name_prefix="sdq-table")
        # Claims the next batch while the current one generates (one at a time).
        self._prefetch = ThreadPoolExecutor(1, thread_name_prefix="sdq-prefetch")
        self._encoder = PngEncoder(config.encode_processes)
        self._in_flight: list[Future[None]] = []
        self.batches: list[BatchReport] = []
        self.gpu_seconds = 0.0
        self.started_at = time.monotonic()

    # -- control -----------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """First call: warm stop (finish the running batch within the grace period, release the rest).
        Second call: stop now, releasing what can be released."""
        if self._stopping.is_set():
            logger.warning("second stop request: stopping now")
            self._hard_stop.set()
        else:
            logger.info("stop requested: finishing the running batch", grace_s=self.config.grace_s)
            self._stopping.set()
            timer = threading.Timer(self.config.grace_s, self._hard_stop.set)
            timer.daemon = True
            timer.start()
            # What will not run here goes back now, not when the running batch ends: other workers can start it.
            self._stop_thread = threading.Thread(target=self._hand_back_unstarted, name="sdq-stop", daemon=True)
            self._stop_thread.start()
        with self._lock:
            self._lock.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- threads ------------------------------------------------------------------------------------

    def run(self) -> None:
        receiver = threading.Thread(target=self._receive_loop, name="sdq-receive", daemon=True)
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="sdq-heartbeat", daemon=True)
        self._encoder.warm_up()
        receiver.start()
        heartbeat.start()
        logger.info("worker started", worker_id=self.config.worker_id, model=self._gen.model_name)
        try:
            while not self._stopping.is_set():
                pending = self._take_next_claim()
                if pending is None:
                    batch = self._next_batch()
                    if not batch:
                        continue
                    pending = self._prefetch.submit(self._claim_batch, batch)
                claimed = pending.result()
                if self._stopping.is_set():
                    self._release_claims(claimed.jobs)
                    break
                # Overlap: claim the next ready batch while this one generates, so the GPU does not wait
                # for a round of conditional writes between calls.
                with self._lock:
                    following = self._batcher.take(time.monotonic())
                if following:
                    self._claim_ahead(following)
                self._run_batch(claimed)
        finally:
            self._hand_back_claimed_ahead()  # stopping (or failing) with a batch claimed but not started
            self._shutdown(receiver)

    def _claim_ahead(self, batch: list[Held]) -> None:
        """Start claiming the next batch; once a stop was requested, hand its messages back instead."""
        with self._claim_lock:
            if not self._stopping.is_set():
                self._next_claim = self._prefetch.submit(self._claim_batch, batch)
                return
        self._let_go(batch, 0)

    def _take_next_claim(self) -> Future[ClaimedBatch] | None:
        with self._claim_lock:
            pending, self._next_claim = self._next_claim, None
        return pending

    def _hand_back_claimed_ahead(self) -> None:
        pending = self._take_next_claim()
        if pending is None:
            return
        try:
            self._release_claims(pending.result().jobs)
        except Exception:
            logger.exception("could not hand back the claimed batch; its leases will lapse")

    def _hand_back_unstarted(self) -> None:
        """A warm stop's first moves, beside the running batch: the batch claimed ahead goes back (QUEUED, message
        visible), and so do the messages still waiting to form a batch."""
        self._release_waiting()  # first: it needs no table write
        self._hand_back_claimed_ahead()

    def _release_waiting(self) -> None:
        with self._lock:
            unstarted = self._batcher.drain()
        if unstarted:
            refused = self._let_go(unstarted, 0)
            logger.info("released unstarted messages", count=len(unstarted), refused=len(refused))

    def _let_go(self, jobs: list[Held], visibility_s: int) -> list[str]:
        """Stop holding these messages and set their visibility (0: visible now; the heartbeat re-applies it if
        its own extension crossed this); returns the ids SQS refused."""
        with self._lock:
            for held in jobs:
                held.let_go_visibility = visibility_s
                self._forget(held)  # the lock is reentrant
        return self._safe_visibility([h.received for h in jobs], visibility_s)

    def _next_batch(self) -> list[Held]:
        with self._lock:
            wait = self._batcher.seconds_until_ready(time.monotonic())
            if wait is None or wait > 0:
                self._lock.wait(timeout=min(wait if wait is not None else 1.0, 1.0))
                return []
            return self._batcher.take(time.monotonic())

    def _receive_loop(self) -> None:
        backoff = 0.5
        outage_since: float | None = None
        failures = 0
        while not self._stopping.is_set():
            with self._lock:
                waiting = self._batcher.images_waiting()
            if waiting >= self.config.max_batch_images * self.config.backlog_factor:
                # Enough work on hand: leave the rest in the queue for other workers.
                time.sleep(0.05)
                continue
            try:
                received = self._queue.receive(
                    max_messages=10, wait_s=self.config.receive_wait_s, visibility_s=self.config.visibility_s
                )
                backoff = 0.5
            except AwsError as exc:
                # The queue (or the local cloud behind it) is unreachable: back off exponentially with
                # jitter, up to 30 s, and keep everything held; the heartbeat keeps trying on its own.
                outage_since = outage_since if outage_since is not None else time.monotonic()
                failures += 1
                delay = backoff * random.uniform(0.5, 1.0)
                logger.warning("receive failed; retrying", error=str(exc), retry_in_s=round(delay, 2))
                self._stopping.wait(delay)
                backoff = min(backoff * 2, 30.0)
                continue
            if outage_since is not None:
                logger.info(
                    "queue reachable again; resuming",
                    outage_s=round(time.monotonic() - outage_since, 1),
                    failed_receives=failures,
                )
                outage_since, failures = None, 0
            if self._stopping.is_set():
                self._safe_visibility(received, 0)
                return
            self._accept(received)

    def _accept(self, received: list[Received]) -> None:
        poison = [r for r in received if r.message is None]
        if poison:
            # Release at once: the redrive policy moves it to the DLQ after maxReceiveCount receives,
            # where the DLQ handler fails its job.
            logger.error("unparseable message left for the DLQ", message_ids=[r.message_id for r in poison])
            self._safe_visibility(poison, 0)
        now = time.monotonic()
        with self._lock:
            for r in received:
                if r.message is None:
                    continue
                if r.message_id in self._held:
                    # Received again while held (its visibility lapsed): SQS honours only the newest receipt
                    # handle, so the heartbeat and the final delete use that one from now on.
                    self._held[r.message_id].received = r
                    continue
                held = Held(received=r, message=r.message, arrived=now)
                self._held[r.message_id] = held
                req = r.message.request
                self._batcher.add(Pending(req.batch_key(), req.num_images, now, held))
            self._lock.notify_all()

    def _heartbeat_loop(self) -> None:
        while not self._hard_stop.wait(self.config.heartbeat_s):
            with self._lock:
                held = list(self._held.values())
                renew = [h for h in held if _renewable(h)]
            if not held:
                continue
            # The lease in the table, not the message, says who runs a job, so the leases go first and are
            # renewed whatever SQS says about the messages below (a refused extension: the message reappeared
            # and another worker may have it; that worker finds the job held and waits). In parallel, like
            # claims: one slow call must not push the other renewals towards the end of their leases.
            renewals = []
            for h in renew:
                try:
                    renewals.append(self._table_pool.submit(self._renew_lease, h))
                except RuntimeError:  # the pool is shut down: the worker is stopping and lets its jobs go
                    break
            refused = self._safe_visibility([h.received for h in held], self.config.visibility_s)
            if refused:
                logger.info("visibility extension refused; the leases still hold the jobs", messages=len(refused))
            # A message let go while that call ran may have been hidden again by it: set it back (no I/O is
            # done under a lock, so a slow SQS call here never holds up claims or a stop).
            with self._lock:
                let_go = [h for h in held if h.let_go_visibility is not None]
            for visibility in {h.let_go_visibility for h in let_go}:
                assert visibility is not None
                self._safe_visibility([h.received for h in let_go if h.let_go_visibility == visibility], visibility)
            for renewal in renewals:
                with contextlib.suppress(CancelledError):  # cancelled by a stop's pool shutdown
                    renewal.result()

    def _renew_lease(self, held: Held) -> None:
        with self._lock:
            if self._held.get(held.received.message_id) is not held or not _renewable(held):
                return  # let go, finished or dropped since the heartbeat looked
        try:
            ours = self._repo.renew_lease(
                held.job_id, worker_id=self.config.worker_id, lease_until=self._clock() + self.config.visibility_s
            )
        except AwsError as exc:
            logger.warning("lease renewal failed", job_id=held.job_id, error=str(exc))
            return
        except Exception:  # on a pool thread nothing else would report it
            logger.exception("lease renewal failed", job_id=held.job_id)
            return
        if not ours:
            logger.info("lease not renewed: the job is no longer this worker's to run", job_id=held.job_id)

    # -- one batch ----------------------------------------------------------------------------------

    def _claim_batch(self, batch: list[Held]) -> ClaimedBatch:
        """Claim every job of a batch at once (conditional writes in parallel); keep the ones won."""
        started = time.monotonic()
        with segment("sdq-worker-claim", enabled=self.config.xray):
            won = list(self._table_pool.map(self._claim, batch))
        return ClaimedBatch([h for h, ok in zip(batch, won, strict=True) if ok], time.monotonic() - started)

    def _release_claims(self, jobs: list[Held]) -> None:
        """Give claimed, never-started jobs back (QUEUED again, message visible now)."""
        for held in jobs:
            assert held.job is not None
            try:
                released = self._repo.release_claim(
                    held.job_id, held.tenant, worker_id=self.config.worker_id, attempt=held.job.attempt
                )
            except AwsError as exc:
                released = False
                logger.warning("claim release failed; the lease will lapse", job_id=held.job_id, error=str(exc))
            logger.info("claimed job handed back unstarted", job_id=held.job_id, released=released)
            self._let_go([held], 0)

    def _run_batch(self, claimed: ClaimedBatch) -> None:
        jobs = claimed.jobs
        if not jobs:
            return
        report = BatchReport(jobs=len(jobs), images=sum(h.request.num_images for h in jobs))
        report.claim_s = claimed.seconds
        started = time.monotonic()
        report.started_at = time.time()
        with segment("sdq-worker-batch", enabled=self.config.xray), subsegment("generate", enabled=self.config.xray):
            self._generate(jobs, report)
        report.seconds = time.monotonic() - started
        report.ended_at = report.started_at + report.seconds
        self.batches.append(report)
        self._log_batch(jobs, report)

    def _claim(self, held: Held) -> bool:
        """Claim one job; never raises (runs on the table pool, where an error would cost the whole batch)."""
        try:
            return self._claim_or_settle(held)
        except Exception as exc:  # an AWS error while settling a lost claim, or anything unexpected
            logger.warning("claim failed; releasing", job_id=held.job_id, error=f"{type(exc).__name__}: {exc}")
            self._let_go([held], 5)
            return False

    def _claim_or_settle(self, held: Held) -> bool:
        try:
            held.job = self._repo.claim(
                held.job_id,
                held.tenant,
                worker_id=self.config.worker_id,
                lease_s=self.config.visibility_s,
                now=self._clock(),
            )
            held.claimed_at = time.monotonic()
            return True
        except JobExpired:
            logger.info("job expired while queued; failing it and deleting its message", job_id=held.job_id)
            with contextlib.suppress(InvalidTransition, JobNotFound):
                self._repo.transition(
                    held.job_id,
                    JobStatus.FAILED,
                    tenant=held.tenant,
                    sources=[JobStatus.QUEUED, JobStatus.RUNNING],
                    error=JobError(code="EXPIRED", message="The job passed its retention before a worker ran it."),
                )
            self._finish_message(held, delete=True)
        except JobNotFound:
            logger.info("job gone (expired or never stored); deleting its message", job_id=held.job_id)
            self._finish_message(held, delete=True)
        except InvalidTransition as exc:
            if exc.current == JobStatus.RUNNING.value:
                # Another live worker holds it. Do not delete: if that worker dies, this message is the
                # only way back. Hide it until the other lease runs out, then whoever gets it re-checks.
                remaining = self._repo.lease_remaining(held.job_id, self._clock())
                logger.info("job held by another worker", job_id=held.job_id, lease_remaining_s=remaining)
                self._let_go([held], int(remaining) + 1)
            else:
                logger.info("job needs no work; deleting its message", job_id=held.job_id, status=exc.current)
                self._finish_message(held, delete=True)
        return False

    def _generate(self, jobs: list[Held], report: BatchReport) -> None:
        """One pipeline call for ``jobs``; on OOM or an error, split and retry to isolate the bad job."""
        live = [h for h in jobs if not h.dropped]
        if not live:
            return
        req = live[0].request
        shape = BatchShape(req.width, req.height, req.num_inference_steps, float(req.guidance_scale), req.scheduler)
        work = [
            ImageJob(h.job_id, h.request.prompt, h.request.negative_prompt, h.request.seed or 0, h.request.num_images)
            for h in live
        ]
        progress = _ProgressWriter(self, live)
        t0 = time.monotonic()
        try:
            images = self._gen.generate(work, shape, progress)
        except GenerationCancelled:
            self.gpu_seconds += time.monotonic() - t0
            _wait(progress.close())
            if self._hard_stop.is_set():
                return
            for h in live:
                if h.dropped:
                    report.cancelled += 1
                    self._drop(h)
            return
        except Exception as exc:
            self.gpu_seconds += time.monotonic() - t0
            _wait(progress.close())
            oom = isinstance(exc, GenerationOOM)
            # Jobs cancelled (or taken over) during the failed call are let go now: the retries below skip them,
            # and nothing else would delete or forget their messages.
            for h in live:
                if h.dropped:
                    report.cancelled += 1
                    self._submit_finisher(self._drop, h)
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
            self._submit_finisher(self._hand_off_failure, live[0], code, f"{type(exc).__name__}: {exc}"[:1000])
            return
        self.gpu_seconds += time.monotonic() - t0
        # The last progress write may still be in flight: the finishers wait for it (it can reveal a cancel),
        # the GPU thread does not.
        last_write = progress.close()
        report.cancelled += sum(1 for h in live if h.dropped)
        for h in live:
            self._submit_finisher(self._complete, last_write, h, images[h.job_id])

    # -- hand-off (finisher threads) ------------------------------------------------------------------

    def _submit_finisher(self, fn: Callable[..., None], *args: Any) -> None:
        future = self._finishers.submit(fn, *args)
        self._in_flight = [f for f in self._in_flight if not f.done()] + [future]

    def _complete(self, last_write: Future[None] | None, held: Held, images: list[Image]) -> None:
        if last_write is not None:
            try:
                last_write.result()
            except Exception:
                logger.exception("progress write failed; handing off anyway", job_id=held.job_id)
        if held.dropped:
            self._drop(held)
        else:
            self._hand_off(held, images)

    def _drop(self, held: Held) -> None:
        """Let go of a job this worker no longer owns. A cancelled or finished job's message is deleted; a
        job another worker took over keeps its message (that worker may die, and the message is the only
        way back), so it is only forgotten here."""
        try:
            current = self._repo.get(held.job_id).status
        except JobNotFound:
            current = None
        except AwsError as exc:
            logger.warning("could not read a dropped job; leaving its message", job_id=held.job_id, error=str(exc))
            self._forget(held)
            return
        if current == JobStatus.RUNNING:
            logger.info("job taken over by another worker; keeping its message", job_id=held.job_id)
            self._forget(held)
        else:
            self._finish_message(held, delete=True)

    def _hand_off(self, held: Held, images: list[Image]) -> None:
        assert held.job is not None
        attempt = held.job.attempt
        keys = []
        try:
            traced = self.config.xray
            with segment("sdq-worker-handoff", enabled=traced), subsegment("upload", enabled=traced):
                for i, image in enumerate(images):
                    key = f"{self._staging}{held.job_id}/{attempt}/{i}.png"
                    self._media.put(key, self._encoder.encode(image), "image/png")
                    keys.append(key)
            self._sfn.start(
                f"{held.job_id}-{attempt}",
                WorkflowInput.generated(
                    held.job,
                    staging_keys=keys,
                    worker_id=self.config.worker_id,
                    model=self._gen.model_name,
                    has_callback=bool(held.request.callback_url),
                ),
            )
        except Exception as exc:
            # Leave the message to reappear after its visibility timeout; the lease lapses with it and
            # the next receiver re-runs the job (attempt + 1).
            logger.exception("hand-off failed; job will be retried", job_id=held.job_id, error=str(exc))
            self._forget(held)
            return
        self._mark_handed_off(held)
        self._finish_message(held, delete=True)

    def _mark_handed_off(self, held: Held) -> None:
        """RUNNING -> POSTPROCESSING once the execution is started, while this worker's lease still holds.

        The state machine makes the same move when its postprocessing starts, but that can come after the
        lease lapses (a slow or throttled first task). Until then a duplicate delivery of the job's message
        could claim the RUNNING job again and generate it twice; out of RUNNING, no claim can."""
        assert held.job is not None
        try:
            self._repo.transition(
                held.job_id,
                JobStatus.POSTPROCESSING,
                tenant=held.tenant,
                sources=[JobStatus.RUNNING],
                claim=Claim(attempt=held.job.attempt, worker_id=self.config.worker_id),
            )
        except (InvalidTransition, JobNotFound):
            pass  # the state machine got there first, or the job was cancelled
        except AwsError as exc:
            logger.warning("could not mark the hand-off; the lease covers it", job_id=held.job_id, error=str(exc))

    def _hand_off_failure(self, held: Held, code: str, message: str) -> None:
        assert held.job is not None
        try:
            self._sfn.start(
                f"{held.job_id}-{held.job.attempt}",
                WorkflowInput.worker_failed(
                    held.job,
                    error=WorkerError(code=code, message=message),
                    worker_id=self.config.worker_id,
                    has_callback=bool(held.request.callback_url),
                ),
            )
        except Exception:
            logger.exception("failure hand-off failed; job will be retried", job_id=held.job_id)
            self._forget(held)
            return
        self._finish_message(held, delete=True)

    # -- message bookkeeping --------------------------------------------------------------------------

    def _forget(self, held: Held) -> None:
        with self._lock:
            self._held.pop(held.received.message_id, None)

    def _finish_message(self, held: Held, *, delete: bool) -> None:
        self._forget(held)
        if not delete:
            return
        try:
            failed = self._queue.delete([held.received])
        except AwsError as exc:
            failed = [held.received.message_id]
            logger.warning("delete failed", job_id=held.job_id, error=str(exc))
        if failed:
            # Harmless: the message comes back and its job is no longer claimable, so it is a no-op then.
            logger.warning("message not deleted; its redelivery will be a no-op", job_id=held.job_id)

    def _safe_visibility(self, messages: list[Received], visibility_s: int) -> list[str]:
        if not messages:
            return []
        try:
            return self._queue.set_visibility(messages, visibility_s)
        except AwsError as exc:
            logger.warning("visibility change failed", error=str(exc), messages=len(messages))
            return [m.message_id for m in messages]

    def _shutdown(self, receiver: threading.Thread) -> None:
        # The stop thread's claim releases first (within the grace period): a message made visible while its job
        # is still claimed here is hidden again by the next worker that receives it, until this worker's lease ends.
        while self._stop_thread is not None and self._stop_thread.is_alive() and not self._hard_stop.is_set():
            self._stop_thread.join(timeout=0.1)
        self._release_waiting()  # what arrived after the stop's first hand-back
        if not self._hard_stop.is_set():
            for future in list(self._in_flight):
                future.result()
        self._finishers.shutdown(wait=not self._hard_stop.is_set(), cancel_futures=self._hard_stop.is_set())
        self._prefetch.shutdown(wait=False, cancel_futures=True)
        self._table_pool.shutdown(wait=False, cancel_futures=True)
        self._encoder.close()
        with self._lock:
            leftover = list(self._held.values())
            self._held.clear()
        # Jobs interrupted by a hard stop: release their messages so another worker can take over once
        # the lease lapses.
        self._let_go(leftover, 0)
        self._hard_stop.set()
        receiver.join(timeout=0.1)

    # -- observability ---------------------------------------------------------------------------------

    def _log_batch(self, jobs: list[Held], report: BatchReport) -> None:
        now = time.monotonic()
        waits = [now - report.seconds - h.arrived for h in jobs]
        req = jobs[0].request
        ips = report.images / report.seconds if report.seconds > 0 else 0.0
        logger.info(
            "batch",
            batch=len(self.batches),
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
            **(self._batch_log_fields() if self._batch_log_fields else {}),
        )
        self._metrics.add_metric(name="ImagesPerSecond", unit=MetricUnit.CountPerSecond, value=ips)
        self._metrics.add_metric(name="BatchImages", unit=MetricUnit.Count, value=report.images)
        self._metrics.add_metric(name="QueueWait", unit=MetricUnit.Seconds, value=max(waits) if waits else 0.0)
        self._metrics.add_metric(name="JobFailures", unit=MetricUnit.Count, value=report.failed)
        self._metrics.flush_metrics()


# The longest a worker keeps renewing a job's lease: SQS's own limit on keeping a message invisible. A call that
# hangs (a wedged GPU) must not lock its jobs for as long as the process lives.
_MAX_LEASE_HOLD_S = 12 * 3600.0


def _renewable(held: Held) -> bool:
    """Whether the heartbeat renews this job's lease: claimed here, not dropped or let go, not held too long."""
    return (
        held.job is not None
        and held.claimed_at is not None
        and not held.dropped
        and held.let_go_visibility is None
        and time.monotonic() - held.claimed_at < _MAX_LEASE_HOLD_S
    )


def _wait(future: Future[None] | None) -> None:
    if future is not None:
        future.result()


class _ProgressWriter:
    """The pipeline's step callback: writes step/total at most once per interval (off the GPU thread) and
    stops the call when every job in it was cancelled or the worker must stop now."""

    def __init__(self, worker: Worker, jobs: list[Held]) -> None:
        self._worker = worker
        self._jobs = jobs
        self._last = 0.0
        self._pending: Future[None] | None = None

    def __call__(self, step: int, total: int) -> None:
        w = self._worker
        if w._hard_stop.is_set():
            raise GenerationCancelled()
        now = time.monotonic()
        if now - self._last >= w.config.progress_interval_s and (self._pending is None or self._pending.done()):
            self._last = now
            self._pending = w._finishers.submit(self._write, step, total)
        if all(h.dropped for h in self._jobs):
            raise GenerationCancelled()

    def _write(self, step: int, total: int) -> None:
        jobs = [h for h in self._jobs if not h.dropped and h.job is not None]
        list(self._worker._table_pool.map(lambda h: self._write_one(h, step, total), jobs))

    def _write_one(self, h: Held, step: int, total: int) -> None:
        w = self._worker
        assert h.job is not None
        try:
            still_ours = w._repo.record_progress(h.job_id, worker_id=w.config.worker_id, step=step, total=total)
        except AwsError as exc:
            logger.warning("progress write failed", job_id=h.job_id, error=str(exc))
            return
        if still_ours:
            h.job.progress.step, h.job.progress.total = step, total
        else:
            logger.info("job cancelled or taken over during generation; dropping it", job_id=h.job_id)
            h.dropped = True

    def close(self) -> Future[None] | None:
        """The write still in flight, if any (not waited for here)."""
        return self._pending
