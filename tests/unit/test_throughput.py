"""The worker's throughput item (workflows/generation/throughput.py): what it measures and when it is written."""

from __future__ import annotations

import threading
import time

import pytest
from botocore.exceptions import ClientError

from shared.queuestate import WorkerStats
from tests.unit.workerfakes import held
from workflows.generation.batchreport import BatchReport
from workflows.generation.heldmessages import Held
from workflows.generation.throughput import Throughput


class RecordingStore:
    def __init__(self, fail: bool = False) -> None:
        self.published: list[WorkerStats] = []
        self.threads: set[str] = set()
        self.fail = fail
        self.written = threading.Event()

    def publish(self, stats: WorkerStats) -> None:
        self.threads.add(threading.current_thread().name)
        if self.fail:
            raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException"}}, "UpdateItem")
        self.published.append(stats)
        self.written.set()


def throughput(store: RecordingStore | None, clock: list[float], **kw: float) -> Throughput:
    return Throughput(store, worker_id="w1", max_batch_images=4, window_images=8, clock=lambda: clock[0], **kw)


def batch(n: int, steps: int = 4) -> list[Held]:
    return [held(width=256, height=256, num_inference_steps=steps) for _ in range(n)]


def test_a_clean_batch_sets_its_shapes_rate_and_the_next_batch_gets_an_estimate() -> None:
    clock = [100.0]
    t = throughput(None, clock)
    jobs = batch(4)
    t.batch_started(jobs)
    running = t.snapshot().batch
    assert running is not None
    assert (running.images, running.estimated_s) == (4, None)  # nothing measured yet
    t.batch_finished(jobs, BatchReport(jobs=4, images=4, seconds=8.0))  # a cold first call: 0.5 images/s
    stats = t.snapshot()
    assert stats.batch is None
    (shape, rate), *_ = stats.rates.items()
    assert shape == "256x256x4/euler_a"
    assert (rate.images_per_s, rate.batches) == (0.5, 1)
    t.batch_started(jobs)
    assert t.snapshot().batch.estimated_s == 8.0  # type: ignore[union-attr]
    # The second batch replaces the first (a shape's first call pays one-time costs): 0.5 s an image.
    t.batch_finished(jobs, BatchReport(jobs=4, images=4, seconds=2.0))
    assert t.snapshot().rates[shape].images_per_s == 2.0
    # From the third on, seconds per image are averaged, the newest weighing 0.3: 0.25 s against 0.5.
    t.batch_finished(jobs, BatchReport(jobs=4, images=4, seconds=1.0))
    assert t.snapshot().rates[shape].images_per_s == pytest.approx(1 / (0.3 * 0.25 + 0.7 * 0.5), abs=1e-3)
    assert t.snapshot().rates[shape].batches == 3


def test_failed_or_cancelled_batches_are_not_measured() -> None:
    t = throughput(None, [0.0])
    jobs = batch(2)
    t.batch_finished(jobs, BatchReport(jobs=2, images=2, seconds=9.0, failed=1))
    t.batch_finished(jobs, BatchReport(jobs=2, images=2, seconds=0.1, cancelled=1))
    t.batch_finished(jobs, None)  # no claim won
    assert t.snapshot().rates == {}


def test_the_item_keeps_only_the_most_recent_shapes() -> None:
    t = throughput(None, [0.0])
    for steps in range(1, 21):
        t.batch_finished(batch(1, steps), BatchReport(jobs=1, images=1, seconds=1.0))
    shapes = list(t.snapshot().rates)
    assert len(shapes) == 16
    assert shapes[-1] == "256x256x20/euler_a"
    assert "256x256x1/euler_a" not in shapes


def test_writes_happen_on_the_publisher_thread_at_most_every_min_gap_and_the_last_says_stopping() -> None:
    store = RecordingStore()
    clock = [50.0]
    t = throughput(store, clock, interval_s=30.0, min_gap_s=0.3)
    jobs = batch(2)
    t.batch_started(jobs)  # before start: memory only
    assert store.published == []
    t.start()
    assert store.written.wait(5)
    for _ in range(20):  # a burst of batches: far fewer writes than changes
        t.batch_started(jobs)
        t.batch_finished(jobs, BatchReport(jobs=2, images=2, seconds=0.5))
    time.sleep(0.5)
    t.stop()
    assert store.threads == {"sdq-throughput", threading.current_thread().name}
    # Generous: one at start, one per min gap while the 20 changes came in, plus the final one.
    assert 2 <= len(store.published) <= 8
    assert store.published[-1].stopping is True
    assert store.published[-1].batch is None
    assert store.published[-1].rates["256x256x4/euler_a"].images_per_s == 4.0
    assert all(s.seen_at == 50.0 and s.worker_id == "w1" for s in store.published)


def test_a_hard_stop_writes_nothing_more() -> None:
    store = RecordingStore()
    t = throughput(store, [0.0], interval_s=30.0, min_gap_s=0.01)
    t.start()
    assert store.written.wait(5)
    t.stop(publish=False)
    time.sleep(0.1)
    assert [s.stopping for s in store.published] == [False]


def test_a_failed_write_is_logged_and_never_raised() -> None:
    store = RecordingStore(fail=True)
    t = throughput(store, [0.0], interval_s=0.05, min_gap_s=0.01)
    t.start()
    time.sleep(0.2)
    t.stop()  # does not raise either
    assert store.published == []
    assert "sdq-throughput" in store.threads
