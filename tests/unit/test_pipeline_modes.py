"""Image-to-image and inpainting with the real tiny model on CPU: pipelines sharing the loaded weights, seeds that
reproduce alone or batched, and the input kept where the mask is black."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tests.unit.test_pipeline import tiny_sdxl_pipeline
from workflows.generation.acceleration import AccelerationOptions
from workflows.generation.models import LoadedModel
from workflows.generation.pipeline import BatchShape, ImageJob, PipelineRunner

pytestmark = pytest.mark.slow

SIZE = 256
IMAGE = BatchShape(SIZE, SIZE, steps=4, guidance_scale=7.5, scheduler="euler", mode="image", strength=0.5)
INPAINT = BatchShape(SIZE, SIZE, steps=2, guidance_scale=7.5, scheduler="euler", mode="inpaint", strength=1.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def runner(models: Path) -> PipelineRunner:
    return PipelineRunner.load("tiny", device="cpu", cache_root=models)


def picture(seed: int) -> Image.Image:
    """A picture with edges and colours (not a flat field, which any pipeline could keep by luck)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (SIZE, SIZE), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = (int(v) for v in rng.integers(0, SIZE - 40, 2))
        draw.ellipse((x, y, x + 40, y + 40), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


def centre_mask() -> Image.Image:
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (64, 64, 192, 192))
    return mask


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


def test_the_modes_share_the_loaded_weights(runner: PipelineRunner) -> None:
    text = runner.pipeline
    for mode in ("image", "inpaint"):
        pipe = runner.pipeline_for(mode)
        assert pipe is runner.pipeline_for(mode)  # built once
        assert (pipe.unet, pipe.vae, pipe.text_encoder) == (text.unet, text.vae, text.text_encoder)
    assert type(runner.pipeline_for("inpaint")).__name__ == "StableDiffusionInpaintPipeline"
    assert runner.pipeline.unet.config.in_channels == 4  # tiny: the inpaint pipeline's latent blending path


@pytest.mark.parametrize("shape", [IMAGE, INPAINT], ids=["image", "inpaint"])
def test_a_jobs_images_are_the_same_alone_or_in_a_batch_of_three(runner: PipelineRunner, shape: BatchShape) -> None:
    mask = centre_mask() if shape.mode == "inpaint" else None
    fox = ImageJob("fox", "a red fox in snow", "blurry", seed=7, num_images=2, image=picture(1), mask=mask)
    alone = runner.generate([fox], shape)["fox"]
    batched = runner.generate(
        [
            ImageJob("before", "another prompt", "", seed=1, num_images=1, image=picture(2), mask=mask),
            fox,
            ImageJob("after", "z", "text", seed=99, num_images=1, image=picture(3), mask=mask),
        ],
        shape,
    )
    assert [len(images) for images in batched.values()] == [1, 2, 1]
    assert all(image.size == (SIZE, SIZE) for images in batched.values() for image in images)
    assert max(max_diff(a, b) for a, b in zip(alone, batched["fox"], strict=True)) <= 1
    assert max_diff(batched["fox"][0], batched["before"][0]) > 1  # each row has its own input and seed


def test_image_to_image_starts_from_the_input(runner: PipelineRunner) -> None:
    """A different input gives a different result for the same seed and prompt, and strength matters."""

    def run(image: Image.Image, shape: BatchShape = IMAGE) -> Image.Image:
        return runner.generate([ImageJob("a", "a lighthouse", "", seed=5, num_images=1, image=image)], shape)["a"][0]

    one = run(picture(1))
    assert max_diff(one, run(picture(2))) > 1
    assert max_diff(one, run(picture(1), replace(IMAGE, strength=1.0))) > 1


def test_padding_rows_to_a_bucket_repeat_an_input_and_leave_each_image_unchanged(
    runner: PipelineRunner, models: Path
) -> None:
    bucketed = PipelineRunner.load(
        "tiny", device="cpu", cache_root=models, acceleration=AccelerationOptions(buckets=(1, 4))
    )
    fox = ImageJob("fox", "a red fox", "", seed=7, num_images=1, image=picture(1))
    out = bucketed.generate([ImageJob("a", "one", "", seed=1, num_images=2, image=picture(2)), fox], IMAGE)
    assert [len(images) for images in out.values()] == [2, 1]  # 3 images padded to 4, the padding dropped
    assert max_diff(out["fox"][0], runner.generate([fox], IMAGE)["fox"][0]) <= 1


def test_inpainting_keeps_the_unmasked_pixels_and_repaints_the_masked_ones(runner: PipelineRunner) -> None:
    source, mask = picture(4), centre_mask()
    out = runner.generate([ImageJob("j", "a cat", "", seed=3, num_images=1, image=source, mask=mask)], INPAINT)
    got, want = pixels(out["j"][0]), pixels(source)
    inside = np.asarray(mask) > 0
    assert np.abs(got - want)[~inside].max() == 0
    assert np.abs(got - want)[inside].mean() > 10


def test_a_job_without_its_modes_inputs_is_refused(runner: PipelineRunner) -> None:
    with pytest.raises(ValueError, match="lacks the inputs"):
        runner.generate([ImageJob("j", "x", "", seed=1, num_images=1)], IMAGE)
    with pytest.raises(ValueError, match="lacks the inputs"):
        runner.generate([ImageJob("j", "x", "", seed=1, num_images=1, image=picture(1))], INPAINT)
    small = picture(1).resize((128, 128))
    with pytest.raises(ValueError, match="not the batch's size"):
        runner.generate([ImageJob("j", "x", "", seed=1, num_images=1, image=small)], IMAGE)


def test_text_batches_are_unchanged_by_the_mode_pipelines(runner: PipelineRunner, models: Path) -> None:
    """Running the other modes first leaves text-to-image as it was (the scheduler is set per pipeline call)."""
    text = BatchShape(SIZE, SIZE, steps=2, guidance_scale=7.5, scheduler="euler")
    job = ImageJob("t", "a boat", "", seed=11, num_images=1)
    fresh = PipelineRunner.load("tiny", device="cpu", cache_root=models).generate([job], text)["t"][0]
    runner.generate([ImageJob("i", "x", "", seed=1, num_images=1, image=picture(1))], IMAGE)
    assert max_diff(runner.generate([job], text)["t"][0], fresh) <= 1


def test_sdxl_pipelines_run_both_modes_with_the_prompt_cache() -> None:
    """SDXL's image-to-image and inpainting pipelines (two text encoders, pooled embeddings) from the same weights."""
    runner = PipelineRunner(
        LoadedModel("tiny-xl", tiny_sdxl_pipeline(), torch.device("cpu"), torch.float32, True, None, "memory"),
        acceleration=AccelerationOptions(prompt_cache_size=8),
    )
    source, mask = picture(5).resize((64, 64)), centre_mask().resize((64, 64))
    for mode in ("image", "inpaint"):
        shape = BatchShape(64, 64, 2, 5.0, "euler", mode=mode, strength=1.0)
        one = ImageJob("a", "a fox", "blur", seed=1, num_images=1, image=source, mask=mask)
        alone = runner.generate([one], shape)["a"][0]
        batched = runner.generate(
            [ImageJob("b", "a cat", "", seed=2, num_images=2, image=source, mask=mask), one], shape
        )
        assert alone.size == (64, 64)
        assert max_diff(batched["a"][0], alone) <= 1
    assert type(runner.pipeline_for("inpaint")).__name__ == "StableDiffusionXLInpaintPipeline"
    assert runner.acceleration["prompt_cache"]["hits"] > 0
