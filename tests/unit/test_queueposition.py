"""The queue position and ETA of a QUEUED job (workflows/queueposition.py): pure computation over index reads."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from botocore.exceptions import ClientError

from shared.contracts import GenerationRequest, Job, JobStatus, utcnow
from shared.queuestate import Ahead, QueuedWork, RunningBatch, ShapeRate, WorkerStats, shape_key
from workflows.queueposition import QueuePositions, QueueRules, batches_of, estimate

NOW = 1_000_000.0
SHAPE = shape_key(256, 256, 4, "euler_a")


def work(job_id: str, images: int = 1, *, tenant: str = "other", width: int = 256, steps: int = 4) -> QueuedWork:
    request = {"width": width, "height": 256, "num_inference_steps": steps, "scheduler": "euler_a"}
    return QueuedWork.from_request(job_id, tenant, {**request, "num_images": images})


def worker(
    worker_id: str = "w1",
    *,
    ips: float | None = 2.0,
    seen_ago_s: float = 1.0,
    max_batch: int = 2,
    window: int = 4,
    batch: RunningBatch | None = None,
    stopping: bool = False,
) -> WorkerStats:
    rates = {SHAPE: ShapeRate(ips, max_batch, 3, NOW - 5)} if ips else {}
    return WorkerStats(worker_id, NOW - seen_ago_s, max_batch, window, rates, batch, stopping)


def queue(n: int, *, tenant: str = "other", images: int = 1) -> list[QueuedWork]:
    return [work(f"j{i:02d}", images, tenant=tenant) for i in range(n)]


MINE = work("zz-mine", tenant="me")


def test_an_empty_queue_with_an_idle_worker_starts_the_job_at_once() -> None:
    info = estimate(MINE, Ahead([], more=False), [], [worker()], now=NOW)
    assert (info.position, info.images_ahead, info.workers, info.eta_s) == (1, 0, 1, 0.0)
    assert info.reason == "Next in line: a worker takes it within moments."


def test_a_backlog_is_batched_and_claimed_when_the_batch_before_starts() -> None:
    # 6 one-image jobs ahead, batches of 2 at 2 images/s (1 s a batch): batches start at 0, 1, 2 and this job's
    # batch at 3; the worker claims it when it starts the batch before (2 s), which is when the job turns RUNNING.
    info = estimate(MINE, Ahead(queue(6), more=False), [], [worker()], now=NOW)
    assert (info.position, info.images_ahead, info.workers) == (7, 6, 1)
    assert info.eta_s == pytest.approx(2.0)
    assert info.reason == "Waiting for 6 jobs with 6 images ahead of it; 1 worker running."


def test_two_workers_halve_the_wait() -> None:
    one = estimate(MINE, Ahead(queue(12), more=False), [], [worker()], now=NOW)
    two = estimate(MINE, Ahead(queue(12), more=False), [], [worker("w1"), worker("w2")], now=NOW)
    assert two.workers == 2
    assert one.eta_s == pytest.approx(5.0)
    assert two.eta_s == pytest.approx(2.0)  # batches 1..6 over two lanes; this job's batch follows one at 2 s


def test_position_and_eta_fall_as_the_jobs_ahead_finish() -> None:
    ahead = queue(10)
    seen = []
    for done in range(len(ahead) + 1):
        info = estimate(MINE, Ahead(ahead[done:], more=False), [], [worker()], now=NOW)
        seen.append((info.position, info.eta_s))
    positions = [p for p, _ in seen]
    etas = [e for _, e in seen]
    assert positions == list(range(11, 0, -1))
    assert all(a is not None and b is not None and b <= a for a, b in itertools.pairwise(etas))
    assert etas[-1] == 0.0


def test_the_batch_on_the_gpu_and_the_batch_claimed_ahead_come_first() -> None:
    # The worker started a 2-image batch 0.4 s ago (1 s long) and has claimed the next 2 jobs ahead (RUNNING, not
    # generating): those 4 running jobs are 2 s of work, 0.6 s of it still left on the GPU, then 1 s claimed ahead.
    busy = worker(batch=RunningBatch(started_at=NOW - 0.4, images=2, shape=SHAPE, estimated_s=1.0))
    running = queue(4)
    info = estimate(MINE, Ahead([], more=False), running, [busy], now=NOW)
    assert info.position == 1
    # This job's batch starts at 1.6 s; it is claimed when the batch claimed ahead starts, at 0.6 s.
    assert info.eta_s == pytest.approx(0.6)
    assert info.reason == "Next in line: waiting for the batch ahead to finish on 1 worker."


def test_running_jobs_an_old_worker_item_does_not_show_still_come_first() -> None:
    # The item says idle (written before its batches began), yet 4 jobs are RUNNING: two batches, the first taken
    # to start now, the second claimed ahead; this job is claimed when that second one starts.
    info = estimate(MINE, Ahead([], more=False), queue(4), [worker()], now=NOW)
    assert info.eta_s == pytest.approx(1.0)


def test_no_worker_running_waits_for_the_scale_up_and_says_so() -> None:
    stale = worker(seen_ago_s=600)  # its rates remain the best guess of the fleet's speed
    info = estimate(MINE, Ahead(queue(2), more=False), [], [stale], now=NOW, rules=QueueRules(scale_up_s=450))
    assert info.workers == 0
    assert info.eta_s == pytest.approx(450.0)  # the two jobs ahead make the first batch; this one is claimed ahead
    assert info.reason.startswith("No worker is running: the fleet is scaling up from zero (usually 5-10 minutes)")
    assert "2 jobs with 2 images run before this one" in info.reason


def test_where_no_fleet_scales_up_no_worker_running_is_no_time_and_says_so() -> None:
    """The local stack started with `--no-worker`: nothing will start a worker on its own."""
    stale = worker(seen_ago_s=600)
    rules = QueueRules(scale_up_s=450, scales_from_zero=False)
    info = estimate(MINE, Ahead(queue(2), more=False), [], [stale], now=NOW, rules=rules)
    assert info.workers == 0
    assert info.eta_s is None
    assert info.reason.startswith("No worker is running, and none starts on its own")
    assert "scaling up" not in info.reason


def test_a_stopping_worker_is_not_counted() -> None:
    info = estimate(MINE, Ahead([], more=False), [], [worker(stopping=True)], now=NOW)
    assert info.workers == 0
    assert "scaling up from zero" in info.reason


def test_without_a_measured_rate_there_is_no_eta() -> None:
    info = estimate(MINE, Ahead(queue(3), more=False), [], [worker(ips=None)], now=NOW)
    assert info.eta_s is None
    assert info.reason.endswith("No throughput measured yet, so no time estimate.")


def test_a_shape_nobody_ran_is_scaled_from_the_measured_ones_by_pixels_and_steps() -> None:
    # 8 steps instead of 4: twice the work per image, so 1 image/s where the measured shape does 2.
    big = [work("j00", steps=8), work("j01", steps=8), work("j02", steps=8)]
    info = estimate(work("zz", steps=8), Ahead(big, more=False), [], [worker(max_batch=1, window=1)], now=NOW)
    assert info.eta_s == pytest.approx(2.0)  # three 1 s batches; claimed when the third starts


def test_the_batcher_takes_the_oldest_shape_and_fills_it_within_its_window() -> None:
    a1, b1, a2, b2, a3 = work("a1"), work("b1", width=512), work("a2"), work("b2", width=512), work("a3")
    batches = batches_of([a1, b1, a2, b2, a3], max_batch_images=2, window_images=4)
    assert [[j.job_id for j in b] for b in batches] == [["a1", "a2"], ["b1", "b2"], ["a3"]]
    # A job larger than a batch runs alone.
    alone = batches_of([work("x", 4), work("y")], max_batch_images=2, window_images=4)
    assert [[j.job_id for j in b] for b in alone] == [["x"], ["y"]]


def test_the_reason_counts_the_tenants_own_jobs_and_a_read_cut_short() -> None:
    ahead = [*queue(3, tenant="me"), *queue(2)]
    info = estimate(MINE, Ahead(ahead, more=True), [], [worker()], now=NOW)
    assert info.reason.startswith("Waiting for more than 5 jobs (3 of them yours) with 5 images ahead of it")


@dataclass
class FakeReads:
    ahead: list[QueuedWork] = field(default_factory=list)
    running_jobs: list[QueuedWork] = field(default_factory=list)
    fleet: list[WorkerStats] = field(default_factory=list)
    calls: list[tuple[str, object]] = field(default_factory=list)

    def queued_ahead(self, job_id: str, limit: int) -> Ahead:
        self.calls.append(("ahead", (job_id, limit)))
        return Ahead(self.ahead[:limit], more=len(self.ahead) > limit)

    def running(self, limit: int) -> list[QueuedWork]:
        self.calls.append(("running", limit))
        return self.running_jobs

    def workers(self) -> list[WorkerStats]:
        self.calls.append(("workers", None))
        return self.fleet


def job(status: JobStatus) -> Job:
    request = GenerationRequest.model_validate(
        {"prompt": "a fox", "width": 256, "height": 256, "num_inference_steps": 4, "num_images": 2},
        context={"trusted": True},
    ).normalised()
    return Job(
        job_id="01KAXAAAAAAAAAAAAAAAAAAAAA",
        tenant="me",
        status=status,
        request=request,
        created_at=utcnow(),
        cache_key=request.cache_key(),
        expires_at=2_000_000_000,
    )


def test_positions_read_three_bounded_queries_for_a_queued_job_and_nothing_otherwise() -> None:
    reads = FakeReads(ahead=queue(7), fleet=[worker()])
    positions = QueuePositions(reads, rules=QueueRules(max_ahead=5), clock=lambda: NOW)
    info = positions.info(job(JobStatus.QUEUED))
    assert info is not None
    assert (info.position, info.images_ahead) == (6, 5)
    assert [c[0] for c in reads.calls] == ["ahead", "running", "workers"]
    assert reads.calls[0] == ("ahead", ("01KAXAAAAAAAAAAAAAAAAAAAAA", 5))
    reads.calls.clear()
    for status in (JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.CANCELLED):
        assert positions.info(job(status)) is None
    assert reads.calls == []


def test_a_failed_read_leaves_the_queue_info_out_instead_of_failing_the_answer() -> None:
    class Throttled(FakeReads):
        def running(self, limit: int) -> list[QueuedWork]:
            raise ClientError({"Error": {"Code": "ThrottlingException"}}, "Query")

    assert QueuePositions(Throttled(), clock=lambda: NOW).info(job(JobStatus.QUEUED)) is None
