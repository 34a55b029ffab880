"""SDXL-type VAEs (fp16 weights, decoded in fp32 per call), on CPU with a tiny SDXL-layout pipeline in fp16.

- A decode that fails leaves the VAE in fp16 for the next call (diffusers casts it back only on success).
- The bf16 decode (quality-trading, off by default): the VAE stops being upcast per call, the images stay within
  the stated tolerance of the exact fp32 decode, and a job's image is still the same alone or inside a batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from workflows.generation.acceleration import AccelerationOptions
from workflows.generation.models import (
    LoadedModel,
    build_byte_level_clip_tokenizer,
    quiet_logger,
    tiny_text_encoder_config,
)
from workflows.generation.pipeline import BatchShape, GenerationOOM, ImageJob, PipelineRunner

pytestmark = pytest.mark.slow

SHAPE = BatchShape(width=256, height=256, steps=2, guidance_scale=7.5, scheduler="euler")
# The tolerance the README states for this lever against the exact fp32 decode, in 8-bit levels.
MAX_LEVELS = 8
MEAN_LEVELS = 1.0
# Alone against inside a batch: bf16's 8-bit mantissa can turn the UNet's last-bit batch differences (at most
# 1 level on the exact path) into a few levels on a few pixels (2 measured here; CPU kernels differ by host).
BATCH_MAX_LEVELS = 4
BATCH_MEAN_LEVELS = 0.1


def tiny_sdxl_runner(options: AccelerationOptions | None = None) -> PipelineRunner:
    """SDXL's layout (two text encoders, text-time conditioning, a force_upcast VAE) at toy size, in fp16."""
    tokenizer = build_byte_level_clip_tokenizer()
    text = tiny_text_encoder_config(tokenizer)  # the tiny model's, for both encoders
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=32,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=64,  # both encoders' hidden states, concatenated
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + the pooled 32
        )
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 32, 32),
            norm_num_groups=8,
            sample_size=256,
            force_upcast=True,
        )
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=CLIPTextModel(text),
            text_encoder_2=CLIPTextModelWithProjection(text),
            tokenizer=tokenizer,
            tokenizer_2=build_byte_level_clip_tokenizer(),
            unet=unet,
            scheduler=EulerDiscreteScheduler(),
            add_watermarker=False,
        )
    with quiet_logger("diffusers.models.modeling_utils"):
        pipe = pipe.to(dtype=torch.float16)
    pipe.set_progress_bar_config(disable=True)
    model = LoadedModel("tiny-sdxl", pipe, torch.device("cpu"), torch.float16, True, "noise", "test")
    return PipelineRunner(model, acceleration=options)


def levels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def decoder_dtypes(runner: PipelineRunner, jobs: list[ImageJob]) -> tuple[dict[str, list[Image.Image]], set[Any]]:
    seen: set[Any] = set()
    hook = runner.pipeline.vae.decoder.register_forward_pre_hook(lambda _m, args: seen.add(args[0].dtype))
    try:
        return runner.generate(jobs, SHAPE), seen
    finally:
        hook.remove()


# diffusers' own fp32 upcast (the exact path) warns that its helper is deprecated.
@pytest.mark.filterwarnings("ignore:`upcast_vae` is deprecated:FutureWarning")
def test_sdxl_vae_decodes_in_bf16_within_the_tolerance_of_the_fp32_decode() -> None:
    jobs = [ImageJob("fox", "a red fox", "", seed=5, num_images=2), ImageJob("boat", "a boat", "blurry", 6, 1)]
    exact, exact_dtypes = decoder_dtypes(tiny_sdxl_runner(), jobs)
    assert exact_dtypes == {torch.float32}  # diffusers upcasts the fp16 VAE for every decode

    runner = tiny_sdxl_runner(AccelerationOptions(vae_bf16=True))
    assert "vae_bf16" in runner.acceleration["applied"]
    traded, traded_dtypes = decoder_dtypes(runner, jobs)
    assert traded_dtypes == {torch.bfloat16}
    assert runner.pipeline.vae.dtype == torch.bfloat16  # no cast back and forth around the call
    for key, images in exact.items():
        for want, got in zip(images, traded[key], strict=True):
            diff = np.abs(levels(got) - levels(want))
            assert levels(want).std() > 5  # noise, not a flat image
            assert diff.max() <= MAX_LEVELS
            assert diff.mean() <= MEAN_LEVELS

    # Batch independence holds with the lever: the boat alone is the boat inside the batch.
    alone = runner.generate([jobs[1]], SHAPE)["boat"][0]
    batch_diff = np.abs(levels(alone) - levels(traded["boat"][0]))
    assert batch_diff.max() <= BATCH_MAX_LEVELS
    assert batch_diff.mean() <= BATCH_MEAN_LEVELS


def test_the_lever_is_skipped_where_the_vae_is_not_upcast(tmp_path: Any) -> None:
    runner = PipelineRunner.load(
        "tiny", device="cpu", cache_root=tmp_path, acceleration=AccelerationOptions(vae_bf16=True)
    )
    assert runner.acceleration["skipped"]["vae_bf16"] == "the pipeline does not decode its VAE in fp32 per call"
    assert runner.pipeline.vae.dtype == torch.float32


@pytest.mark.filterwarnings("ignore:`upcast_vae` is deprecated:FutureWarning")
def test_a_decode_that_runs_out_of_memory_leaves_the_vae_ready_for_the_next_call() -> None:
    runner = tiny_sdxl_runner()
    jobs = [ImageJob("fox", "a red fox", "", seed=5, num_images=2)]
    expected = runner.generate(jobs, SHAPE)["fox"]

    def out_of_memory(_module: Any, _args: tuple[Any, ...]) -> None:
        raise torch.OutOfMemoryError("injected: the decode does not fit")

    hook = runner.pipeline.vae.decoder.register_forward_pre_hook(out_of_memory)
    try:
        with pytest.raises(GenerationOOM):
            runner.generate(jobs, SHAPE)  # fails inside diffusers' fp32 upcast, before its cast back
    finally:
        hook.remove()
    assert runner.pipeline.vae.dtype == torch.float16
    again = runner.generate(jobs, SHAPE)["fox"]
    for got, want in zip(again, expected, strict=True):
        assert np.abs(levels(got) - levels(want)).max() <= 1
