"""CFG truncation with the real tiny model on CPU: which steps run guided, the trade (images change but stay
images), batch independence, progress still reported per step, and the option's bounds and flag."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cli.leverflags import acceleration_from_args, add_acceleration_arguments
from tests.unit.test_featurereuse import FOX, SHAPE, alone_against_batched, levels
from tests.unit.test_pipeline_modes import IMAGE, picture
from workflows.generation.acceleration import AccelerationOptions
from workflows.generation.acceleration.cfgtruncation import unguided_steps
from workflows.generation.pipeline import BatchShape, PipelineRunner

pytestmark = pytest.mark.slow


def fresh_runner(model_cache: Path, share: float = 0.0) -> PipelineRunner:
    return PipelineRunner.load(
        "tiny", device="cpu", cache_root=model_cache, acceleration=AccelerationOptions(cfg_truncation=share)
    )


def test_the_last_share_of_the_steps_runs_the_prompts_half_alone(model_cache: Path) -> None:
    exact = fresh_runner(model_cache).generate([FOX], SHAPE)["fox"][0]
    runner = fresh_runner(model_cache, share=0.5)
    assert "cfg_truncation" in runner.acceleration["applied"]
    batch_rows: list[int] = []
    runner.pipeline.unet.register_forward_pre_hook(lambda _m, args: batch_rows.append(args[0].shape[0]))
    steps: list[tuple[int, int]] = []
    approx = runner.generate([FOX], SHAPE, on_step=lambda step, total: steps.append((step, total)))["fox"][0]
    assert batch_rows == [2, 2, 2, 1, 1, 1]  # 6 steps: 3 with [negative, prompt], the last 3 with the prompt alone
    assert steps == [(i, 6) for i in range(1, 7)]  # progress as before
    diff = np.abs(levels(exact) - levels(approx))
    assert diff.max() > 0  # the lever trades quality
    assert levels(approx).std() > 0.5  # and still a picture, not a flat or NaN image
    batch_rows.clear()
    runner.generate([FOX], SHAPE)
    assert batch_rows == [2, 2, 2, 1, 1, 1]  # the next call is guided again until its own cut


def test_without_guidance_or_in_other_modes_nothing_changes(model_cache: Path) -> None:
    unguided = BatchShape(width=256, height=256, steps=6, guidance_scale=1.0, scheduler="euler")
    exact = fresh_runner(model_cache).generate([FOX], unguided)["fox"][0]
    assert np.array_equal(
        levels(fresh_runner(model_cache, share=0.5).generate([FOX], unguided)["fox"][0]), levels(exact)
    )
    # Image-to-image with guidance: the lever is for text-to-image only, so every step stays guided.
    image_shape = replace(IMAGE, strength=1.0)  # every one of the 4 steps runs
    fox = replace(FOX, image=picture(1))
    exact_image = fresh_runner(model_cache).generate([fox], image_shape)["fox"][0]
    runner = fresh_runner(model_cache, share=0.5)
    batch_rows: list[int] = []
    runner.pipeline.unet.register_forward_pre_hook(lambda _m, args: batch_rows.append(args[0].shape[0]))
    approx_image = runner.generate([fox], image_shape)["fox"][0]
    assert batch_rows == [2, 2, 2, 2]  # [negative, prompt] at every step
    assert np.array_equal(levels(approx_image), levels(exact_image))


def test_an_image_is_the_same_alone_or_batched(model_cache: Path) -> None:
    assert alone_against_batched(fresh_runner(model_cache, share=0.3)) <= 1


def test_the_share_is_bounded_and_has_a_flag() -> None:
    assert [unguided_steps(30, s) for s in (0, 0.2, 0.3, 0.5, 0.99)] == [0, 6, 9, 15, 29]
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="cfg_truncation"):
            AccelerationOptions(cfg_truncation=bad)
    parser = argparse.ArgumentParser()
    add_acceleration_arguments(parser)
    args = parser.parse_args(["--cfg-truncation", "0.3"])
    assert acceleration_from_args(args) == AccelerationOptions(cfg_truncation=0.3)
