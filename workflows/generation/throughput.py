"""The worker's throughput item: images/s per shape and the batch on the GPU, published for queue ETAs.

The GPU thread only records (:meth:`Throughput.batch_started`, :meth:`Throughput.batch_finished`: a few dict
updates under a lock); a thread of its own writes the worker item (``shared/queuestate.py``) every ``interval_s``,
and sooner after a batch starts or ends, but never more often than every ``min_gap_s``. A failed write is logged
and tried again at the next turn: an ETA may be stale for a while, generation never waits for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError

from shared.queuestate import RunningBatch, ShapeRate, WorkerStats, shape_key
from workflows.generation.batchreport import BatchReport
from workflows.generation.heldmessages import Held

logger = Logger(service="sdq-worker")

MAX_SHAPES = 16  # the shapes a worker item keeps (the most recently measured): the item stays small


class StatsStore(Protocol):
    def publish(self, stats: WorkerStats) -> None: ...


class Throughput:
    def __init__(
        self,
        store: StatsStore | None,
        *,
        worker_id: str,
        max_batch_images: int,
        window_images: int,
        interval_s: float = 5.0,
        min_gap_s: float = 2.0,
        smoothing: float = 0.3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._interval_s = interval_s
        self._min_gap_s = min_gap_s
        self._smoothing = smoothing  # weight of the newest batch in the seconds-per-image average
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._stopped = threading.Event()
        self._stats = WorkerStats(
            worker_id=worker_id, seen_at=0.0, max_batch_images=max_batch_images, window_images=window_images
        )
        self._thread: threading.Thread | None = None

    # -- the GPU thread's side (memory only) --------------------------------------------------------------

    def batch_started(self, jobs: Sequence[Held]) -> None:
        """A batch of ``jobs`` goes onto the GPU now."""
        if not jobs:
            return
        shape = _shape(jobs)
        images = sum(h.request.num_images for h in jobs)
        with self._lock:
            rate = self._stats.rates.get(shape)
            estimated = images / rate.images_per_s if rate and rate.images_per_s > 0 else None
            batch = RunningBatch(started_at=self._clock(), images=images, shape=shape, estimated_s=estimated)
            self._stats = replace(self._stats, batch=batch)
        self._changed.set()

    def batch_finished(self, jobs: Sequence[Held], report: BatchReport | None) -> None:
        """The batch is off the GPU; a clean one (nothing failed or cancelled) updates its shape's images/s."""
        with self._lock:
            rates = dict(self._stats.rates)
            if jobs and report is not None and report.seconds > 0 and not report.failed and not report.cancelled:
                shape = _shape(jobs)
                per_image = report.seconds / report.images
                old = rates.pop(shape, None)
                size = float(report.images)
                if old is not None and old.batches > 1:
                    # Seconds per image are averaged, not images/s: an ETA sums seconds, and one slow batch must not
                    # count for less than one fast one. The first batch of a shape is not averaged in but replaced
                    # by the second: it pays one-time costs (lazy initialisation, kernel selection, compiles).
                    a = self._smoothing
                    per_image = a * per_image + (1 - a) / old.images_per_s
                    size = a * size + (1 - a) * old.batch_images
                batches = old.batches + 1 if old is not None else 1
                rate = ShapeRate(round(1 / per_image, 4), round(size, 2), batches, round(self._clock(), 3))
                rates[shape] = rate  # re-inserted last: the dict keeps the most recent shapes at its end
                while len(rates) > MAX_SHAPES:
                    rates.pop(next(iter(rates)))
            self._stats = replace(self._stats, rates=rates, batch=None)
        self._changed.set()

    def snapshot(self) -> WorkerStats:
        with self._lock:
            return self._stats

    # -- the publishing thread --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the publishing thread; the first write goes out at once (the worker is running)."""
        self._thread = threading.Thread(target=self._run, name="sdq-throughput", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = float("-inf")
        while not self._stopped.is_set():
            wait = max(0.0, last + self._min_gap_s - time.monotonic())
            if wait > 0 and self._stopped.wait(wait):
                break
            self._changed.clear()
            self._publish()
            last = time.monotonic()
            self._changed.wait(self._interval_s)

    def stop(self, *, publish: bool = True) -> None:
        """Stop publishing and, with ``publish``, say so in the item (readers count this worker out at once; without
        it, 30 s later). A hard stop passes False: it must not wait for a table that may not answer."""
        self._stopped.set()
        self._changed.set()
        if not publish:
            return
        if self._thread is not None:
            self._thread.join(timeout=5)  # its write in flight lands first, so "stopping" is the last word
        with self._lock:
            self._stats = replace(self._stats, stopping=True, batch=None)
        self._publish()

    def _publish(self) -> None:
        if self._store is None:
            return
        with self._lock:
            stats = replace(self._stats, seen_at=self._clock())
        try:
            self._store.publish(stats)
        except (ClientError, BotoCoreError) as exc:
            logger.warning("could not publish the worker's throughput", error=type(exc).__name__)


def _shape(jobs: Sequence[Held]) -> str:
    req = jobs[0].request
    return shape_key(req.width, req.height, req.num_inference_steps, req.scheduler)
