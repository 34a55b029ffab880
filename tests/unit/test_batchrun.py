"""The batch run's error handling: a batch that runs out of memory (or fails) is split in halves until the bad
job stands alone; that job fails with the right code, the others are handed off; jobs cancelled during a failed
call are let go, never retried; a batch cancelled whole is dropped; a device that fails job after job (not a job
that fails alone) hands the jobs back for other workers and counts itself faulty."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import SimpleNamespace
from typing import cast

import boto3
import pytest
from PIL import Image as PILImage
from PIL.Image import Image

from shared.contracts import Job, JobErrorCode
from shared.jobs import JobsRepository
from tests.unit.workerfakes import claimed, held
from workflows.generation.batchreport import GpuUse
from workflows.generation.batchrun import BatchRunner
from workflows.generation.claims import ClaimedBatch
from workflows.generation.heldmessages import Held
from workflows.generation.loras import LoraNotServed, LoraUnavailable
from workflows.generation.pipeline import BatchShape, GenerationOOM, ImageJob
from workflows.generation.previews import Captured
from workflows.generation.progress import ProgressRecorder, ProgressWriter
from workflows.generation.progressevents import ProgressEvents


class FaultyGenerator:
    """Runs out of memory above ``oom_above`` images; a prompt containing ``poison`` fails the whole call; the
    jobs in ``cancel_during`` are found cancelled (as a progress write would) during the first call."""

    model_name = "fake"

    def __init__(self, oom_above: int, cancel_during: Sequence[Held] = ()) -> None:
        self.oom_above = oom_above
        self.cancel_during = list(cancel_during)
        self.calls: list[list[str]] = []

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
    ) -> dict[str, list[Image]]:
        self.calls.append([j.key for j in jobs])
        for h in self.cancel_during:
            h.dropped = True
        self.cancel_during = []
        images = sum(j.num_images for j in jobs)
        if images > self.oom_above:
            raise GenerationOOM(images, shape.width, shape.height, "injected")
        if any("poison" in j.prompt for j in jobs):
            raise RuntimeError("injected: a bad prompt")
        return {j.key: [PILImage.new("RGB", (8, 8))] * j.num_images for j in jobs}


class RecordingHandOff:
    def __init__(self) -> None:
        self.completed: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.dropped: list[str] = []
        self.released: list[str] = []
        self.delays: dict[str, int] = {}
        self.uses: dict[str, GpuUse] = {}

    def complete_later(
        self, last_write: Future[None] | None, held: Held, images: list[Image], use: GpuUse | None = None
    ) -> None:
        assert len(images) == held.request.num_images
        self.completed.append(held.job_id)
        assert use is not None
        self.uses[held.job_id] = use

    def fail_later(self, held: Held, code: JobErrorCode, message: str) -> None:
        self.failed.append((held.job_id, code))

    def drop_later(self, held: Held) -> None:
        self.dropped.append(held.job_id)

    def drop(self, held: Held) -> None:
        self.dropped.append(held.job_id)

    def release_later(self, held: Held, delay_s: int = 0) -> None:
        self.released.append(held.job_id)
        self.delays[held.job_id] = delay_s


@pytest.fixture
def pools() -> Iterator[tuple[ThreadPoolExecutor, ThreadPoolExecutor]]:
    writers, table = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    yield writers, table
    writers.shutdown()
    table.shutdown()


def run(
    generator: FaultyGenerator, jobs: list[Held], pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor]
) -> tuple[RecordingHandOff, BatchRunner]:
    hard_stop = threading.Event()
    progress = ProgressRecorder(
        # Never reached: the fake generator makes no step callback, so no progress is written.
        JobsRepository(boto3.client("dynamodb", region_name="us-east-1"), "unused"),
        worker_id="w",
        interval_s=1.0,
        hard_stop=hard_stop,
        writers=pools[0],
        table_pool=pools[1],
    )
    handoff = RecordingHandOff()
    runner = BatchRunner(generator, progress, handoff, hard_stop)
    report = runner.run(ClaimedBatch(jobs, seconds=0.25))
    assert report is not None
    assert report.jobs == len(jobs)
    assert report.claim_s == 0.25
    return handoff, runner


def ids(*jobs: Held) -> list[str]:
    return [h.job_id for h in jobs]


def test_an_oom_splits_the_batch_in_halves_and_every_job_completes(
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
) -> None:
    jobs = [claimed(held()) for _ in range(4)]
    gpu = FaultyGenerator(oom_above=2)
    handoff, runner = run(gpu, jobs, pools)
    assert gpu.calls == [ids(*jobs), ids(*jobs[:2]), ids(*jobs[2:])]
    assert handoff.completed == ids(*jobs)
    assert handoff.failed == handoff.dropped == []
    assert runner.gpu_seconds > 0


def test_a_job_too_big_for_memory_fails_alone_with_out_of_memory(
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
) -> None:
    small_a, big, small_b = claimed(held()), claimed(held(num_images=3)), claimed(held())
    gpu = FaultyGenerator(oom_above=2)
    handoff, _ = run(gpu, [small_a, big, small_b], pools)
    assert gpu.calls == [ids(small_a, big, small_b), ids(small_a), ids(big, small_b), ids(big), ids(small_b)]
    assert handoff.failed == [(big.job_id, "OUT_OF_MEMORY")]
    assert handoff.completed == ids(small_a, small_b)


def test_an_error_is_isolated_to_the_job_that_causes_it(pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor]) -> None:
    good, bad, other = claimed(held()), claimed(held(prompt="poison")), claimed(held())
    handoff, _ = run(FaultyGenerator(oom_above=8), [good, bad, other], pools)
    assert handoff.failed == [(bad.job_id, "GENERATION_FAILED")]
    assert sorted(handoff.completed) == sorted(ids(good, other))


def test_a_job_cancelled_during_a_failed_call_is_let_go_and_not_generated_again(
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
) -> None:
    jobs = [claimed(held()) for _ in range(3)]
    gpu = FaultyGenerator(oom_above=2, cancel_during=[jobs[0]])
    handoff, _ = run(gpu, jobs, pools)
    assert handoff.dropped == ids(jobs[0])
    assert gpu.calls[1:] == [ids(jobs[1]), ids(jobs[2])]  # the halves hold only the live jobs
    assert handoff.completed == ids(jobs[1], jobs[2])


def test_a_batch_whose_every_job_was_cancelled_is_stopped_and_dropped(
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
) -> None:
    jobs = [claimed(held()) for _ in range(2)]

    class CancelledGenerator(FaultyGenerator):
        def generate(
            self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
        ) -> dict[str, list[Image]]:
            for h in self.cancel_during:
                h.dropped = True
            assert on_step is not None
            on_step(1, 2)  # every job is dropped: the callback stops the call
            raise AssertionError("not stopped")

    gpu = CancelledGenerator(oom_above=8, cancel_during=jobs)
    handoff, _ = run(gpu, jobs, pools)
    assert handoff.dropped == ids(*jobs)
    assert handoff.completed == handoff.failed == []


class TimedGenerator(FaultyGenerator):
    """Each call takes 10 ms per image (a GPU's time grows with the images it makes)."""

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
    ) -> dict[str, list[Image]]:
        time.sleep(0.01 * sum(j.num_images for j in jobs))
        return super().generate(jobs, shape, on_step)


