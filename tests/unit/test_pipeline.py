"""The pipeline runner with the real tiny model on CPU: seeds, batching invariance, schedulers, progress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from shared.tinymodel import TINY_MODEL_NOTE
from workflows.generation.acceleration import AccelerationOptions
from workflows.generation.models import LoadedModel
from workflows.generation.pipeline import (
    SCHEDULERS,
    BatchShape,
    GenerationCancelled,
    GenerationOOM,
    ImageJob,
    PipelineRunner,
    UnknownScheduler,
    fits_in_one_decode,
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


def test_a_batch_decodes_in_one_vae_call_only_when_all_its_decodes_fit_beside_the_headroom(
    runner: PipelineRunner,
) -> None:
    gib = 2**30
    # 16 decodes of 0.5 GiB need 8 GiB, plus 2 GiB kept free for the allocator and cuDNN/cuBLAS workspaces.
    assert fits_in_one_decode(16, gib // 2, 10 * gib)
    assert not fits_in_one_decode(16, gib // 2, 10 * gib - 1)
    assert fits_in_one_decode(1, gib // 2, 10 * gib - 1)
    # The CPU never slices: a call decodes all its images at once, whatever the VAE was set to before.
    runner.pipeline.vae.use_slicing = True
    runner.generate([ImageJob("j", "p", "", 1, 2)], SHAPE)
    assert runner.pipeline.vae.use_slicing is False


def test_on_cuda_the_one_call_decode_follows_free_memory_and_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The decision as a CUDA runner makes it, with the device's free memory given (no GPU here).
    one_call = PipelineRunner.load("tiny", device="cpu", cache_root=tmp_path)
    sliced = PipelineRunner.load(
        "tiny", device="cpu", cache_root=tmp_path, acceleration=AccelerationOptions(vae_one_call=False)
    )
    monkeypatch.setattr(PipelineRunner, "device", property(lambda _self: torch.device("cuda")))
    per_image = one_call._vae_decode_bytes(256, 256)
    assert per_image > 0
    free = 2 * 2**30 + 4 * per_image
    for runner in (one_call, sliced):
        monkeypatch.setattr(runner, "_free_cuda_bytes", lambda include_reserved=True: free)
    assert one_call.decodes_in_one_call(4, 256, 256)
    assert not one_call.decodes_in_one_call(5, 256, 256)
    assert not sliced.decodes_in_one_call(1, 256, 256)  # SDQ_VAE_ONE_CALL=false: always one at a time


def test_a_one_call_decode_that_runs_out_of_memory_is_redone_one_image_at_a_time(
    runner: PipelineRunner, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = [ImageJob("a", "a red fox", "", seed=3, num_images=2), ImageJob("b", "a boat", "", seed=4, num_images=1)]
    expected = runner.generate(jobs, SHAPE)
    decoded_batches: list[int] = []

    def out_of_memory_above_one_image(_module: Any, args: tuple[Any, ...]) -> None:
        decoded_batches.append(int(args[0].shape[0]))
        if args[0].shape[0] > 1:
            raise torch.OutOfMemoryError("injected: no room to decode the whole batch at once")

    hook = runner.pipeline.vae.decoder.register_forward_pre_hook(out_of_memory_above_one_image)
    try:
        with caplog.at_level("WARNING"):
            out = runner.generate(jobs, SHAPE)
    finally:
        hook.remove()
    assert decoded_batches == [3, 1, 1, 1]  # the whole batch failed, then one image at a time
    assert "one image at a time" in caplog.text
    assert [len(images) for images in out.values()] == [2, 1]
    for key in expected:
        for got, want in zip(out[key], expected[key], strict=True):
            assert max_diff(got, want) <= 1


# --- speed levers that run on CPU: batch buckets and the prompt-embedding cache -----------------------------


@pytest.fixture(scope="module")
def bucketed(tmp_path_factory: pytest.TempPathFactory) -> PipelineRunner:
    return PipelineRunner.load(
        "tiny",
        device="cpu",
        cache_root=tmp_path_factory.mktemp("models"),
        acceleration=AccelerationOptions(buckets=(1, 2, 4)),
    )


def test_padding_to_a_bucket_leaves_each_image_unchanged(bucketed: PipelineRunner, runner: PipelineRunner) -> None:
    fox = ImageJob("fox", "a red fox in snow", "blurry", seed=7, num_images=1)
    plain = runner.generate([fox], SHAPE)["fox"][0]
    jobs = [ImageJob("a", "one", "", seed=1, num_images=2), fox]  # 3 images, padded to 4
    out = bucketed.generate(jobs, SHAPE)
    assert [len(images) for images in out.values()] == [2, 1]  # the padded image is dropped
    assert max_diff(out["fox"][0], plain) <= 1
    assert max_diff(bucketed.generate([fox], SHAPE)["fox"][0], plain) <= 1
    report = bucketed.acceleration
    assert report["buckets"] == [1, 2, 4]
    assert report["skipped"] == {}  # nothing GPU-only was asked for
    assert bucketed.max_batch_images() == 4  # the CPU setting; a GPU limit is capped to a bucket


def test_the_prompt_cache_gives_the_same_images(runner: PipelineRunner, tmp_path: Path) -> None:
    uncached = PipelineRunner.load(
        "tiny", device="cpu", cache_root=tmp_path, acceleration=AccelerationOptions(prompt_cache_size=0)
    )
    assert uncached.acceleration["prompt_cache"] is None
    jobs = [
        ImageJob("a", "a lighthouse", "fog", seed=3, num_images=2),
        ImageJob("b", "a lighthouse", "", seed=4, num_images=1),
    ]
    before = dict(runner.acceleration["prompt_cache"])
    cached = runner.generate(jobs, SHAPE)
    plain = uncached.generate(jobs, SHAPE)
    for key in ("a", "b"):
        assert max(max_diff(x, y) for x, y in zip(cached[key], plain[key], strict=True)) <= 1
    between = dict(runner.acceleration["prompt_cache"])
    read_back = runner.generate(jobs, SHAPE)  # every text from the cache now
    stats = runner.acceleration["prompt_cache"]
    assert stats["hits"] - before["hits"] >= 3  # the second call found all three texts
    assert (stats["hits"] - between["hits"], stats["misses"] - between["misses"]) == (3, 0)
    assert stats["entries"] <= 256
    for key in ("a", "b"):  # the embeddings read back are the ones the pipeline would have encoded
        assert max(max_diff(x, y) for x, y in zip(read_back[key], plain[key], strict=True)) <= 1


def test_the_prompt_cache_evicts_the_least_recently_used(tmp_path: Path) -> None:
    small = PipelineRunner.load(
        "tiny", device="cpu", cache_root=tmp_path, acceleration=AccelerationOptions(prompt_cache_size=2)
    )
    shape = BatchShape(256, 256, 1, 7.5, "euler")
    small.generate([ImageJob("j", "one", "", seed=1, num_images=1)], shape)  # "one", ""
    small.generate([ImageJob("j", "two", "", seed=1, num_images=1)], shape)  # "two", "" ("one" goes)
    stats = small.acceleration["prompt_cache"]
    assert stats == {"entries": 2, "hits": 1, "misses": 3}
    small.generate([ImageJob("j", "one", "", seed=1, num_images=1)], shape)
    assert small.acceleration["prompt_cache"]["misses"] == 4


def test_accelerate_applies_levers_to_a_loaded_runner(tmp_path: Path) -> None:
    fresh = PipelineRunner.load("tiny", device="cpu", cache_root=tmp_path)
    report = fresh.accelerate(AccelerationOptions(compile=True, buckets=(1, 2)))
    assert report["buckets"] == [1, 2]
    assert "compile" in report["skipped"]  # CPU
    assert fresh.warmup() == {}  # nothing compiled, nothing to warm up
    fresh._accel.report.applied.append("channels_last")  # as if a GPU lever had changed the model
    with pytest.raises(RuntimeError, match="already accelerated"):
        fresh.accelerate(AccelerationOptions())


def test_the_prompt_cache_works_for_sdxl_pipelines() -> None:
    pipe = tiny_sdxl_pipeline()
    runner = PipelineRunner(
        LoadedModel("tiny-xl", pipe, torch.device("cpu"), torch.float32, True, None, "memory"),
        acceleration=AccelerationOptions(prompt_cache_size=8),
    )
    uncached = PipelineRunner(
        LoadedModel("tiny-xl", pipe, torch.device("cpu"), torch.float32, True, None, "memory"),
        acceleration=AccelerationOptions(prompt_cache_size=0),
    )
    shape = BatchShape(64, 64, 2, 5.0, "euler")
    jobs = [ImageJob("a", "a fox", "blur", seed=1, num_images=1), ImageJob("b", "a cat", "", seed=2, num_images=1)]
    cached = runner.generate(jobs, shape)
    plain = uncached.generate(jobs, shape)
    assert runner.acceleration["applied"] == ["prompt_cache"]
    for key in ("a", "b"):
        assert max_diff(cached[key][0], plain[key][0]) <= 1
    assert runner.acceleration["prompt_cache"] == {"entries": 4, "hits": 0, "misses": 4}
    read_back = runner.generate(jobs, shape)  # all four texts (two prompts, two negatives) from the cache
    assert runner.acceleration["prompt_cache"] == {"entries": 4, "hits": 4, "misses": 4}
    for key in ("a", "b"):  # pooled embeddings and all, the same as the pipeline's own encoding
        assert max_diff(read_back[key][0], plain[key][0]) <= 1


def tiny_sdxl_pipeline() -> Any:
    """SDXL classes with tiny random weights (two text encoders, pooled embeddings, time ids)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from workflows.generation.models import build_byte_level_clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tokenizer = build_byte_level_clip_tokenizer()
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
        text = {"vocab_size": len(tokenizer), "intermediate_size": 37, "num_hidden_layers": 2, **ids}
        unet = UNet2DConditionModel(
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + the 32-wide pooled embedding
            cross_attention_dim=64,  # the two encoders' 32-wide hidden states, concatenated
            norm_num_groups=32,
        )
        vae = AutoencoderKL(
            block_out_channels=(8, 16, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=64,
        )
        encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, num_attention_heads=4, projection_dim=32, **text))
        encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(hidden_size=32, num_attention_heads=4, projection_dim=32, **text)
        )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=encoder,
        text_encoder_2=encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=build_byte_level_clip_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        add_watermarker=False,
    )
