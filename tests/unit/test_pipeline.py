"""The pipeline runner with the real tiny model on CPU: seeds, batching invariance, schedulers, progress."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workflows.generation.models import TINY_MODEL_NOTE
from workflows.generation.pipeline import (
    SCHEDULERS,
    BatchShape,
    GenerationCancelled,
    GenerationOOM,
    ImageJob,
    PipelineRunner,
    UnknownScheduler,
)

pytestmark = pytest.mark.slow

SHAPE = BatchShape(width=256, height=256, steps=2, guidance_scale=7.5, scheduler="euler")


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> PipelineRunner:
    return PipelineRunner.load("tiny", device="cpu", cache_root=tmp_path_factory.mktemp("models"))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


def test_a_jobs_images_do_not_depend_on_the_rest_of_the_batch(runner: PipelineRunner) -> None:
    fox = ImageJob("fox", "a red fox in snow", "blurry", seed=7, num_images=2)
    alone = runner.generate([fox], SHAPE)["fox"]
    batched = runner.generate(
        [
            ImageJob("before", "an entirely different prompt", "", seed=1, num_images=1),
            fox,
            ImageJob("after", "z", "text, watermark", seed=99, num_images=2),
        ],
        SHAPE,
    )["fox"]
    assert max(max_diff(a, b) for a, b in zip(alone, batched, strict=True)) <= 1


def test_image_i_is_seeded_seed_plus_i(runner: PipelineRunner) -> None:
    pair = runner.generate([ImageJob("pair", "a lighthouse", "", seed=40, num_images=2)], SHAPE)["pair"]
    singles = runner.generate(
        [
            ImageJob("s0", "a lighthouse", "", seed=40, num_images=1),
            ImageJob("s1", "a lighthouse", "", seed=41, num_images=1),
        ],
        SHAPE,
    )
    assert max_diff(pair[0], singles["s0"][0]) <= 1
    assert max_diff(pair[1], singles["s1"][0]) <= 1


def test_different_seeds_give_different_images(runner: PipelineRunner) -> None:
    images = runner.generate([ImageJob("j", "a lighthouse", "", seed=5, num_images=2)], SHAPE)["j"]
    assert np.abs(pixels(images[0]) - pixels(images[1])).mean() > 10


def test_seeds_wrap_at_2_to_the_32(runner: PipelineRunner) -> None:
    out = runner.generate(
        [
            ImageJob("edge", "a lighthouse", "", seed=2**32 - 1, num_images=2),
            ImageJob("zero", "a lighthouse", "", seed=0, num_images=1),
        ],
        SHAPE,
    )
    assert max_diff(out["edge"][1], out["zero"][0]) <= 1


def test_results_are_grouped_by_job_key_with_the_requested_size(runner: PipelineRunner) -> None:
    shape = BatchShape(width=320, height=256, steps=2, guidance_scale=1.0, scheduler="ddim")  # CFG off too
    out = runner.generate(
        [ImageJob("b", "one", "", seed=1, num_images=3), ImageJob("a", "two", "", seed=2, num_images=1)],
        shape,
    )
    assert list(out) == ["b", "a"]
    assert [len(images) for images in out.values()] == [3, 1]
    assert {image.size for images in out.values() for image in images} == {(320, 256)}
    assert {image.mode for images in out.values() for image in images} == {"RGB"}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_is_set_per_call_without_reloading(runner: PipelineRunner, name: str) -> None:
    pipe, unet = runner.pipeline, runner.pipeline.unet
    shape = BatchShape(width=256, height=256, steps=2, guidance_scale=7.5, scheduler=name)

    out = runner.generate([ImageJob("j", "a lighthouse", "", seed=3, num_images=1)], shape)

    assert out["j"][0].size == (256, 256)
    assert runner.pipeline is pipe  # same model objects: no reload
    assert pipe.unet is unet
    assert type(pipe.scheduler) is SCHEDULERS[name]
    assert runner.scheduler(name) is pipe.scheduler  # one cached instance per name


def test_schedulers_give_different_results(runner: PipelineRunner) -> None:
    job = ImageJob("j", "a lighthouse", "", seed=3, num_images=1)
    ddim = runner.generate([job], BatchShape(256, 256, 2, 7.5, "ddim"))["j"][0]
    euler_a = runner.generate([job], BatchShape(256, 256, 2, 7.5, "euler_a"))["j"][0]
    assert max_diff(ddim, euler_a) > 1


def test_an_unknown_scheduler_is_rejected(runner: PipelineRunner) -> None:
    with pytest.raises(UnknownScheduler, match="heun"):
        runner.generate([ImageJob("j", "p", "", seed=1, num_images=1)], BatchShape(256, 256, 2, 7.5, "heun"))


def test_invalid_batches_are_rejected(runner: PipelineRunner) -> None:
    with pytest.raises(ValueError, match="at least one job"):
        runner.generate([], SHAPE)
    with pytest.raises(ValueError, match="unique"):
        runner.generate([ImageJob("j", "p", "", 1, 1), ImageJob("j", "q", "", 2, 1)], SHAPE)


def test_on_step_reports_step_and_total(runner: PipelineRunner) -> None:
    calls: list[tuple[int, int]] = []
    shape = BatchShape(width=256, height=256, steps=3, guidance_scale=7.5, scheduler="euler")
    runner.generate([ImageJob("j", "p", "", 1, 1)], shape, on_step=lambda step, total: calls.append((step, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_cancelling_from_on_step_stops_the_call(runner: PipelineRunner) -> None:
    calls: list[int] = []

    def cancel_after_first(step: int, total: int) -> None:
        calls.append(step)
        raise GenerationCancelled("job cancelled")

    shape = BatchShape(width=256, height=256, steps=5, guidance_scale=7.5, scheduler="dpmpp_2m")
    with pytest.raises(GenerationCancelled):
        runner.generate([ImageJob("j", "p", "", 1, 1)], shape, on_step=cancel_after_first)
    assert calls == [1]

    # The scheduler's half-finished state does not leak into the next call.
    again = runner.generate([ImageJob("j", "p", "", 1, 1)], shape)["j"][0]
    fresh = runner.generate([ImageJob("j", "p", "", 1, 1)], shape)["j"][0]
    assert max_diff(again, fresh) == 0


def test_out_of_memory_inside_the_call_becomes_generation_oom(runner: PipelineRunner) -> None:
    # The OOM is raised from inside the pipeline call (by the step callback), as the allocator would.
    def oom(step: int, total: int) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(GenerationOOM) as caught:
        runner.generate([ImageJob("j", "p", "", 1, 2)], SHAPE, on_step=oom)
    assert (caught.value.images, caught.value.width, caught.value.height) == (2, 256, 256)
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)


def test_runner_describes_its_model(runner: PipelineRunner, tmp_path: Path) -> None:
    assert runner.model_name == "tiny"
    assert runner.is_noise_model
    assert runner.note == TINY_MODEL_NOTE
    assert runner.device == torch.device("cpu")
    assert runner.native_size == 256
    assert runner.max_batch_images() == 4  # the CPU default
    other = PipelineRunner.load("tiny", device="cpu", cache_root=tmp_path, cpu_max_batch_images=2)
    assert other.max_batch_images(512, 512) == 2
