"""DeepCache-style feature reuse with the real tiny model on CPU: exact full steps, the step pattern, the
trade (images change but stay images), and batch independence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workflows.generation.acceleration import AccelerationOptions
from workflows.generation.featurereuse import FeatureReuse, supports
from workflows.generation.models import load_model
from workflows.generation.pipeline import BatchShape, ImageJob, PipelineRunner

pytestmark = pytest.mark.slow

SHAPE = BatchShape(width=256, height=256, steps=6, guidance_scale=7.5, scheduler="euler")
FOX = ImageJob("fox", "a red fox in snow", "blurry", seed=7, num_images=1)


def fresh_runner(model_cache: Path, reuse: int = 0) -> PipelineRunner:
    return PipelineRunner.load(
        "tiny", device="cpu", cache_root=model_cache, acceleration=AccelerationOptions(feature_reuse=reuse)
    )


def levels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def alone_against_batched(runner: PipelineRunner) -> int:
    """The largest level difference of FOX's image alone and inside a batch of three jobs (four images)."""
    alone = runner.generate([FOX], SHAPE)["fox"][0]
    batched = runner.generate(
        [ImageJob("a", "another prompt", "", seed=1, num_images=2), FOX, ImageJob("b", "z", "", seed=9, num_images=1)],
        SHAPE,
    )["fox"][0]
    return int(np.abs(levels(alone) - levels(batched)).max())


def test_the_full_step_is_the_unets_own_forward(model_cache: Path) -> None:
    unet = load_model("tiny", device="cpu", cache_root=model_cache).pipeline.unet
    exact = unet.forward
    reuse = FeatureReuse(unet, interval=3)
    torch.manual_seed(0)
    sample = torch.randn(2, unet.config.in_channels, 32, 32)
    hidden = torch.randn(2, 77, unet.config.cross_attention_dim)
    timestep = torch.tensor(500.0)
    with torch.no_grad():
        want = exact(sample, timestep, encoder_hidden_states=hidden).sample
        got = unet(sample, timestep, encoder_hidden_states=hidden).sample  # step 0 of a call: full
    assert torch.equal(got, want)
    assert (reuse.full_steps, reuse.shallow_steps) == (1, 0)


def test_full_steps_come_every_interval_and_the_images_change_but_stay_images(model_cache: Path) -> None:
    exact = fresh_runner(model_cache).generate([FOX], SHAPE)["fox"][0]
    runner = fresh_runner(model_cache, reuse=3)
    assert "feature_reuse" in runner.acceleration["applied"]
    reuse = runner._accel.feature_reuse
    assert reuse is not None
    approx = runner.generate([FOX], SHAPE)["fox"][0]
    # 6 steps, one UNet call each (CFG halves in one batch): full at steps 0 and 3, shallow at 1, 2, 4 and 5.
    assert (reuse.full_steps, reuse.shallow_steps) == (2, 4)
    runner.generate([FOX], SHAPE)
    assert (reuse.full_steps, reuse.shallow_steps) == (4, 8)  # each call starts again with a full step
    assert runner.acceleration["feature_reuse_steps"] == {"interval": 3, "full": 4, "shallow": 8}
    diff = np.abs(levels(exact) - levels(approx))
    assert diff.max() > 0  # the lever trades quality: the shallow steps are not the exact UNet
    assert levels(approx).std() > 0.5  # and still a picture, not a flat or NaN image


def test_reused_features_keep_an_image_independent_of_its_batch(model_cache: Path) -> None:
    assert alone_against_batched(fresh_runner(model_cache, reuse=2)) <= 1


def test_the_option_validates_and_unsupported_models_are_reported(model_cache: Path) -> None:
    with pytest.raises(ValueError, match="feature_reuse"):
        AccelerationOptions(feature_reuse=1)
    assert supports(torch.nn.Linear(2, 2)) is not None
    with pytest.raises(ValueError, match="at least 2"):
        FeatureReuse(load_model("tiny", device="cpu", cache_root=model_cache).pipeline.unet, interval=1)
