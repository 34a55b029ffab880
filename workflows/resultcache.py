"""The result cache: a request that names its seed, identical to an earlier job's, is answered from that job's images.

One table item per normalised request and scope (``CACHE#<scope>#<key>``, :func:`shared.jobs.cache_entry_pk`) names
the job whose images answer it, its *source*. A new cacheable job finds the entry and then:

- the source SUCCEEDED with at least half its retention left: a **hit**. The job is stored SUCCEEDED at once, its
  outputs referring to the source's objects and its own retention ending with theirs (``expires_at`` is the
  source's, so its references live exactly as long as it does: past it, it is gone for its client like any other
  job), zero GPU seconds, and its ``job.succeeded`` webhook started through the normal notice path. Its presigned
  URLs are its own, issued on each read. No worker sees it.
- the source is QUEUED, RUNNING or POSTPROCESSING with at least half its retention left: a **join**. The job is
  stored QUEUED with ``joined_to`` and added to the source's ``followers`` in one transaction, conditioned on the
  source being unfinished and that much retention left, so the join lands before the source's terminal write or
  not at all (a joined job is kept no longer than its source: with less left, it could be 404 once answered, or
  before). When the source finishes, :meth:`ResultCache.settle` (the state machine's SettleJoined step, or the
  cancel) completes each follower from its images, or, when the source failed or was cancelled, hands the first
  back to the queue to generate, and moves the others to join that one (one transaction each, conditioned like a
  join). A follower is a job of its own: cancelling it changes nothing for the
  source, and cancelling the source only sends its followers to run. A joined job's GPU work is given back to the
  tenant's daily budget when it joins (in the join's own transaction), and counted again when it is sent to run
  itself (once per job: :meth:`shared.ratelimit.DailyGpuBudget.collect`), so identical jobs and cancels spend the
  budget like any jobs.
- no entry, or one naming a job that failed, was cancelled, expired or has under half its retention left: the job
  becomes the source, written in one transaction with the entry (conditioned on the entry being as read), then
  queued as usual.

Every write is conditional, so racing requests resolve to one source, and a follower is completed or released once.
A follower whose source never settled it (a crash, or a terminal path that does not settle: a dead letter, an
expiry, a broken execution) is sent by the requeue sweeper ``requeue_after_s`` after its source finished
(:meth:`shared.jobs.JobsRepository.unqueued_before`), so no accepted job is lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError

from shared.contracts import Job, JobStatus, QueueMessage, Usage, pixel_steps, utcnow
from shared.errors import JobNotFound
from shared.jobs import JOINABLE, JobsRepository, cache_entry_pk
from shared.orchestration import Orchestrator
from shared.pricing import gpu_price
from shared.queue import JobQueue
from shared.ratelimit import DailyGpuBudget
from shared.settings import Settings
from shared.tracing import continued
from workflows.webhooks import start_notice

logger = Logger(service="sdq", child=True)

# Re-reads when another request changed the entry or the source between a read and the conditional write.
MAX_ROUNDS = 4

Outcome = Literal["hit", "joined", "source", "plain"]


@dataclass(frozen=True)
class Cached:
    """What the cache made of a submission: the job as stored, whether this request created it, and how."""

    job: Job
    created: bool
    outcome: Outcome


@dataclass(frozen=True)
class Probe:
    """What the cache holds for a job's request: the entry's job (None: no entry), that job as read, and whether it
    answers the request now (a hit)."""

    source_id: str | None
    source: Job | None
    hit: bool


@dataclass
class SettleReport:
    completed: int = 0
    released: int = 0
    moved: int = 0  # joined to the first released job instead (it generates for all of them)
    skipped: int = 0


class ResultCache:
    def __init__(
        self,
        repo: JobsRepository,
        queue: JobQueue,
        settings: Settings,
        *,
        orchestrator: Callable[[], Orchestrator],
        budget: DailyGpuBudget | None = None,
    ) -> None:
        """``orchestrator`` is a factory: a submission that is no hit never builds its client. ``budget``: where a
        joined job sent to run itself has its GPU work counted again (without one it is not)."""
        self._budget = budget
        self._repo = repo
        self._queue = queue
        self._settings = settings
        self._orchestrator = orchestrator
        self.price = gpu_price(settings.gpu_instance_type)
        # A hit, or a joined job once completed, lives as long as its source's objects: a source with less than half
        # its retention left answers nothing and is joined by nothing (a new job generates and becomes the source).
        self.min_life_s = settings.job_retention_days * 86400 // 2

    # -- submit ----------------------------------------------------------------------------------

    def scope(self, tenant: str) -> str:
        return "*" if self._settings.result_cache_scope == "global" else f"t:{tenant}"

    def alive_until(self) -> int:
        """The ``expires_at`` a source must pass to answer or be joined now (epoch seconds)."""
        return int(time.time() + self.min_life_s)

    def probe(self, job: Job) -> Probe:
        """Read the entry of ``job``'s request and the job it names (two consistent reads)."""
        source_id = self._repo.cached_job_id(cache_entry_pk(self.scope(job.tenant), job.cache_key))
        source = self._source(source_id)
        hit = (
            source is not None
            and source.status == JobStatus.SUCCEEDED
            and bool(source.outputs)
            and source.expires_at > self.alive_until()
        )
        return Probe(source_id, source, hit)

    def submit(
        self,
        job: Job,
        fingerprint: str | None,
        probe: Probe | None = None,
        *,
        deferral: Sequence[dict[str, Any]] = (),
    ) -> Cached:
        """Store ``job`` (QUEUED, its request cacheable and normalised) as a hit, a join, or the source of its
        entry; ``probe`` is a first look already taken. The caller queues it when the outcome is ``source`` or
        ``plain`` and ``created``. ``deferral``: the writes that give back a joined job's GPU work and record it
        owed (:meth:`shared.ratelimit.DailyGpuBudget.deferral`), made in the join's own transaction, only if it
        joins."""
        entry = cache_entry_pk(self.scope(job.tenant), job.cache_key)
        full: str | None = None  # a source that refused the join while unfinished and retained: it has the most
        for _ in range(MAX_ROUNDS):  # followers (shared.jobs.MAX_FOLLOWERS), so this job takes its place
            seen = probe or self.probe(job)
            probe = None
            source, alive_until = seen.source, self.alive_until()
            if seen.hit and source is not None:
                return self._hit(job, source, fingerprint)
            joinable = source is not None and source.status in JOINABLE and source.expires_at > alive_until
            if source is not None and joinable and source.job_id != full:
                joined = job.model_copy(update={"joined_to": source.job_id})
                stored = self._repo.create_joined(
                    joined,
                    source_id=source.job_id,
                    alive_until=alive_until,
                    idempotency_fingerprint=fingerprint,
                    also=deferral,
                )
                if stored is not None:
                    return Cached(stored[0], stored[1], "joined")
                full = source.job_id
                continue  # the source finished, its retention was cut, or it is full: read again
            created = self._repo.create_cache_source(
                job, entry_pk=entry, replaces=seen.source_id, idempotency_fingerprint=fingerprint
            )
            if created is not None:
                return Cached(created[0], created[1], "source")
        # The entry keeps changing under us: generate, as if uncached.
        plain, made = self._repo.create(job, idempotency_fingerprint=fingerprint)
        return Cached(plain, made, "plain")

    def _source(self, source_id: str | None) -> Job | None:
        if source_id is None:
            return None
        try:
            return self._repo.get(source_id)
        except JobNotFound:
            return None  # swept by the TTL

    def _hit(self, job: Job, source: Job, fingerprint: str | None) -> Cached:
        now = utcnow()
        answered = job.model_copy(
            update={
                "status": JobStatus.SUCCEEDED,
                "started_at": now,
                "finished_at": now,
                "outputs": list(source.outputs),
                "expires_at": min(job.expires_at, source.expires_at),
                "cache_source": source.job_id,
                "usage": Usage.cache_hit(job.request, self.price),
            }
        )
        stored, created = self._repo.create(answered, idempotency_fingerprint=fingerprint)
        if created:
            self._notify(stored)
        return Cached(stored, created, "hit")

    def _notify(self, job: Job) -> None:
        """The job's ``job.succeeded`` webhook, through the state machine's notice path, once per job (the
        execution is named after the job and event). Never raises: the webhook can be redelivered."""
        if not job.request.wants_webhook("completed"):
            return
        for attempt in range(3):
            try:
                start_notice(self._orchestrator(), job, "succeeded", once=True)
                return
            except (ClientError, BotoCoreError) as exc:
                logger.warning("cache hit's notice not started", job_id=job.job_id, error=type(exc).__name__)
                time.sleep(0.1 * 2**attempt)
        logger.error("cache hit's webhook notice not started; redeliver sends it", job_id=job.job_id)

    # -- settle ----------------------------------------------------------------------------------

    def settle(self, source_id: str) -> SettleReport:
        """Finish the jobs that joined ``source_id`` once it is finished: each completed from its images when it
        SUCCEEDED; else the first is handed back to the queue to generate, and the others join it. Idempotent
        (every write is conditional; a follower completed by an earlier run only gets its notice started again,
        which runs once). Raises AWS errors."""
        report = SettleReport()
        try:
            source = self._repo.get(source_id)
        except JobNotFound:
            return report
        if not source.status.terminal:
            return report
        # When the source did not succeed, the first follower released generates for the others: they join it.
        runner: Job | None = None
        for follower_id in self._repo.followers(source_id):
            try:
                follower = self._repo.get(follower_id)
            except JobNotFound:
                report.skipped += 1
                continue
            if follower.status == JobStatus.SUCCEEDED and follower.cache_source == source_id:
                self._notify(follower)  # a run that died after completing it: the notice runs once
                report.skipped += 1
            elif follower.status != JobStatus.QUEUED or follower.joined_to != source_id:
                report.skipped += 1  # cancelled, or released and running itself
            elif source.status == JobStatus.SUCCEEDED and source.outputs:
                self._complete(follower, source, report)
            elif runner is not None and self._repo.move_joined(
                follower.job_id, source_id=source_id, to_source_id=runner.job_id, alive_until=self.alive_until()
            ):
                report.moved += 1
            else:
                runner = self._release(follower, source_id, report) or runner
        if report.completed or report.released or report.moved:
            logger.info("joined jobs settled", source_job=source_id, **report.__dict__)
        return report

    def _complete(self, follower: Job, source: Job, report: SettleReport) -> None:
        done = self._repo.complete_joined(
            follower.job_id,
            source_id=source.job_id,
            tenant=follower.tenant,
            outputs=source.outputs,
            expires_at=min(follower.expires_at, source.expires_at),
            usage=Usage.cache_hit(follower.request, self.price),
        )
        if done is None:
            report.skipped += 1  # cancelled meanwhile
            return
        report.completed += 1
        self._notify(done)

    def _release(self, follower: Job, source_id: str, report: SettleReport) -> Job | None:
        """Send ``follower`` to the queue to generate itself; the job as released, or None when it was not
        joined to ``source_id`` any more."""
        released = self._repo.release_joined(follower.job_id, source_id=source_id)
        if released is None:
            report.skipped += 1
            return None
        report.released += 1
        collect_owed_work(self._budget, released)
        try:
            with continued(released.trace_header):  # its own submit's trace, not the source job's
                self._queue.send(QueueMessage.for_job(released))
            self._repo.mark_enqueued(released.job_id)
        except (ClientError, BotoCoreError) as exc:
            # Still marked unqueued: the requeue sweeper sends it.
            logger.warning(
                "released job not sent; the sweeper sends it", job_id=released.job_id, error=type(exc).__name__
            )
        # The entry names the source, which did not succeed: the job that now generates for the others is what a
        # later identical request should find (a hit once it succeeds, a join before). Best effort, after the send:
        # without it a later request generates once more, nothing worse.
        entry = cache_entry_pk(self.scope(released.tenant), released.cache_key)
        try:
            self._repo.repoint_cache_entry(entry, previous=source_id, job=released)
        except (ClientError, BotoCoreError) as exc:
            logger.warning(
                "cache entry not moved to the released job", job_id=released.job_id, error=type(exc).__name__
            )
        return released


def collect_owed_work(budget: DailyGpuBudget | None, job: Job) -> None:
    """Count the GPU work ``job`` was given back when it joined an identical job, now that it is sent to run itself
    (by a settle, or by the requeue sweeper): once per job, never refusing it (it was accepted). A job that owes
    nothing costs one refused write. Best effort: an AWS error is logged and the job is sent all the same."""
    if budget is None:
        return
    try:
        if budget.collect(job.tenant, job.job_id, pixel_steps(job.request), now=time.time()):
            logger.info("joined job runs itself: its GPU work is counted", job_id=job.job_id)
    except (ClientError, BotoCoreError) as exc:
        logger.warning("GPU work of a released job not counted", job_id=job.job_id, error=type(exc).__name__)
