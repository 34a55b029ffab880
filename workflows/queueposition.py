"""Where a QUEUED job stands: its position, the images ahead of it, the workers running, an ETA and why it waits.

What "ahead" means. Every worker drains the one SQS queue and runs whatever it receives (a fleet loads one model),
so every queued job shares every worker. A standard queue hands messages out roughly oldest first, with no
promise; a worker holds a window of them (``window_images``: it stops receiving once that many images wait) and
batches by shape, oldest group first. So the jobs ahead of a job are the QUEUED jobs submitted before it, of any
tenant; a job can still be taken a little early (a same-shape batch started by an older job in the same window)
or late (SQS's loose order), by about one window.

The ETA is the time until a worker claims the job (its status turns RUNNING): a simulation of the workers' own
rules over the jobs ahead. Their batches are formed as the batcher forms them (same shape, up to
``max_batch_images``, within the window), laid onto the running workers in turn from when each is free, each batch
costing its images divided by the images/s the workers measured at its shape (a shape no worker ran yet is scaled
from the others by pixels x steps). A worker claims its next batch when it starts the one before, so a job is
claimed when the batch ahead of its own on that worker starts. Without a running worker the fleet first has to
start (``scale_up_s``); without any measured rate there is no ETA (``None``). The jobs ahead are read at most
``max_ahead`` deep: past that, position and ETA count only those (lower bounds) and the reason says "more than".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError

from shared.contracts import Job, JobStatus, QueueInfo
from shared.queuestate import Ahead, QueuedWork, WorkerStats

# template.yaml scales the fleet from zero through an alarm, then starts GPU instances and pulls the image:
# docs/deploy.md ("Scaling") measures 5-10 minutes. The midpoint, as an estimate.
logger = Logger(service="sdq", child=True)

SCALE_UP_S = 450.0
SCALE_UP_WORDS = "usually 5-10 minutes"


class QueueReads(Protocol):
    """What the estimate reads (:class:`shared.queuestate.QueueState`)."""

    def queued_ahead(self, job_id: str, limit: int) -> Ahead: ...

    def running(self, limit: int) -> list[QueuedWork]: ...

    def workers(self) -> list[WorkerStats]: ...


@dataclass(frozen=True)
class QueueRules:
    """The estimate's knobs."""

    max_ahead: int = 500  # the deepest the jobs ahead are read (the GET's read cost is bounded by it)
    max_running: int = 400
    stale_after_s: float = 30.0  # a worker item older than this is a worker no longer running
    scale_up_s: float = SCALE_UP_S
    scales_from_zero: bool = True  # whether a fleet with no worker starts one for a queued job (not `sdq up`'s)
    default_max_batch_images: int = 8  # before any worker published its own
    default_window_images: int = 16


class QueuePositions:
    """``info(job)``: the job's :class:`QueueInfo` from three index reads (see :mod:`shared.queuestate`)."""

    def __init__(
        self, reads: QueueReads, *, rules: QueueRules = QueueRules(), clock: Callable[[], float] = time.time
    ) -> None:
        self._reads = reads
        self._rules = rules
        self._clock = clock

    def info(self, job: Job) -> QueueInfo | None:
        """The queue info of a QUEUED job; None for a job in any other state (no reads then), and None when the
        reads fail (logged): a job's answer never fails for its queue info."""
        if job.status != JobStatus.QUEUED:
            return None
        try:
            ahead = self._reads.queued_ahead(job.job_id, self._rules.max_ahead)
            running = self._reads.running(self._rules.max_running)
            workers = self._reads.workers()
        except (ClientError, BotoCoreError) as exc:
            logger.warning("queue position unavailable", job_id=job.job_id, error=type(exc).__name__)
            return None
        mine = QueuedWork.from_request(job.job_id, job.tenant, job.request.model_dump())
        return estimate(mine, ahead, running, workers, now=self._clock(), rules=self._rules)


# -- the pure estimate -------------------------------------------------------------------------------------------


@dataclass
class _Lane:
    """One worker in the simulation: when it is free, and when its last batch started (its claim-ahead moment)."""

    free_at: float
    last_start: float | None


def estimate(
    job: QueuedWork,
    ahead: Ahead,
    running: Sequence[QueuedWork],
    workers: Sequence[WorkerStats],
    *,
    now: float,
    rules: QueueRules = QueueRules(),
) -> QueueInfo:
    """The queue info of ``job`` given the jobs ahead of it (oldest first), the jobs running and the worker items."""
    live = [w for w in workers if w.seen_at >= now - rules.stale_after_s and not w.stopping]
    rates = _Rates(workers)
    position = len(ahead.jobs) + 1
    images_ahead = sum(j.images for j in ahead.jobs)
    max_batch = max((w.max_batch_images for w in live), default=rules.default_max_batch_images)
    window = max((w.window_images for w in live), default=rules.default_window_images)

    if live:
        lanes = _lanes(live, running, rates, now, max_batch)
    elif rules.scales_from_zero:
        lanes = [_Lane(free_at=now + rules.scale_up_s, last_start=None)]
    else:
        lanes = []  # no worker will come on its own: no time to estimate
    claim_at: float | None = None
    if rates.known and lanes:
        for batch in batches_of([*ahead.jobs, job], max_batch_images=max_batch, window_images=window):
            lane = min(lanes, key=lambda x: x.free_at)
            start = lane.free_at
            claimed = start if lane.last_start is None else max(now, lane.last_start)
            lane.last_start, lane.free_at = start, start + rates.seconds(batch)
            if any(j.job_id == job.job_id for j in batch):
                claim_at = claimed
                break
    eta = None if claim_at is None else round(max(0.0, claim_at - now), 1)
    return QueueInfo(
        position=position,
        images_ahead=images_ahead,
        workers=len(live),
        eta_s=eta,
        reason=_reason(job, ahead, images_ahead, live, running, rates.known, rules.scales_from_zero),
    )


