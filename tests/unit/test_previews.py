"""Progress previews: the pipeline hands a latent tap each job's first latent row at the steps it asks for, the
images do not change, and the latents become a small JPEG through the fixed latent-to-RGB map."""

from __future__ import annotations

import io
from pathlib import PurePosixPath
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import torch
from PIL import Image

from shared.contracts import JobStatus
from shared.media import preview_key
from tests.unit.conftest import make_job
from workflows.generation.pipeline import BatchShape, ImageJob, LatentTap, PipelineRunner
from workflows.generation.previews import (
    MAX_LATENT_SIDE,
    SD15_FACTORS,
    SDXL_FACTORS,
    Captured,
    LatentFormat,
    capture,
    latent_format_for,
    to_jpeg,
)
from workflows.postprocess import Postprocessor

SHAPE = BatchShape(width=256, height=256, steps=6, guidance_scale=7.5, scheduler="euler")


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> PipelineRunner:
    return PipelineRunner.load("tiny", device="cpu", cache_root=tmp_path_factory.mktemp("models"))


class Tap:
    """A step callback that wants the latents at the steps in ``at``."""

    def __init__(self, at: set[int]) -> None:
        self.at = at
        self.steps: list[tuple[int, int]] = []
        self.taken: list[tuple[int, Captured]] = []

    def __call__(self, step: int, total: int) -> None:
        self.steps.append((step, total))

    def wants_latents(self, step: int, total: int) -> bool:
        return step in self.at

    def take_latents(self, step: int, total: int, latents: Captured) -> None:
        self.taken.append((step, latents))


def test_a_tap_gets_each_jobs_first_latent_row_at_the_steps_it_asks_for(runner: PipelineRunner) -> None:
    jobs = [ImageJob("a", "a fox", "", seed=1, num_images=2), ImageJob("b", "a cat", "", seed=9, num_images=1)]
    tap = Tap({2, 4})
    assert isinstance(tap, LatentTap)
    runner.generate(jobs, SHAPE, on_step=tap)
    assert [s for s, _ in tap.taken] == [2, 4]
    assert [s for s, _ in tap.steps] == list(range(1, 7))
    captured = tap.taken[0][1]
    assert captured.keys == ["a", "b"]
    assert captured.format.name == "sd15"
    latents = captured.wait()
    assert latents.shape[:2] == (2, 4)  # job a's first image and job b's: rows 0 and 2 of the batch
    assert latents.dtype == torch.float32
    # Row b is job b's own latent: the same job alone gives the same latent at the same step.
    alone = Tap({2})
    runner.generate([jobs[1]], SHAPE, on_step=alone)
    assert torch.allclose(alone.taken[0][1].wait()[0], latents[1], atol=1e-2)  # batch rounding aside


def test_the_tap_changes_no_image(runner: PipelineRunner) -> None:
    job = [ImageJob("a", "a fox", "", seed=3, num_images=1)]
    plain = runner.generate(job, SHAPE, on_step=lambda step, total: None)["a"][0]
    tapped = runner.generate(job, SHAPE, on_step=Tap({1, 2, 3, 4, 5}))["a"][0]
    assert np.array_equal(np.asarray(plain), np.asarray(tapped))


def test_large_latents_are_shrunk_on_the_device_before_the_copy() -> None:
    latents = torch.randn(3, 4, 128, 96)
    captured = capture(latents, [0, 2], ["x", "y"], LatentFormat("sd15", SD15_FACTORS))
    host = captured.wait()
    assert host.shape == (2, 4, MAX_LATENT_SIDE, 48)
    assert torch.allclose(host[1], torch.nn.functional.avg_pool2d(latents[2:3], 2)[0])
    latents.zero_()  # the copy does not alias the pipeline's latents
    assert host.abs().sum() > 0


def test_the_jpeg_is_at_most_256_pixels_with_the_images_aspect() -> None:
    fmt = LatentFormat("sd15", SD15_FACTORS)
    square = Image.open(io.BytesIO(to_jpeg(torch.randn(4, 64, 64), fmt)))
    assert square.format == "JPEG"
    assert square.size == (256, 256)
    wide = Image.open(io.BytesIO(to_jpeg(torch.randn(4, 32, 64), fmt)))
    assert wide.size == (256, 128)
    # Zero latents are mid grey; a latent along one channel takes that channel's colour.
    grey = np.asarray(Image.open(io.BytesIO(to_jpeg(torch.zeros(4, 8, 8), fmt))))
    assert abs(int(grey.mean()) - 127) <= 2
    fourth = torch.zeros(4, 8, 8)
    fourth[3] = 1.0  # SD 1.5's fourth channel: mostly blue down (-0.72), so a yellowish image
    r, g, b = np.asarray(Image.open(io.BytesIO(to_jpeg(fourth, fmt)))).reshape(-1, 3).mean(axis=0)
    assert b < g < r


def test_the_map_follows_the_vae() -> None:
    def pipe(channels: int, scaling: float) -> SimpleNamespace:
        return SimpleNamespace(
            vae=SimpleNamespace(config=SimpleNamespace(latent_channels=channels, scaling_factor=scaling))
        )

    sd15 = latent_format_for(pipe(4, 0.18215))
    sdxl = latent_format_for(pipe(4, 0.13025))
    assert sd15 is not None
    assert sd15.factors == SD15_FACTORS
    assert sdxl is not None
    assert sdxl.factors == SDXL_FACTORS
    assert latent_format_for(pipe(16, 1.5305)) is None  # no linear map for this latent space: no preview


def test_the_preview_lives_beside_the_jobs_outputs() -> None:
    """Same folder as the job's images and thumbnails (so the outputs' lifecycle expiry and a cancel's clean-up
    reach it), under a name no output takes."""
    job = make_job(JobStatus.RUNNING, tenant="t1")
    post = Postprocessor(cast(Any, None), cast(Any, None), outputs_prefix="outputs/")
    preview = PurePosixPath(preview_key("outputs/", job.tenant, job.job_id))
    for index in range(3):
        output, thumb = PurePosixPath(post.output_key(job, index)), PurePosixPath(post.thumbnail_key(job, index))
        assert preview.parent == output.parent == thumb.parent
        assert preview.name not in (output.name, thumb.name)
    assert preview.name == "preview.jpg"
    assert PurePosixPath(preview_key("outputs/", "t2", job.job_id)).parent != preview.parent  # a tenant's own