def test_each_job_is_charged_its_share_of_the_batch_by_images(
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
) -> None:
    one, three = claimed(held()), claimed(held(num_images=3))
    handoff, runner = run(TimedGenerator(oom_above=8), [one, three], pools)
    a, b = handoff.uses[one.job_id], handoff.uses[three.job_id]
    assert (a.batch_jobs, a.batch_images) == (b.batch_jobs, b.batch_images) == (2, 4)
    assert b.gpu_s == pytest.approx(3 * a.gpu_s)
    assert a.gpu_s + b.gpu_s == pytest.approx(runner.gpu_seconds)


def test_a_job_that_ran_in_a_failed_call_is_charged_for_it_too(
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
) -> None:
    jobs = [claimed(held()) for _ in range(4)]
    handoff, runner = run(TimedGenerator(oom_above=2), jobs, pools)  # 4 images fail, then 2 + 2 succeed
    uses = [handoff.uses[h.job_id] for h in jobs]
    assert all((u.batch_jobs, u.batch_images) == (2, 2) for u in uses)  # the call that made its images
    assert sum(u.gpu_s for u in uses) == pytest.approx(runner.gpu_seconds)
    assert all(
        u.gpu_s > runner.gpu_seconds / 8 for u in uses
    )  # a quarter of the failed call each, plus half of its own


def test_an_image_batch_on_a_runner_with_no_bucket_fails_mode_not_served_and_never_runs_as_text(
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
) -> None:
    """This hand-off names no media bucket and no input reader is given: the inputs cannot be read."""
    digest = "sha256:" + "0" * 64  # a stored input, as submit records it
    jobs = [claimed(held(image=digest, strength=0.5)) for _ in range(2)]
    gpu = FaultyGenerator(oom_above=8)
    handoff, _ = run(gpu, jobs, pools)
    assert gpu.calls == []
    assert handoff.failed == [(h.job_id, JobErrorCode.MODE_NOT_SERVED) for h in jobs]
    assert handoff.completed == []


