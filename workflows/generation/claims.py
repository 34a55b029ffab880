"""Claims: a batch's jobs claimed in parallel, lost claims settled, the next batch claimed ahead (one at a time,
while the current one generates) and claimed jobs handed back unstarted on a warm stop. A job for a model the
worker has not loaded is never claimed: its message is left for a worker that serves it. Nor is a job pinned to
another revision of a model it has loaded: that job is left for the workers that loaded its revision (a rolling
deployment), or failed ``MODEL_REVISION_GONE`` when the registry lists its revision as retired. The same holds for a
job's LoRAs against the worker's LoRA registry (``LORA_REVISION_GONE``)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from functools import partial

from aws_lambda_powertools import Logger

from shared.contracts import Job, JobError, JobErrorCode, JobStatus
from shared.errors import InvalidTransition, JobExpired, JobNotFound
from shared.jobs import JobsRepository, RevisionPinned
from shared.loraregistry import LoraRegistry
from shared.modelregistry import ModelRegistry
from shared.settings import WORKFLOW_TIMEOUT_S
from shared.tracing import continued
from workflows.generation.heldmessages import AwsError, Held, HeldMessages

logger = Logger(service="sdq-worker")

# How long a message for a model this worker has not loaded stays hidden from it: short, so a worker that serves
# the model receives it soon, and long enough that this worker does not take it straight back.
UNSERVED_VISIBILITY_S = 2

# The errors a worker writes on a job it never ran (the claims below); their webhook is started by the worker.
FAILED_BEFORE_RUNNING = frozenset(
    {JobErrorCode.EXPIRED, JobErrorCode.MODEL_REVISION_GONE, JobErrorCode.LORA_REVISION_GONE}
)
EXPIRED_ERROR = JobError(code=JobErrorCode.EXPIRED, message="The job's retention ran out before a worker could run it.")
# The retention a job must have left, beyond one lease (its generation; a longer one renews it), for a worker to claim
# it. Its hand-off, the job workflow and its first notice read the job, and DynamoDB's TTL may remove it once its
# retention ends: the notice would be lost. The workflow reaches the end of its first notice task within 2.4 h even
# when every task before it times out and is retried to the last (statemachine.asl.json's timeouts and retries;
# tests/unit/test_claims.py adds them up). A job with less left is failed EXPIRED instead, which keeps it for its
# webhook.
RUN_RETENTION_S = 3 * 3600
# A job failed EXPIRED is past its TTL, or close to it: the fail pushes the TTL on by this much, so that DynamoDB's
# sweep cannot delete the job before its job.failed webhook has read it (the notice's execution lasts at most its
# timeout; the hour is for a notice start that waits for the message to come back). Clients still find it gone
# (past_retention).
EXPIRED_NOTICE_RETENTION_S = WORKFLOW_TIMEOUT_S + 3600


def revision_gone(model: str | None, revision: str) -> JobError:
    return JobError(
        code=JobErrorCode.MODEL_REVISION_GONE,
        message=f"Revision {revision!r} of model {model!r} is retired: no worker serves it any more.",
    )


def lora_revision_gone(lora: str, revision: str) -> JobError:
    return JobError(
        code=JobErrorCode.LORA_REVISION_GONE,
        message=f"Revision {revision!r} of LoRA {lora!r} is retired: no worker serves it any more.",
    )


@dataclass
class ClaimedBatch:
    jobs: list[Held]
    seconds: float  # how long the claims took (overlapped with the previous batch when prefetched)


class Claims:
    def __init__(
        self,
        held: HeldMessages,
        repo: JobsRepository,
        *,
        table_pool: Executor,
        prefetch: Executor,
        stopping: threading.Event,
        worker_id: str,
        lease_s: int,
        clock: Callable[[], float],
        on_failed: Callable[[Job], object] | None = None,
        models: frozenset[str] | None = None,
        revisions: Mapping[str, str | None] | None = None,
        registry: ModelRegistry | None = None,
        loras: LoraRegistry | None = None,
    ) -> None:
        """``on_failed`` starts the webhook of a job failed here before it ran (expired while queued, or pinned to a
        retired revision); it may raise (the message then comes back, and the job, found already failed so, gets it
        started again: it must be idempotent). ``models``: the model ids this worker has loaded; a job naming
        another is not claimed (None: any model). ``revisions``: the revision loaded of each model (None: loaded
        outside the registry); a job pinned to another is not claimed. ``registry``: which revisions are retired
        (None: none known to be). ``loras``: the LoRA registry the worker applies adapters from; a job pinned to
        other revisions of its LoRAs is not claimed, and fails when the registry retired one (None: any)."""
        self._on_failed = on_failed
        self._models = models
        self._revisions = revisions or {}
        self._registry = registry
        self._loras = loras
        self._held = held
        self._repo = repo
        # Per-job table writes are independent conditional writes: issued together, a batch's claims cost one
        # round trip instead of one per job.
        self._table_pool = table_pool
        self._prefetch = prefetch  # one thread: one claim at a time, beside the GPU thread
        self._stopping = stopping
        self._worker_id = worker_id
        self._lease_s = lease_s
        self._min_life_s = lease_s + RUN_RETENTION_S
        self._clock = clock
        # The next batch's claim, running while the current batch generates; a warm stop hands it back at once.
        self._ahead_lock = threading.Lock()
        self._ahead: Future[ClaimedBatch] | None = None

    # -- claiming ahead ------------------------------------------------------------------------------

    def start(self, batch: list[Held]) -> Future[ClaimedBatch]:
        """Claim ``batch`` on the prefetch thread."""
        return self._prefetch.submit(self.claim_batch, batch)

    def claim_ahead(self, batch: list[Held]) -> None:
        """Start claiming the next batch; once a stop was requested, hand its messages back instead."""
        with self._ahead_lock:
            if not self._stopping.is_set():
                self._ahead = self.start(batch)
                return
        self._held.let_go(batch, 0)

    def take_claimed_ahead(self) -> Future[ClaimedBatch] | None:
        with self._ahead_lock:
            pending, self._ahead = self._ahead, None
        return pending

    def hand_back_claimed_ahead(self) -> None:
        """Release the batch claimed ahead, if any (its claims end first)."""
        pending = self.take_claimed_ahead()
        if pending is None:
            return
        try:
            self.release(pending.result().jobs)
        except Exception:
            logger.exception("could not hand back the claimed batch; its leases will lapse")

    # -- one batch's claims ----------------------------------------------------------------------------

    def claim_batch(self, batch: list[Held]) -> ClaimedBatch:
        """Claim every job of a batch at once (conditional writes in parallel); keep the ones won."""
        started = time.monotonic()
        batch = self._leave_unserved(batch)
        claiming = time.monotonic()
        for h in batch:
            h.claiming_at = claiming
        won = list(self._table_pool.map(self.claim, batch))
        return ClaimedBatch([h for h, ok in zip(batch, won, strict=True) if ok], time.monotonic() - started)

    def _leave_unserved(self, batch: list[Held]) -> list[Held]:
        """The jobs of ``batch`` this worker can generate; the others' messages go back, visible again soon."""
        if self._models is None:
            return batch
        unserved = [h for h in batch if h.request.model not in self._models]
        if not unserved:
            return batch
        for h in unserved:
            logger.warning(
                "job for a model this worker has not loaded; left for a worker that has",
                job_id=h.job_id,
                model=h.request.model,
                served=sorted(self._models),
            )
        self._held.let_go(unserved, UNSERVED_VISIBILITY_S)
        return [h for h in batch if h.request.model in self._models]

    def release(self, jobs: list[Held]) -> None:
        """Give claimed, never-started jobs back (QUEUED again, message visible now)."""
        for held in jobs:
            assert held.job is not None
            try:
                released = self._repo.release_claim(
                    held.job_id, held.tenant, worker_id=self._worker_id, attempt=held.job.attempt
                )
            except AwsError as exc:
                released = False
                logger.warning("claim release failed; the lease will lapse", job_id=held.job_id, error=str(exc))
            logger.info("claimed job handed back unstarted", job_id=held.job_id, released=released)
            self._held.let_go([held], 0)

    def claim(self, held: Held) -> bool:
        """Claim one job; never raises (runs on the table pool, where an error would cost the whole batch). In the
        job's trace: the webhook of a job failed here before it ran joins it."""
        try:
            with continued(held.received.trace_header):
                return self._claim_or_settle(held)
        except Exception as exc:  # an AWS error while settling a lost claim, or anything unexpected
            logger.warning("claim failed; releasing", job_id=held.job_id, error=f"{type(exc).__name__}: {exc}")
            self._held.let_go([held], 5)
            return False

    def _claim_or_settle(self, held: Held) -> bool:
        model = held.request.model
        try:
            held.job = self._repo.claim(
                held.job_id,
                held.tenant,
                worker_id=self._worker_id,
                lease_s=self._lease_s,
                now=self._clock(),
                min_life_s=self._min_life_s,
                revision=self._revisions.get(model) if model is not None else None,
                # A LoRA outside this worker's registry fails at generation (LoraNotServed), as before pinning.
                loras=self._loras.pins(lora.id for lora in held.request.loras) if self._loras is not None else None,
            )
            held.claimed_at = time.monotonic()
            return True
        except JobExpired as exc:
            failed = self._fail_unrun(held, EXPIRED_ERROR, expired=True, past=exc.past)
            if not failed and not exc.past and self._held_elsewhere(held):
                return False  # too little retention left, but a worker renewed its lease meanwhile: its job
            logger.info("job expired while queued; failing it and deleting its message", job_id=held.job_id)
            self._held.finish(held)
        except RevisionPinned as exc:
            if exc.lora is not None:
                retired = self._loras is not None and self._loras.retired(exc.lora, exc.revision)
                gone = lora_revision_gone(exc.lora, exc.revision)
            else:
                retired = self._registry is not None and self._registry.retired(model or "", exc.revision)
                gone = revision_gone(model, exc.revision)
            if retired and self._fail_unrun(held, gone):
                logger.info("job pinned to a retired revision; failed", job_id=held.job_id, model=model, lora=exc.lora)
                self._held.finish(held)
            else:
                logger.info(
                    "job pinned to another revision; left for the workers that have it",
                    job_id=held.job_id,
                    model=model,
                    lora=exc.lora,
                    pinned=exc.revision,
                    loaded=self._revisions.get(model or ""),
                )
                self._held.let_go([held], UNSERVED_VISIBILITY_S)
        except JobNotFound:
            logger.info("job gone (expired or never stored); deleting its message", job_id=held.job_id)
            self._held.finish(held)
        except InvalidTransition as exc:
            if exc.current == JobStatus.RUNNING.value:
                self._leave_to_holder(held, self._repo.lease_remaining(held.job_id, self._clock()))
            else:
                if exc.current == JobStatus.FAILED.value:
                    self._notify_failed_here(held)
                logger.info("job needs no work; deleting its message", job_id=held.job_id, status=exc.current)
                self._held.finish(held)
        return False

    def _held_elsewhere(self, held: Held) -> bool:
        """Whether another worker runs the job under a live lease: then it is left to that worker
        (:meth:`_leave_to_holder`), and True."""
        with contextlib.suppress(JobNotFound):
            if self._repo.get(held.job_id).status == JobStatus.RUNNING:
                remaining = self._repo.lease_remaining(held.job_id, self._clock())
                if remaining > 0:
                    self._leave_to_holder(held, remaining)
                    return True
        return False

    def _leave_to_holder(self, held: Held, remaining: float) -> None:
        """Another live worker holds the job, ``remaining`` seconds more. Its message is not deleted: if that worker
        dies, it is the only way back. Hidden until the other lease runs out, then whoever gets it re-checks."""
        logger.info("job held by another worker", job_id=held.job_id, lease_remaining_s=remaining)
        self._held.let_go([held], int(remaining) + 1)

    def _notify_failed_here(self, held: Held) -> None:
        """Start the webhook of a job an earlier receive of this message failed before it ran (expired, or pinned
        to a retired revision): that start may have failed (a throttled StartExecution), which let the message go
        so that this receive would retry it. The notice is started once by name, so a start that had landed is
        not repeated. Raises AWS errors (the claim lets the message go again)."""
        if self._on_failed is None:
            return
        with contextlib.suppress(JobNotFound):
            job = self._repo.get(held.job_id)
            if job.error is not None and job.error.code in FAILED_BEFORE_RUNNING:
                self._on_failed(job)

    def _fail_unrun(self, held: Held, error: JobError, *, expired: bool = False, past: bool = True) -> bool:
        """FAILED with ``error`` before it ran, then its webhook; a job already failed so (an earlier try) gets its
        webhook again. Returns whether the job is failed so. ``expired`` and ``past``: past its retention, failed
        whoever holds it; otherwise only while no worker holds it (QUEUED, or RUNNING with its lease lapsed)."""
        job: Job | None = None
        with contextlib.suppress(JobNotFound):
            try:
                job = self._fail(held, error, expired=expired, past=past)
            except InvalidTransition:
                current = self._repo.get(held.job_id)
                if current.status == JobStatus.FAILED and current.error and current.error.code == error.code:
                    job = current
        if job is not None and self._on_failed is not None:
            self._on_failed(job)
        return job is not None

    def _fail(self, held: Held, error: JobError, *, expired: bool, past: bool = True) -> Job:
        fail = partial(self._repo.transition, held.job_id, JobStatus.FAILED, tenant=held.tenant, error=error)
        if expired:  # kept until its webhook is sent
            fail = partial(fail, retain_until=int(self._clock()) + EXPIRED_NOTICE_RETENTION_S)
        if expired and past:  # past its retention: nobody may run it, whoever holds it
            return fail(sources=[JobStatus.QUEUED, JobStatus.RUNNING])
        # Otherwise only while no worker runs it: a RUNNING one with a live lease may be generating on a worker that
        # renewed it (its retention is still long enough for that run), or that still has its pinned revision.
        try:
            return fail(sources=[JobStatus.QUEUED])
        except InvalidTransition as exc:
            if exc.current != JobStatus.RUNNING.value:
                raise
            return fail(sources=[JobStatus.RUNNING], lease_lapsed_before=self._clock())