def batches_of(jobs: Sequence[QueuedWork], *, max_batch_images: int, window_images: int) -> list[list[QueuedWork]]:
    """The batches a worker makes of ``jobs`` (oldest first) as its receiver and batcher do: it holds jobs until
    ``window_images`` images wait, then takes the oldest job's shape and fills a batch with that shape's held jobs,
    oldest first, up to ``max_batch_images`` (a job larger than that runs alone)."""
    pending = list(jobs)
    held: list[QueuedWork] = []
    out: list[list[QueuedWork]] = []
    while pending or held:
        while pending and (not held or sum(j.images for j in held) < window_images):
            held.append(pending.pop(0))
        shape = held[0].shape
        batch: list[QueuedWork] = []
        room = max_batch_images
        for j in [h for h in held if h.shape == shape]:
            if not batch and j.images >= room:
                batch = [j]
                break
            if j.images <= room:
                batch.append(j)
                room -= j.images
            if room == 0:
                break
        taken = {id(j) for j in batch}
        held = [h for h in held if id(h) not in taken]
        out.append(batch)
    return out


class _Rates:
    """Seconds per image at each shape, from every worker item's measured images/s (stale ones too: they are the
    best guess of a fleet that starts again)."""

    def __init__(self, workers: Sequence[WorkerStats]) -> None:
        per_shape: dict[str, list[float]] = {}
        for w in workers:
            for shape, rate in w.rates.items():
                if rate.images_per_s > 0:
                    per_shape.setdefault(shape, []).append(rate.images_per_s)
        self._ips = {shape: sum(v) / len(v) for shape, v in per_shape.items()}
        # Pixel-steps per second over the measured shapes, for a shape none measured.
        work = [_pixel_steps(shape) * ips for shape, ips in self._ips.items() if _pixel_steps(shape)]
        self._pxps = sum(work) / len(work) if work else 0.0

    @property
    def known(self) -> bool:
        return bool(self._ips)

    def seconds(self, batch: Sequence[QueuedWork]) -> float:
        total = 0.0
        for j in batch:
            ips = self._ips.get(j.shape)
            if ips:
                total += j.images / ips
            elif self._pxps > 0:
                total += j.images * j.pixel_steps / self._pxps
        return total


def _pixel_steps(shape: str) -> int:
    try:
        w, h, rest = shape.split("x", 2)
        return int(w) * int(h) * int(rest.split("/", 1)[0])
    except ValueError:
        return 0


def _lanes(
    live: Sequence[WorkerStats], running: Sequence[QueuedWork], rates: _Rates, now: float, max_batch_images: int
) -> list[_Lane]:
    """Each live worker's lane: the rest of the batch its item says is on its GPU, then the running jobs beyond those
    batches (claimed ahead, or on a GPU whose item is a few seconds old), in batches, each on the lane free first."""
    lanes = []
    on_gpu_images = 0
    for w in live:
        if w.batch is None:
            lanes.append(_Lane(free_at=now, last_start=None))
            continue
        length = w.batch.estimated_s
        if length is None:
            length = rates.seconds([QueuedWork("", "", w.batch.images, w.batch.shape, _pixel_steps(w.batch.shape))])
        on_gpu_images += w.batch.images
        lanes.append(_Lane(free_at=max(now, w.batch.started_at + length), last_start=w.batch.started_at))
    beyond = _drop_images(running, on_gpu_images)
    for batch in batches_of(beyond, max_batch_images=max_batch_images, window_images=max_batch_images):
        lane = min(lanes, key=lambda x: x.free_at)
        lane.last_start = lane.free_at
        lane.free_at += rates.seconds(batch)
    return lanes


def _drop_images(jobs: Sequence[QueuedWork], images: int) -> list[QueuedWork]:
    """``jobs`` without their first ``images`` images (those the workers say are on their GPUs)."""
    rest = list(jobs)
    while rest and images >= rest[0].images:
        images -= rest.pop(0).images
    return rest


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _reason(
    job: QueuedWork,
    ahead: Ahead,
    images_ahead: int,
    live: Sequence[WorkerStats],
    running: Sequence[QueuedWork],
    rates_known: bool,
    scales_from_zero: bool = True,
) -> str:
    jobs_ahead = len(ahead.jobs)
    count = f"more than {jobs_ahead} jobs" if ahead.more else _plural(jobs_ahead, "job")
    yours = sum(1 for j in ahead.jobs if j.tenant == job.tenant)
    of_yours = f" ({yours} of them yours)" if yours else ""
    if not live:
        start = (
            f"No worker is running: the fleet is scaling up from zero ({SCALE_UP_WORDS})"
            if scales_from_zero
            else "No worker is running, and none starts on its own: this job waits until one does"
        )
        if jobs_ahead:
            return f"{start}; then {count}{of_yours} with {_plural(images_ahead, 'image')} run before this one."
        return f"{start}; this job is next."
    fleet = _plural(len(live), "worker")
    unmeasured = "" if rates_known else " No throughput measured yet, so no time estimate."
    if jobs_ahead:
        return (
            f"Waiting for {count}{of_yours} with {_plural(images_ahead, 'image')} ahead of it; "
            f"{fleet} running.{unmeasured}"
        )
    if running or any(w.batch is not None for w in live):
        return f"Next in line: waiting for the batch ahead to finish on {fleet}.{unmeasured}"
    return f"Next in line: a worker takes it within moments.{unmeasured}"