class BrokenDevice(FaultyGenerator):
    """A GPU after a sticky CUDA error (an illegal memory access, an Xid): every call fails at once."""

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
    ) -> dict[str, list[Image]]:
        self.calls.append([j.key for j in jobs])
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def runner_for(
    generator: FaultyGenerator, pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor]
) -> tuple[RecordingHandOff, BatchRunner]:
    progress = ProgressRecorder(
        JobsRepository(boto3.client("dynamodb", region_name="us-east-1"), "unused"),
        worker_id="w",
        interval_s=1.0,
        hard_stop=threading.Event(),
        writers=pools[0],
        table_pool=pools[1],
    )
    handoff = RecordingHandOff()
    runner = BatchRunner(generator, progress, handoff, threading.Event(), max_failures_in_a_row=3, max_attempts=3)
    return handoff, runner


def test_a_broken_device_does_not_fail_the_backlog_and_counts_itself_faulty(
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
) -> None:
    gpu = BrokenDevice(oom_above=8)
    handoff, runner = runner_for(gpu, pools)
    batches = [[claimed(held()) for _ in range(8)] for _ in range(3)]
    for jobs in batches:
        runner.run(ClaimedBatch(jobs, seconds=0.0))
    every = [h.job_id for jobs in batches for h in jobs]
    # The first job to fail alone cannot be told from a bad job (the device had worked until then) and fails; the
    # next ones fail alone right after it, so they go back to the queue for other workers, attempt counted.
    assert handoff.failed == [(every[0], JobErrorCode.GENERATION_FAILED)]
    assert sorted(handoff.released) == sorted(every[1:])
    assert handoff.completed == handoff.dropped == []
    # Three jobs failed alone in a row: the device is faulty, and nothing more is run on it.
    assert runner.faulty
    assert len([c for c in gpu.calls if len(c) == 1]) == 3
    assert not any(set(c) & set(ids(*batches[1], *batches[2])) for c in gpu.calls)


class LoraMissing(FaultyGenerator):
    """A worker whose registry lacks the LoRA that jobs with ``lora`` in their prompt name: those fail at once."""

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
    ) -> dict[str, list[Image]]:
        if any("lora" in j.prompt for j in jobs):
            self.calls.append([j.key for j in jobs])
            raise LoraNotServed("style-x", "fake", "not in this worker's registry")
        return super().generate(jobs, shape, on_step)


def test_jobs_failing_for_their_own_reason_never_count_the_device_faulty(
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
) -> None:
    """A tenant's jobs that fail by themselves (a LoRA this worker does not serve) fail, one by one; the good jobs
    beside them run, and the worker goes on."""
    handoff, runner = runner_for(LoraMissing(oom_above=8), pools)
    bad = [claimed(held(prompt="lora")) for _ in range(4)]
    good = [claimed(held()) for _ in range(3)]
    runner.run(ClaimedBatch([*bad, *good], seconds=0.0))
    assert sorted(handoff.failed) == sorted((h.job_id, JobErrorCode.GENERATION_FAILED) for h in bad)
    assert sorted(handoff.completed) == sorted(ids(*good))
    assert handoff.released == []
    assert not runner.faulty


class LoraFetchFailing(FaultyGenerator):
    """A worker whose LoRA fetch fails for a passing reason (S3 throttling): every call with the LoRA fails."""

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
    ) -> dict[str, list[Image]]:
        self.calls.append([j.key for j in jobs])
        raise LoraUnavailable("style-x", "SlowDown (503)")


def test_a_lora_that_cannot_be_fetched_now_sends_the_batch_back_whole(
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
) -> None:
    """No job is failed for a passing outage, no split fetches again, and the device is not blamed; a job on its
    last claim fails (no other try would come)."""
    gpu = LoraFetchFailing(oom_above=16)
    handoff, runner = runner_for(gpu, pools)
    jobs = [claimed(held()) for _ in range(3)]
    last_try = claimed(held(), attempt=3)
    runner.run(ClaimedBatch([*jobs, last_try], seconds=0.0))
    assert len(gpu.calls) == 1
    assert sorted(handoff.released) == sorted(ids(*jobs))
    assert {handoff.delays[h.job_id] for h in jobs} == {30}  # not straight back into the same outage
    assert handoff.failed == [(last_try.job_id, JobErrorCode.GENERATION_FAILED)]
    assert (runner.faulty, runner.failed_in_a_row) == (False, 0)


