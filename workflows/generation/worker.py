"""The GPU worker loop: long-poll SQS, batch compatible jobs, claim, one pipeline call, hand off to Step Functions.

``Worker.run()`` is the loop; each concern is a collaborator beside it, built here with what it needs:
- held messages (:mod:`.heldmessages`): the messages held and the batcher they wait in, their visibility, deletes;
- receiver thread (:mod:`.receiver`): long-polls the queue into the held messages, holding back when enough work
  is waiting;
- heartbeat thread (:mod:`.heartbeat`): keeps every claimed job's lease alive and every held message invisible;
- claims (:mod:`.claims`): a batch's claims in parallel, lost claims settled, the next batch claimed ahead on the
  prefetch thread while this one generates;
- batch run (:mod:`.batchrun`, progress in :mod:`.progress`), on the main (GPU) thread: one pipeline call per
  batch, split to isolate a job that fails it; jobs failing alone one after another make the worker stop as faulty
  (its jobs handed back) and exit with :data:`EXIT_FAULTY`, to be replaced;
- hand-off (:mod:`.handoff`), on the finisher threads: encode PNGs, upload to staging, start executions, delete
  messages, overlapping the next batch;
- stop thread (on a warm stop only): hands back the batch claimed ahead and the waiting messages at once;
- throughput (:mod:`.throughput`): images/s per shape and the batch on the GPU, published on a thread of its own
  for the queue ETAs of the API.

Guarantees: a message is deleted only after its job's hand-off (or once its job needs nothing more), so a
crash at any point loses nothing; the conditional claim makes duplicate deliveries and a second worker
no-ops; an expired lease lets a restarted worker take over a job whose worker died.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from aws_lambda_powertools import Logger, Metrics

from shared.jobs import JobsRepository
from shared.loraregistry import LoraRegistry
from shared.media import MediaStore
from shared.modelregistry import ModelRegistry
from shared.orchestration import Orchestrator
from shared.queue import WorkerQueue
from shared.settings import get_settings
from workflows.generation.batchreport import BatchReport, log_batch
from workflows.generation.batchrun import BatchRunner, Generator, WarmsUp, served_models
from workflows.generation.claims import ClaimedBatch, Claims
from workflows.generation.encoding import PngEncoder
from workflows.generation.handoff import HandOff
from workflows.generation.heartbeat import Heartbeat
from workflows.generation.heldmessages import HeldMessages
from workflows.generation.loras import LoraAdapters
from workflows.generation.pipeline import ModelRunners, PipelineRunner
from workflows.generation.progress import ProgressRecorder
from workflows.generation.progressevents import ProgressEvents
from workflows.generation.protection import TaskProtection
from workflows.generation.receiver import Receiver
from workflows.generation.throughput import StatsStore, Throughput
from workflows.generation.watchdog import EXIT_HUNG, Watchdog, Watched
from workflows.webhooks import start_finished_notice

__all__ = ["EXIT_FAULTY", "Generator", "Worker", "WorkerConfig"]

logger = Logger(service="sdq-worker")

# The exit status of a worker that stopped as faulty (jobs failing alone one after another): the watchdog's, since
# the process gave up on itself in both cases and its container is to be replaced.
EXIT_FAULTY = EXIT_HUNG


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
    xray: bool  # X-Ray: each handed-off job's worker segment, in its trace (the daemon runs beside the worker)
    stall_s: float | None = None  # the watchdog's bound on a pipeline call without a step (None: none)
    health_file: str | None = None  # touched by the watchdog while healthy, for the container health check
    finisher_threads: int = 4
    # PNG encoding in helper processes (0: in the finisher threads); the worker resolves SDQ_ENCODE_PROCESSES for
    # its device once the model is loaded.
    encode_processes: int = 0
    backlog_factor: int = 2
    # Jobs failed alone in a row after which the worker stops as faulty (None: SDQ_MAX_CONSECUTIVE_FAILURES).
    max_consecutive_failures: int | None = None
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


def loaded_revisions(generator: Generator) -> dict[str, str | None]:
    """The registry revision each model of ``generator`` was loaded at (None: loaded outside the registry); empty for
    a generator that is neither a pipeline runner nor several (it claims any revision)."""
    if isinstance(generator, ModelRunners):
        return {model: generator.runner(model).revision for model in generator.models}
    if isinstance(generator, PipelineRunner):
        return {generator.model_name: generator.revision}
    return {}


def loaded_loras(generator: Generator) -> LoraRegistry | None:
    """The LoRA registry ``generator``'s pipelines apply adapters from (one per process: the settings'); None for a
    generator without LoRA adapters (it claims a job pinned to any LoRA revision)."""
    if isinstance(generator, ModelRunners):
        generator = generator.runner(next(iter(sorted(generator.models))))
    adapters = getattr(generator, "loras", None)
    return adapters.registry if isinstance(adapters, LoraAdapters) else None


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
        worker_stats: StatsStore | None = None,
        progress_events: ProgressEvents | None = None,
        protection: TaskProtection | None = None,
        registry: ModelRegistry | None = None,
    ) -> None:
        """``protection``: the ECS task's scale-in protection, held while there is work (default: none).
        ``registry``: the model registry the worker's models came from, whose retired revisions fail the jobs pinned
        to them (default: none known to be retired; jobs pinned to another revision are left for other workers)."""
        self._protection = protection or TaskProtection(None)
        self.config = config
        self._gen = generator
        self._metrics = metrics or Metrics(namespace="sdq", service="worker")
        # Extra fields for each batch's log line (the loop benchmark adds CPU time per thread).
        self._batch_log_fields = batch_log_fields
        self._stopping = threading.Event()
        self._hard_stop = threading.Event()
        self._stop_thread: threading.Thread | None = None
        self._finishers = ThreadPoolExecutor(config.finisher_threads, thread_name_prefix="sdq-finish")
        # Per-job table writes (claims, lease renewals, progress) are independent conditional writes: issued
        # together, a batch's writes cost one round trip instead of one per job.
        self._table_pool = ThreadPoolExecutor(max(1, min(16, config.max_batch_images)), thread_name_prefix="sdq-table")
        # Claims the next batch while the current one generates (one at a time).
        self._prefetch = ThreadPoolExecutor(1, thread_name_prefix="sdq-prefetch")
        self._encoder = PngEncoder(config.encode_processes)
        self._messages = HeldMessages(
            queue, max_batch_images=config.max_batch_images, max_batch_wait_s=config.max_batch_wait_s
        )
        self._receiver = Receiver(
            self._messages,
            self._stopping,
            backlog_images=config.max_batch_images * config.backlog_factor,
            receive_wait_s=config.receive_wait_s,
            visibility_s=config.visibility_s,
        )
        self._heartbeat = Heartbeat(
            self._messages,
            repo,
            self._table_pool,
            self._hard_stop,
            worker_id=config.worker_id,
            interval_s=config.heartbeat_s,
            visibility_s=config.visibility_s,
            clock=clock,
        )
        self._claims = Claims(
            self._messages,
            repo,
            table_pool=self._table_pool,
            prefetch=self._prefetch,
            stopping=self._stopping,
            worker_id=config.worker_id,
            lease_s=config.visibility_s,
            clock=clock,
            models=served_models(generator),  # a job for another model is left for a worker that serves it
            revisions=loaded_revisions(generator),  # and one pinned to another revision, or failed if it is retired
            loras=loaded_loras(generator),  # the same for the revisions of its LoRAs
            registry=registry,
            on_failed=lambda job: start_finished_notice(orchestrator, job),
        )
        self._handoff = HandOff(
            self._messages,
            repo,
            media,
            orchestrator,
            self._encoder,
            self._finishers,
            staging_prefix=staging_prefix,
            worker_id=config.worker_id,
            model_name=generator.model_name,
            xray=config.xray,
        )
        progress = ProgressRecorder(
            repo,
            worker_id=config.worker_id,
            interval_s=config.progress_interval_s,
            hard_stop=self._hard_stop,
            writers=self._finishers,
            table_pool=self._table_pool,
            events=progress_events,  # previews and started/progress webhooks
        )
        # A call that hangs (a wedged GPU) makes the process let its jobs go and exit, to be replaced.
        alive = Path(config.health_file) if config.health_file else None
        self._watchdog = Watchdog(config.stall_s, self._give_up, alive_file=alive) if config.stall_s else None
        watched = Watched(generator, self._watchdog) if self._watchdog else generator
        # The runner warmed its smallest bucket at load; the other compiled shapes are warmed while no job is held.
        self._warmer: WarmsUp | None = cast(WarmsUp, watched) if isinstance(generator, WarmsUp) else None
        self._batch_runner = BatchRunner(
            watched,
            progress,
            self._handoff,
            self._hard_stop,
            max_failures_in_a_row=config.max_consecutive_failures,
        )
        self._throughput = Throughput(
            worker_stats,
            worker_id=config.worker_id,
            max_batch_images=config.max_batch_images,
            window_images=config.max_batch_images * config.backlog_factor,
        )
        self.batches: list[BatchReport] = []
        self.started_at = time.monotonic()
        self.faulty = False  # stopped because its jobs kept failing: the caller exits with EXIT_FAULTY

    # -- the loop ------------------------------------------------------------------------------------

    def run(self) -> None:
        receiver = threading.Thread(target=self._receiver.run, name="sdq-receive", daemon=True)
        heartbeat = threading.Thread(target=self._heartbeat.run, name="sdq-heartbeat", daemon=True)
        self._encoder.warm_up()
        receiver.start()
        heartbeat.start()
        self._throughput.start()
        if self._watchdog is not None:
            self._watchdog.start()
        logger.info("worker started", worker_id=self.config.worker_id, model=self._gen.model_name)
        try:
            while not self._stopping.is_set():
                pending = self._claims.take_claimed_ahead()
                if pending is None:
                    batch = self._messages.next_batch()
                    if not batch:
                        if not len(self._messages):
                            self._protection.idle()  # nothing held: a scale-in may stop this task again
                            self._warm_next_shape()
                        continue
                    pending = self._claims.start(batch)
                claimed = pending.result()
                if self._stopping.is_set():
                    self._claims.release(claimed.jobs)
                    break
                # Overlap: claim the next ready batch while this one generates, so the GPU does not wait
                # for a round of conditional writes between calls.
                following = self._messages.ready_batch()
                if following:
                    self._claims.claim_ahead(following)
                self._run_batch(claimed)
                if self._batch_runner.faulty:
                    self._stop_as_faulty()
        finally:
            self._claims.hand_back_claimed_ahead()  # stopping (or failing) with a batch claimed but not started
            self._shutdown(receiver)

    def _run_batch(self, claimed: ClaimedBatch) -> None:
        self._protection.busy()  # no scale-in while a batch runs
        self._throughput.batch_started(claimed.jobs)
        report = self._batch_runner.run(claimed)
        self._throughput.batch_finished(claimed.jobs, report)
        if report is None:
            return
        self.batches.append(report)
        log_batch(len(self.batches), claimed.jobs, report, self._metrics, self._batch_log_fields)

    def _warm_next_shape(self) -> None:
        """Holding no job: compile (and record) the next batch size no call has run yet, one per idle turn, so the
        first batch of that size does not wait for it. A failure ends the warm-up: that shape then compiles at its
        first batch, whose failure the batch run handles."""
        if self._warmer is None:
            return
        try:
            if not self._warmer.warm_next():
                self._warmer = None
        except Exception:
            logger.exception("warm-up failed: the shapes still cold compile at their first batch")
            self._warmer = None

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
        self._messages.wake()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- read-only views -----------------------------------------------------------------------------

    @property
    def queue(self) -> WorkerQueue:
        return self._messages.queue

    def held_count(self) -> int:
        """How many messages this worker holds (waiting for a batch, claimed, generating or handing off)."""
        return len(self._messages)

    @property
    def gpu_seconds(self) -> float:
        return self._batch_runner.gpu_seconds

    # -- stopping ----------------------------------------------------------------------------------------

    def _hand_back_unstarted(self) -> None:
        """A warm stop's first moves, beside the running batch: the batch claimed ahead goes back (QUEUED, message
        visible), and so do the messages still waiting to form a batch."""
        self._release_waiting()  # first: it needs no table write
        self._claims.hand_back_claimed_ahead()

    def _release_waiting(self) -> None:
        unstarted = self._messages.take_waiting()
        if unstarted:
            refused = self._messages.let_go(unstarted, 0)
            logger.info("released unstarted messages", count=len(unstarted), refused=len(refused))

    def _stop_as_faulty(self) -> None:
        """Jobs failed alone one after another: the device, not the jobs, is at fault. Stop as a warm stop does
        (the hand-offs finish; every job still held goes back, visible now) and leave ``faulty`` set."""
        logger.error("worker faulty: its jobs kept failing; handing back what it holds and stopping")
        self.faulty = True
        self._stopping.set()

    def _give_up(self, stalled_s: float) -> None:
        """The watchdog's last act before the process exits: every held message visible now, so its jobs run again
        elsewhere once their leases lapse (the heartbeat dies with the process)."""
        self._hard_stop.set()
        self._messages.let_go_all()

    def _shutdown(self, receiver: threading.Thread) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
        # The stop thread's claim releases first (within the grace period): a message made visible while its job
        # is still claimed here is hidden again by the next worker that receives it, until this worker's lease ends.
        while self._stop_thread is not None and self._stop_thread.is_alive() and not self._hard_stop.is_set():
            self._stop_thread.join(timeout=0.1)
        self._release_waiting()  # what arrived after the stop's first hand-back
        if not self._hard_stop.is_set():
            self._handoff.wait()
            self._end_receiving(receiver)
        self._finishers.shutdown(wait=not self._hard_stop.is_set(), cancel_futures=self._hard_stop.is_set())
        self._prefetch.shutdown(wait=False, cancel_futures=True)
        self._table_pool.shutdown(wait=False, cancel_futures=True)
        self._encoder.close()
        self._throughput.stop(publish=not self._hard_stop.is_set())
        # Jobs interrupted by a hard stop: release their messages so another worker can take over once
        # the lease lapses.
        self._messages.let_go_all()
        self._hard_stop.set()
        self._protection.idle()
        self._protection.close()

    def _end_receiving(self, receiver: threading.Thread) -> None:
        """Wait for the receiver's long poll to return (at most its wait plus the client's read timeout), so that
        what SQS handed it after the stop is made visible again by the receiver, or let go below with the rest:
        a process that exits mid-poll leaves whatever the poll was handed invisible for the visibility timeout."""
        self._stopping.set()  # also when the loop ended on an error: the receiver polls no more
        deadline = time.monotonic() + self.config.receive_wait_s + get_settings().aws_read_timeout_s
        while receiver.is_alive() and not self._hard_stop.is_set() and time.monotonic() < deadline:
            receiver.join(timeout=0.1)  # a second stop (or the grace period's end) stops waiting
        if receiver.is_alive():
            logger.warning("the receiver's poll did not return; what it receives stays hidden until it times out")
