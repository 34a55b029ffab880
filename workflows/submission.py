"""Submitting, reading, listing and cancelling jobs: the API's logic, free of HTTP and event shapes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import BotoCoreError, ClientError
from ulid import ULID

from shared.audit import AuditLog, PendingAudit
from shared.contracts import (
    GenerationRequest,
    Job,
    JobError,
    JobErrorCode,
    JobStatus,
    QueueMessage,
    pixel_steps,
    utcnow,
)
from shared.errors import (
    EnqueueFailed,
    IdempotencyConflict,
    IdempotencyKeyInUse,
    InvalidTransition,
    JobNotFound,
    PriorityNotAllowed,
    TooManyRequests,
)
from shared.jobs import JobsRepository, Page, expiry_epoch, is_valid_job_id
from shared.queue import JobQueue
from shared.ratelimit import Charge, ChargeRefused, DailyGpuBudget, Limit, RateLimiter
from shared.settings import Settings
from shared.tenants import Plan
from workflows.preprocessing import Inputs, InvalidInput, PreparedInputs
from workflows.resultcache import ResultCache

if TYPE_CHECKING:
    from collections.abc import Callable

logger = Logger(service="sdq", child=True)
# The result cache's hit rate: ResultCacheHit is 1 or 0 per cacheable job created, so its average is the rate.
metrics = Metrics(namespace="sdq", service="api")


@dataclass(frozen=True)
class Submitted:
    job: Job
    created: bool


class SubmissionService:
    """Accepts jobs: validates tenant limits, records the job, enqueues it, and never leaves it stranded."""

    def __init__(
        self,
        repo: JobsRepository,
        queue: JobQueue,
        settings: Settings,
        *,
        rate_limiter: RateLimiter | None = None,
        budget: DailyGpuBudget | None = None,
        cache: ResultCache | None = None,
        inputs: Inputs | None = None,
        audit: AuditLog | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``cache`` answers cacheable requests (:mod:`workflows.resultcache`) while the setting is on; without
        one every request generates. ``inputs`` reads, checks and stores the input images of image-to-image and
        inpainting requests; without it they are refused. ``audit``: where a submission's pending audit entry is
        written, with the job's sent mark."""
        self._audit = audit
        self._rate = rate_limiter
        self._inputs = inputs
        self._budget = budget
        self._cache = cache
        self._repo = repo
        self._queue = queue
        self._settings = settings
        self._sleep = sleep
        self._clock = clock

    def submit(
        self,
        tenant: str,
        request: GenerationRequest,
        *,
        idempotency_key: str | None = None,
        plan: Plan | None = None,
        audit: PendingAudit | None = None,
    ) -> Submitted:
        """Record and enqueue a job within the tenant's ``plan`` (the settings' default plan when None).

        The AWS calls of a text request the result cache does not answer: the unfinished-job count, one
        transaction (the rate limit's and the GPU budget's counters, the job, its Idempotency-Key), the queue
        send, and one transaction taking the job out of the requeue sweeper's index with ``audit``'s entry
        (the job's id as its target; ``audit.recorded`` says it was written). Refusals and the other requests
        take a call or two more.

        Raises PriorityNotAllowed (a priority above the plan's), InvalidInput (an input image that cannot be used;
        nothing is stored), IdempotencyConflict (key reused with another body), IdempotencyKeyInUse (the key's
        job is being written, or written and not yet sent by the request that made it), TooManyRequests (rate,
        unfinished-job cap or daily GPU budget) or EnqueueFailed (queue unreachable after retries; the job is then
        FAILED, not stuck in QUEUED). When
        the job cannot be marked FAILED either, it is accepted as it is: it stays marked unqueued and the requeue
        sweeper sends it.
        """
        plan = plan or Plan.defaults(self._settings)
        if request.priority.rank > plan.max_priority.rank:
            raise PriorityNotAllowed(request.priority, plan.max_priority)
        fingerprint = request.fingerprint()
        # No read of the key first: the job's transaction writes the key only where it is free, and finds the job
        # it names otherwise. A refusal below looks it up, so a replay is answered whatever the limits say.
        charged_at = time.time()
        # A plain text request's counters are charged in the job's own transaction, after the unfinished cap;
        # the others' one by one, as they go (an input image is read only for a request within its rate).
        in_one_write = self._in_one_write(request, plan)
        if not in_one_write:
            replay = self._count_request(tenant, plan, charged_at, idempotency_key, fingerprint)
            if replay is not None:
                return replay
            if request.image is not None and idempotency_key is not None:
                # A retry answers with its job before its inputs are read: uploads live a day, a key as long as its
                # job, and a replay need not fetch and store the images again.
                replay = self._replay_charged(tenant, idempotency_key, fingerprint, charged_at)
                if replay is not None:
                    return replay

        normalised = request.normalised(self._settings)
        try:
            prepared = self._prepare(tenant, normalised)  # inputs are fitted to the size the job will have
        except InvalidInput:
            self._give_back(tenant, charged_at)  # a refused request makes nothing, so it costs nothing
            raise
        normalised = prepared.named(normalised)
        now = utcnow()
        model_revision = self._settings.registry.revision(normalised.model)
        # The images a cached job answers with were made by its model's pinned registry revision, with the speed
        # levers its SDQ_MODEL_REVISIONS entry names: a change of either makes earlier images stop answering.
        weights = [model_revision or "", self._settings.model_revisions.get(normalised.model or "", "")]
        job = Job(
            job_id=str(ULID()),
            tenant=tenant,
            status=JobStatus.QUEUED,
            request=normalised,
            created_at=now,
            cache_key=normalised.cache_key("|".join(w for w in weights if w), self._settings.loras.revisions),
            idempotency_key=idempotency_key,
            expires_at=expiry_epoch(now, self._settings.job_retention_days),
            model_is_noise=self._makes_noise(normalised.model),
            model_revision=model_revision,
            lora_revisions=self._settings.loras.pins(lora.id for lora in normalised.loras) or {},
        )
        cache = self.result_cache() if request.cacheable() else None
        # A hit is finished the moment it is made: it is answered before the unfinished-job cap, which it cannot
        # add to (and a look at the cache saves the cap's query on the path that should be fastest).
        probe = cache.probe(job) if cache is not None else None
        if probe is None or not probe.hit:
            cap = plan.max_unfinished_jobs
            if self._repo.count_active(tenant) >= cap:
                # A cap refusal counts as a submission for the rate limit, as a rate refusal does: a client retrying
                # into a full cap is slowed like any other. Only a request refused for itself (a bad input, a reused
                # key, a budget it does not fit) gives its slot back.
                if in_one_write:
                    replay = self._count_request(tenant, plan, charged_at, idempotency_key, fingerprint)
                    if replay is not None:
                        return replay
                replay = self._replay_charged(tenant, idempotency_key, fingerprint, charged_at)
                if replay is not None:
                    return replay
                raise TooManyRequests(
                    f"Tenant has {cap} unfinished jobs, the most allowed; retry when some finish.",
                    retry_after_s=self._settings.unfinished_cap_retry_after_s,
                )
        if in_one_write:
            return self._create_charged(job, plan, charged_at, fingerprint, audit)
        work: int | Submitted = 0
        if probe is None or not probe.hit:  # a hit uses no GPU
            work = self._charge_work(tenant, normalised, plan, charged_at, idempotency_key, fingerprint)
        if isinstance(work, Submitted):
            return work
        stored_inputs = self._store_inputs(prepared, job, charged_at, work)
        try:
            if cache is not None:
                cached = cache.submit(job, fingerprint, probe, deferral=self._deferral(job, charged_at, work))
                stored, created, outcome = cached.job, cached.created, cached.outcome
            else:
                stored, created = self._repo.create(job, idempotency_fingerprint=fingerprint)
                outcome = "plain"
        except (IdempotencyConflict, IdempotencyKeyInUse):
            self._give_back(tenant, charged_at, work)  # a refused request makes nothing, so it costs nothing
            self._discard_inputs(stored_inputs)
            raise
        if not created:
            self._discard_inputs(stored_inputs)  # the earlier job has its own
            # A replay (or a concurrent request with this key made the job): this one made nothing, so it costs no
            # rate slot and no GPU work.
            self._give_back(tenant, charged_at, work)
            return Submitted(stored, created=False)
        if outcome == "hit":  # answered by another job's images: no GPU work, and its inputs are never read
            self._give_back_work(tenant, charged_at, work)
            self._discard_inputs(stored_inputs)
        if cache is not None:
            _count(outcome)
        if outcome in ("hit", "joined"):
            return Submitted(stored, created=True)  # finished, or finishes with its source: no message
        return Submitted(self._enqueue(stored, audit), created=True)

    def _makes_noise(self, model: str | None) -> bool:
        entry = self._settings.registry.get(model or self._settings.default_model)
        return entry is not None and entry.makes_noise

    def _in_one_write(self, request: GenerationRequest, plan: Plan) -> bool:
        """Whether the request's counters go in its job's transaction: a text request the result cache does not
        answer, whose GPU work is within the whole daily budget (a larger one is refused by the budget's own
        write, which cannot say so in a transaction's condition)."""
        if request.image is not None or (request.cacheable() and self.result_cache() is not None):
            return False
        if self._budget is None or plan.daily_gpu_budget_mpx_steps == 0:
            return True
        return pixel_steps(request.normalised(self._settings)) <= plan.daily_gpu_budget_pixel_steps

    def _count_request(
        self, tenant: str, plan: Plan, charged_at: float, idempotency_key: str | None, fingerprint: str
    ) -> Submitted | None:
        """Count one request against the plan's rate limit on its own: None when it is allowed, the job of a
        replayed Idempotency-Key, or TooManyRequests."""
        wait = self._rate_wait(tenant, plan, charged_at)
        if wait is None:
            return None
        replay = self._replay(tenant, idempotency_key, fingerprint)
        if replay is not None:
            return replay
        raise self._refusal(Limit.RATE, wait, plan, 0)

    def _create_charged(
        self, job: Job, plan: Plan, charged_at: float, fingerprint: str, audit: PendingAudit | None
    ) -> Submitted:
        """Store ``job`` with its request and GPU work counted, in one transaction; send it."""
        charges: list[Charge] = []
        if self._rate is not None:
            charges.append(
                self._rate.charge(
                    job.tenant,
                    limit=plan.rate_limit_per_window,
                    window_s=self._settings.rate_limit_window_s,
                    now=charged_at,
                )
            )
        work = pixel_steps(job.request)
        if self._budget is not None and plan.daily_gpu_budget_mpx_steps:
            charges.append(
                self._budget.work_charge(job.tenant, work, budget=plan.daily_gpu_budget_pixel_steps, now=charged_at)
            )
        try:
            # A replay (the key names a job) or a refusal writes nothing, so nothing is given back.
            stored, created = self._repo.create(job, idempotency_fingerprint=fingerprint, charges=charges)
        except ChargeRefused as refused:
            raise self._refusal(refused.charge.limit, refused.charge.retry_after_s, plan, work) from None
        if not created:
            return Submitted(stored, created=False)
        return Submitted(self._enqueue(stored, audit), created=True)

    def count_upload(self, tenant: str, plan: Plan | None = None) -> None:
        """Count an upload ticket against the plan's rate limit, as a submission: a ticket lets the tenant store
        up to an input's size in the bucket, so it is metered like the request it prepares. Raises
        TooManyRequests."""
        plan = plan or Plan.defaults(self._settings)
        wait = self._rate_wait(tenant, plan, time.time())
        if wait is not None:
            raise self._refusal(Limit.RATE, wait, plan, 0)

    def _rate_wait(self, tenant: str, plan: Plan, now: float) -> float | None:
        """Count one request against the plan's rate limit: None when allowed, else the seconds to wait."""
        if self._rate is None:
            return None
        return self._rate.hit(
            tenant, limit=plan.rate_limit_per_window, window_s=self._settings.rate_limit_window_s, now=now
        )

    def _refusal(self, limit: Limit, retry_after_s: float, plan: Plan, work: int) -> TooManyRequests:
        """The 429 of a request that ``limit`` refused (the rate limit, or the daily GPU budget for ``work``)."""
        if limit is Limit.RATE:
            message = (
                f"More than {plan.rate_limit_per_window} submissions in "
                f"{self._settings.rate_limit_window_s} s; slow down."
            )
        else:
            message = (
                f"This job's GPU work ({work / 1e6:.1f} megapixel steps) does not fit in what is left of the daily"
                f" budget of {plan.daily_gpu_budget_mpx_steps} megapixel steps; it resets at 00:00 UTC."
            )
        return TooManyRequests(message, retry_after_s=int(retry_after_s))

    def _prepare(self, tenant: str, request: GenerationRequest) -> PreparedInputs:
        if request.image is None:
            return PreparedInputs()
        if self._inputs is None:
            raise InvalidInput("image", "inputs_not_served", "this service takes no input images")
        return self._inputs.prepare(tenant, request)

    def _store_inputs(self, prepared: PreparedInputs, job: Job, charged_at: float, work: int) -> list[str]:
        """Write the job's normalised inputs before the job exists (a worker may take it at once)."""
        if self._inputs is None or not prepared.inputs:
            return []
        try:
            return self._inputs.store(prepared, job.tenant, job.job_id)
        except (ClientError, BotoCoreError):
            self._give_back(job.tenant, charged_at, work)
            raise

    def _discard_inputs(self, keys: list[str]) -> None:
        """Best effort: inputs stored for a job that was not made, or that will never run (a cache hit); they expire
        with the outputs anyway."""
        if self._inputs is None or not keys:
            return
        try:
            self._inputs.discard(keys)
        except (ClientError, BotoCoreError):
            logger.warning("inputs of a job not made were left to expire", keys=len(keys))

    def result_cache(self) -> ResultCache | None:
        """The result cache, or None when the operator turned it off (or none was given)."""
        return self._cache if self._settings.result_cache else None

    def _settle_followers(self, job_id: str) -> None:
        """Hand the jobs that joined ``job_id`` (now finished without images) back to the queue. Best effort: the
        requeue sweeper sends any this misses."""
        cache = self.result_cache()
        if cache is None:
            return
        try:
            cache.settle(job_id)
        except (ClientError, BotoCoreError) as exc:
            logger.warning("joined jobs not settled; the sweeper sends them", job_id=job_id, error=type(exc).__name__)

    def _replay_charged(self, tenant: str, key: str | None, fingerprint: str, charged_at: float) -> Submitted | None:
        """:meth:`_replay` for a request whose rate slot is charged: a replay (or a conflict) makes nothing, so its
        slot is given back."""
        try:
            replay = self._replay(tenant, key, fingerprint)
        except (IdempotencyConflict, IdempotencyKeyInUse):
            self._give_back(tenant, charged_at)
            raise
        if replay is not None:
            self._give_back(tenant, charged_at)
        return replay

    def _replay(self, tenant: str, key: str | None, fingerprint: str) -> Submitted | None:
        """The job an earlier request with this Idempotency-Key made, if any; IdempotencyConflict for another body,
        IdempotencyKeyInUse while that request may still be sending it (or failing it and freeing the key)."""
        if key is None:
            return None
        existing = self._repo.find_by_idempotency_key(tenant, key, fingerprint)
        return Submitted(existing, created=False) if existing is not None else None

    def _charge_work(
        self,
        tenant: str,
        request: GenerationRequest,
        plan: Plan,
        charged_at: float,
        idempotency_key: str | None,
        fingerprint: str,
    ) -> int | Submitted:
        """Count the request's GPU work against the plan's daily budget: the work counted (0 without a budget),
        a replay of the job its Idempotency-Key made, or TooManyRequests."""
        if self._budget is None or plan.daily_gpu_budget_mpx_steps == 0:
            return 0
        work = pixel_steps(request)
        wait = self._budget.charge(tenant, work, budget=plan.daily_gpu_budget_pixel_steps, now=charged_at)
        if wait is None:
            return work
        self._give_back(tenant, charged_at)  # refused, a replay or a key in use: this request makes nothing
        replay = self._replay(tenant, idempotency_key, fingerprint)
        if replay is not None:
            return replay
        raise self._refusal(Limit.DAILY_GPU_BUDGET, wait, plan, work)

    def _give_back_work(self, tenant: str, charged_at: float, work: int) -> None:
        if self._budget is None or work == 0:
            return
        try:
            self._budget.refund(tenant, work, now=charged_at)
        except (ClientError, BotoCoreError):
            logger.warning("could not give back the GPU work of a request that made none", tenant=tenant)

    def _deferral(self, job: Job, charged_at: float, work: int) -> list[dict[str, Any]]:
        """A joined job does no GPU work while its source generates for it: its work is given back, and owed should
        it be sent to run itself (the result cache counts it then: :meth:`DailyGpuBudget.collect`). The writes that
        say so, for the join's own transaction: written after it, they could land once a cancel of the source had
        already sent the job to run, owing nothing."""
        if self._budget is None or work == 0:
            return []
        return self._budget.deferral(job.tenant, job.job_id, work, now=charged_at, keep_until=job.expires_at)

    def _give_back(self, tenant: str, charged_at: float, work: int = 0) -> None:
        """Return the rate slot charged at ``charged_at`` (and the GPU work counted) to a request that made no
        job."""
        self._give_back_work(tenant, charged_at, work)
        if self._rate is None:
            return
        try:
            self._rate.release(tenant, window_s=self._settings.rate_limit_window_s, now=charged_at)
        except (ClientError, BotoCoreError):
            logger.warning("could not give back the rate slot of a request that made no job", tenant=tenant)

    def _enqueue(self, job: Job, audit: PendingAudit | None = None) -> Job:
        """Send the job's message; returns the job as the caller should see it, or raises EnqueueFailed. Once
        sent, ``audit``'s entry is written with the job's sent mark."""
        message = QueueMessage.for_job(job)
        attempts = max(1, self._settings.enqueue_attempts)
        # Bounded in time as well as in tries: the API answers within its Lambda's timeout, with the job FAILED
        # and a 503, never killed mid-retry with the job left QUEUED and no message for it.
        deadline = self._clock() + self._settings.enqueue_budget_s
        last: Exception | None = None
        for attempt in range(attempts):
            try:
                self._queue.send(message)
            except (ClientError, BotoCoreError) as exc:
                last = exc
                logger.warning("enqueue failed", job_id=job.job_id, attempt=attempt + 1, error=type(exc).__name__)
                pause = min(2.0, 0.2 * 2**attempt)
                if attempt + 1 >= attempts or self._clock() + pause >= deadline:
                    break
                self._sleep(pause)
                continue
            self._mark_sent(job, audit)
            return job
        reason = JobError(
            code=JobErrorCode.ENQUEUE_FAILED, message=f"The job could not be queued: {type(last).__name__}"
        )
        try:
            # Only from QUEUED: a job the requeue sweeper sent meanwhile and a worker claimed is running.
            self._repo.transition(
                job.job_id, JobStatus.FAILED, tenant=job.tenant, sources=[JobStatus.QUEUED], error=reason
            )
            self._settle_followers(job.job_id)  # identical requests that joined it meanwhile run themselves
        except (ClientError, BotoCoreError, InvalidTransition) as exc:
            current = self._current(job)
            if current is not None and current.error is not None and current.error.code == reason.code:
                self._refuse(job, reason)  # the write landed and only its answer was lost (or it was retried)
            # The job is accepted as it stands: still QUEUED and marked unqueued (the requeue sweeper sends it),
            # or already claimed or cancelled. A 503 would invite a second job beside it.
            logger.warning(
                "queue send failed and the job could not be failed; accepted as it stands",
                job_id=job.job_id,
                status=current.status.value if current is not None else None,
                error=type(exc).__name__,
            )
            return current if current is not None else job
        self._refuse(job, reason)

    def _mark_sent(self, job: Job, audit: PendingAudit | None) -> None:
        """Take the sent job out of the requeue sweeper's index, with ``audit``'s entry in the same call; when
        that call fails the entry is left to the API, which records the call as answered."""
        entry, also = None, None
        if audit is not None and self._audit is not None:
            entry = audit.entry.model_copy(update={"target": job.job_id})
            also = self._audit.transact_item(entry)
        try:
            self._repo.mark_enqueued(job.job_id, also=also)
        except (ClientError, BotoCoreError):
            # Harmless: the claim clears the mark too; at worst the requeue sweeper sends a second message,
            # which the claim's condition turns into a no-op.
            logger.warning("could not mark the job enqueued", job_id=job.job_id)
            return
        if audit is not None:
            audit.recorded = entry

    def _current(self, job: Job) -> Job | None:
        try:
            return self._repo.get(job.job_id)
        except (ClientError, BotoCoreError, JobNotFound):
            return None

    def _refuse(self, job: Job, reason: JobError) -> NoReturn:
        """The job is FAILED (ENQUEUE_FAILED): free its key, so the retry the 503 invites makes a new job."""
        if job.idempotency_key is not None:
            try:
                self._repo.release_idempotency_key(job.tenant, job.idempotency_key, job.job_id)
            except (ClientError, BotoCoreError):
                logger.exception("could not free the key of an unqueued job", job_id=job.job_id)
        raise EnqueueFailed(reason.message, details={"job_id": job.job_id})

    def get(self, tenant: str, job_id: str) -> Job:
        if not is_valid_job_id(job_id):
            raise JobNotFound(job_id)
        return self._repo.get(job_id, tenant=tenant)

    def list(self, tenant: str, *, status: JobStatus | None, limit: int, cursor: str | None) -> Page:
        return self._repo.list_for_tenant(tenant, status=status, limit=limit, cursor=cursor)

    def cancel(self, tenant: str, job_id: str, *, notify: Callable[[Job], object] | None = None) -> Job:
        """Cancel a job that has not finished; ``notify`` (its webhook's start) runs right after the write, before
        the jobs that joined it are settled, which may take long. Raises JobNotFound or InvalidTransition (already
        terminal)."""
        if not is_valid_job_id(job_id):
            raise JobNotFound(job_id)
        job = self._repo.transition(job_id, JobStatus.CANCELLED, tenant=tenant, within_retention=True)
        if notify is not None:
            notify(job)
        if job.request.cacheable():
            self._settle_followers(job_id)  # jobs that joined it are not cancelled: they run themselves
        return job


def _count(outcome: str) -> None:
    """The result cache's metrics for one cacheable job created (a hit, a join, or a miss). Not flushed here:
    Powertools shares one metric set per process, and the API flushes it with ``JobsSubmitted`` right after a
    created job, in one log line."""
    metrics.add_metric(name="ResultCacheHit", unit=MetricUnit.Count, value=1 if outcome == "hit" else 0)
    metrics.add_metric(name="ResultCacheJoin", unit=MetricUnit.Count, value=1 if outcome == "joined" else 0)