def test_a_success_between_two_jobs_failing_alone_blames_each_job(
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
) -> None:
    handoff, runner = runner_for(FaultyGenerator(oom_above=8), pools)
    for _ in range(4):  # a bad job in each batch, with good ones: the device works between the failures
        bad, good = claimed(held(prompt="poison")), claimed(held())
        runner.run(ClaimedBatch([bad, good], seconds=0.0))
    assert [code for _, code in handoff.failed] == [JobErrorCode.GENERATION_FAILED] * 4
    assert handoff.released == []
    assert not runner.faulty


def test_two_bad_jobs_in_a_row_hand_the_second_back_unless_it_has_no_attempt_left(
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
) -> None:
    handoff, runner = runner_for(FaultyGenerator(oom_above=8), pools)
    first, second, good = claimed(held(prompt="poison")), claimed(held(prompt="poison")), claimed(held())
    runner.run(ClaimedBatch([first, second, good], seconds=0.0))
    assert handoff.failed == [(first.job_id, "GENERATION_FAILED")]
    assert handoff.released == [second.job_id]  # failed right after the first: this worker's fault as likely
    assert handoff.completed == [good.job_id]
    # A job on its last claim fails for good, even right after another: no other worker would try it again.
    first, last_try = claimed(held(prompt="poison")), claimed(held(prompt="poison"), attempt=3)
    runner.run(ClaimedBatch([first, last_try, claimed(held())], seconds=0.0))
    assert handoff.failed[1:] == [(first.job_id, "GENERATION_FAILED"), (last_try.job_id, "GENERATION_FAILED")]
    assert handoff.released == [second.job_id]
    assert not runner.faulty


class PreviewEvents:
    """Previews whose store (an encode, an upload, a conditional write) takes 0.2 s and finds the jobs in
    ``cancelled`` no longer this worker's."""

    preview_interval_s = 0.0

    def __init__(self, cancelled: set[str]) -> None:
        self.cancelled = cancelled

    def started(self, job: object) -> None:
        pass

    def progressed(self, job: object) -> None:
        pass

    def store_preview(self, job: Job, latents: object, row: int, **_: object) -> bool:
        time.sleep(0.2)
        return job.job_id not in self.cancelled


class PreviewThenOom(FaultyGenerator):
    """The first call hands out a preview of every job at step 2, then runs out of memory; later calls work."""

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
    ) -> dict[str, list[Image]]:
        if not self.calls:
            self.calls.append([j.key for j in jobs])
            assert isinstance(on_step, ProgressWriter)
            on_step.take_latents(2, 4, cast(Captured, SimpleNamespace(keys=[j.key for j in jobs])))
            raise GenerationOOM(len(jobs), shape.width, shape.height, "injected")
        return super().generate(jobs, shape, on_step)


def test_a_job_a_failed_calls_preview_finds_cancelled_is_let_go_not_left_held(
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
) -> None:
    """The preview lands after the call failed: the split must wait for it, or the job is skipped by the halves
    and never let go (its message held, and hidden, for as long as the worker lives)."""
    kept, cancelled = claimed(held()), claimed(held())
    progress = ProgressRecorder(
        JobsRepository(boto3.client("dynamodb", region_name="us-east-1"), "unused"),
        worker_id="w",
        interval_s=1e9,  # no progress write: only the preview
        hard_stop=threading.Event(),
        writers=pools[0],
        table_pool=pools[1],
        events=cast(ProgressEvents, PreviewEvents({cancelled.job_id})),
    )
    handoff = RecordingHandOff()
    gpu = PreviewThenOom(oom_above=8)
    BatchRunner(gpu, progress, handoff, threading.Event()).run(ClaimedBatch([kept, cancelled], seconds=0.0))
    assert handoff.dropped == [cancelled.job_id]  # let go once
    assert gpu.calls == [ids(kept, cancelled), ids(kept)]  # never generated again
    assert handoff.completed == [kept.job_id]


class DropsTheOtherHalf(FaultyGenerator):
    """Runs out of memory above 2 images; the first half's call finds a job of the other half cancelled (as a
    write left in flight by the failed call would)."""

    def __init__(self, late: Held) -> None:
        super().__init__(oom_above=2)
        self.late = late

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
    ) -> dict[str, list[Image]]:
        if len(self.calls) == 1:
            self.late.dropped = True
        return super().generate(jobs, shape, on_step)


def test_a_job_dropped_before_its_half_starts_is_let_go_once(
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
) -> None:
    jobs = [claimed(held()) for _ in range(4)]
    gpu = DropsTheOtherHalf(late=jobs[3])
    handoff, _ = run(gpu, jobs, pools)
    assert gpu.calls == [ids(*jobs), ids(*jobs[:2]), ids(jobs[2])]
    assert handoff.dropped == [jobs[3].job_id]
    assert handoff.completed == ids(*jobs[:3])
