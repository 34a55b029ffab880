"""The requeue sweeper: sends the queue message of a job whose submission stored it but never sent it.

A submission writes the job, then sends its message, then marks it sent (``JobsRepository.mark_enqueued``).
An API call that dies between the write and the send (its Lambda killed, the runtime lost) leaves a QUEUED job
that no worker will ever see; a replay of its Idempotency-Key would answer with it too. The sweeper runs on a
schedule, finds jobs still marked unqueued ``requeue_after_s`` after their submission (longer than any API call
can live) and sends their message, in the job's own trace (the one it stored at its submit: shared/tracing.py).
A second message for a job whose first did go out is harmless: the claim is a conditional write, so only one of
them runs the job, and the other is dropped. Delivery is at least once: a sweep that dies after a send and before
clearing the mark sends that job again on its next pass.

The same pass fails abandoned jobs: RUNNING, with a lease that lapsed more than ``abandoned_after_s`` ago. When a
worker dies its job's message becomes visible as its lease lapses, and the next receiver claims the job at once;
a job nobody claimed that long after has no message left (it was deleted or dead-lettered while the job was
running elsewhere), so nothing would ever run or fail it. It is failed (``ABANDONED``, one conditional write at
the attempt read and only while the lease is still lapsed) and its ``job.failed`` webhook started.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError

from shared.contracts import Job, JobError, JobErrorCode, JobStatus, QueueMessage
from shared.errors import InvalidTransition, JobNotFound
from shared.jobs import UNQUEUED_SHARDS, Claim, JobsRepository
from shared.queue import JobQueue
from shared.ratelimit import DailyGpuBudget
from shared.tracing import continued
from workflows.resultcache import collect_owed_work

logger = Logger(service="sdq-requeue", child=True)

ABANDONED_ERROR = JobError(
    code=JobErrorCode.ABANDONED, message="The job's worker stopped and no queue message was left to run it again."
)


@dataclass
class SweepReport:
    requeued: int = 0
    cleared: int = 0  # marked jobs that had moved on (claimed, cancelled, finished) or were gone
    failed: int = 0
    deferred: int = 0  # found but left for the next pass: this one's time budget was spent
    deferred_shards: int = 0  # index shards not read this pass (budget spent or limit reached)
    abandoned: int = 0  # RUNNING jobs with a long-lapsed lease, failed ABANDONED

    def as_dict(self) -> dict[str, int]:
        return {
            "requeued": self.requeued,
            "cleared": self.cleared,
            "failed": self.failed,
            "deferred": self.deferred,
            "deferred_shards": self.deferred_shards,
            "abandoned": self.abandoned,
        }


class RequeueSweeper:
    def __init__(
        self,
        repo: JobsRepository,
        queue: JobQueue,
        *,
        requeue_after_s: float,
        budget_s: float = 30.0,
        limit: int = 500,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        abandoned_after_s: float | None = None,
        notify: Callable[[Job], object] | None = None,
        budget: DailyGpuBudget | None = None,
    ) -> None:
        """``abandoned_after_s``: also fail RUNNING jobs whose lease lapsed that long ago (None: not swept);
        ``notify`` starts a failed job's webhook (it may raise AWS errors: counted as failed, logged); ``budget``:
        where a job that joined an identical one and is sent here has its GPU work counted again."""
        self._budget = budget
        self._abandoned_after = abandoned_after_s
        self._notify = notify
        self._repo = repo
        self._queue = queue
        self._after = requeue_after_s
        self._budget_s = budget_s
        self._limit = limit
        self._clock = clock
        self._monotonic = monotonic

    def sweep(self) -> SweepReport:
        """One pass, shard by shard within its time budget; a job that cannot be sent now, or that the budget
        leaves, stays marked and is taken on the next pass."""
        report = SweepReport()
        deadline = self._monotonic() + self._budget_s
        cutoff = self._clock() - self._after
        taken = 0
        first = random.randrange(UNQUEUED_SHARDS)  # a budget cutting a pass short spares no shard
        for shard in ((first + i) % UNQUEUED_SHARDS for i in range(UNQUEUED_SHARDS)):
            if self._monotonic() >= deadline or taken >= self._limit:
                report.deferred_shards += 1
                continue
            job_ids = self._repo.unqueued_before(cutoff, limit=self._limit - taken, shards=[shard])
            taken += len(job_ids)
            for job_id in job_ids:
                if self._monotonic() >= deadline:
                    report.deferred += 1
                    continue
                try:
                    self._one(job_id, report)
                except (ClientError, BotoCoreError) as exc:
                    report.failed += 1
                    logger.warning("could not requeue a job; next pass", job_id=job_id, error=type(exc).__name__)
        if self._abandoned_after is not None:
            self._sweep_abandoned(report, deadline, self._clock() - self._abandoned_after)
        if report.requeued or report.failed or report.deferred or report.deferred_shards or report.abandoned:
            logger.warning(
                "requeue sweep",
                requeued=report.requeued,
                cleared=report.cleared,
                failed=report.failed,
                deferred=report.deferred,
                deferred_shards=report.deferred_shards,
                abandoned=report.abandoned,
            )
        return report

    def _sweep_abandoned(self, report: SweepReport, deadline: float, lapsed_before: float) -> None:
        try:
            running = self._repo.running_ids(limit=self._limit)
        except (ClientError, BotoCoreError) as exc:
            report.failed += 1
            logger.warning("could not list running jobs; next pass", error=type(exc).__name__)
            return
        for job_id in running:
            if self._monotonic() >= deadline:
                report.deferred += 1
                continue
            try:
                self._fail_if_abandoned(job_id, lapsed_before, report)
            except (ClientError, BotoCoreError) as exc:
                report.failed += 1
                logger.warning("could not check a running job; next pass", job_id=job_id, error=type(exc).__name__)

    def _fail_if_abandoned(self, job_id: str, lapsed_before: float, report: SweepReport) -> None:
        lease = self._repo.lease_until(job_id)
        if lease is None or lease >= lapsed_before:
            return  # held, or lapsed too recently: its message may still bring a worker
        try:
            job = self._repo.get(job_id)
            failed = self._repo.transition(
                job_id,
                JobStatus.FAILED,
                tenant=job.tenant,
                sources=[JobStatus.RUNNING],
                claim=Claim(attempt=job.attempt),
                error=ABANDONED_ERROR,
                lease_lapsed_before=lapsed_before,
            )
        except (InvalidTransition, JobNotFound):
            return  # claimed again, handed off or finished since the read
        report.abandoned += 1
        logger.error("abandoned job failed: its lease lapsed long ago and nothing ran it", job_id=job_id)
        if self._notify is not None:
            try:
                self._notify(failed)  # its webhook's execution joins the job's trace (start_notice)
            except (ClientError, BotoCoreError) as exc:
                report.failed += 1
                logger.error("abandoned job's webhook not started", job_id=job_id, error=type(exc).__name__)

    def _one(self, job_id: str, report: SweepReport) -> None:
        try:
            job = self._repo.get(job_id)
        except JobNotFound:
            report.cleared += 1  # deleted by the TTL meanwhile; its index entry went with it
            return
        if job.status == JobStatus.QUEUED:
            # A joined job its source never settled runs itself now (or one released by a settle that died before
            # counting it): the work it was given back when it joined is counted, once.
            collect_owed_work(self._budget, job)
            with continued(job.trace_header):  # the submit's trace, not this sweep's
                self._queue.send(QueueMessage.for_job(job))
            logger.warning("job requeued: its submission stored it but did not send it", job_id=job.job_id)
            report.requeued += 1
        else:
            report.cleared += 1
        self._repo.mark_enqueued(job.job_id)
