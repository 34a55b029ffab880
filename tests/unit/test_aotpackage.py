"""AOTInductor packages for the UNet and VAE decoder, with the real tiny model on CPU: the first start builds them,
the next start loads them without building, the images stay those of the exact path, uncompiled sizes run eager,
and a package's name changes with anything its code depends on, the weights included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.worker_bench import main
from workflows.generation.acceleration import AccelerationOptions
from workflows.generation.aotpackage import fingerprint
from workflows.generation.models import LoadedModel, load_model
from workflows.generation.pipeline import BatchShape, ImageJob, PipelineRunner

pytestmark = pytest.mark.slow

SHAPE = BatchShape(width=256, height=256, steps=3, guidance_scale=7.5, scheduler="euler")
FOX = ImageJob("fox", "a red fox in snow", "blurry", seed=7, num_images=1)


def levels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def aot_runner(model_cache: Path, folder: Path) -> PipelineRunner:
    options = AccelerationOptions(compile=True, aot_dir=str(folder), buckets=(1,))
    return PipelineRunner.load("tiny", device="cpu", cache_root=model_cache, acceleration=options)


@pytest.fixture(scope="module")
def first_start(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A first start with an empty package folder: one FOX image, which builds the UNet and decoder packages."""
    folder = tmp_path_factory.mktemp("aot")
    runner = aot_runner(model_cache, folder)
    image = runner.generate([FOX], SHAPE)["fox"][0]
    return {"folder": folder, "image": levels(image), "report": runner.acceleration}


def test_the_first_start_builds_both_packages_and_keeps_the_exact_images(
    model_cache: Path, first_start: dict[str, Any]
) -> None:
    report = first_start["report"]
    assert "aot_packages" in report["applied"]
    assert "compile_vae" in report["applied"]
    assert report["aot_packages"]["built"] == 2
    names = sorted(p.name for p in first_start["folder"].glob("*.pt2"))
    # CFG doubles the bucket's one image: the UNet package takes 2 latents, the sliced decoder 1.
    assert [n.split("-")[0] for n in names] == ["decoder", "unet"]
    assert names[1].endswith("-2x4x32x32-scalar-2x77x32.pt2")
    # Each package was loaded in a child process first (the loader can crash a process), and the outcome recorded.
    assert report["aot_packages"]["checked"] == 2
    checks = sorted(first_start["folder"].glob("*.check"))
    assert [c.name for c in checks] == [f"{n}.check" for n in names]
    assert all(json.loads(c.read_text())["loads"] for c in checks)
    eager = PipelineRunner.load("tiny", device="cpu", cache_root=model_cache).generate([FOX], SHAPE)["fox"][0]
    assert np.abs(first_start["image"] - levels(eager)).max() <= 1


def test_the_next_start_loads_the_packages_without_building(
    model_cache: Path, first_start: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nor compiling inductor's vector-ISA probe, which torch's aoti_load_package runs (28 s of a start on an H100).
    import torch._inductor.cpu_vec_isa as cpu_vec_isa

    def no_compiler() -> None:
        raise AssertionError("the load ran inductor's vector-ISA probe")

    monkeypatch.setattr(cpu_vec_isa, "pick_vec_isa", no_compiler)
    runner = aot_runner(model_cache, first_start["folder"])
    image = levels(runner.generate([FOX], SHAPE)["fox"][0])
    stats = runner.acceleration["aot_packages"]
    assert (stats["built"], stats["loaded"], stats["checked"]) == (0, 2, 0)  # the markers spare the child process
    assert np.array_equal(image, first_start["image"])  # the same kernels as the first start


def test_a_package_the_loader_rejects_in_the_child_leaves_that_shape_eager(
    model_cache: Path, first_start: dict[str, Any], tmp_path: Path
) -> None:
    for package in first_start["folder"].glob("*.pt2"):
        (tmp_path / package.name).write_bytes(package.read_bytes())  # no markers: both are checked again
    (unet_package,) = tmp_path.glob("unet-*.pt2")
    unet_package.write_bytes(b"not a package")
    runner = aot_runner(model_cache, tmp_path)
    image = levels(runner.generate([FOX], SHAPE)["fox"][0])
    stats = runner.acceleration["aot_packages"]
    assert (stats["checked"], stats["loaded"], stats["built"]) == (2, 1, 0)
    assert list(stats["failed"]) == [unet_package.name]
    assert "in a child process exited with status 1" in stats["failed"][unet_package.name]
    eager = PipelineRunner.load("tiny", device="cpu", cache_root=model_cache).generate([FOX], SHAPE)["fox"][0]
    assert np.abs(image - levels(eager)).max() <= 1  # eager UNet, packaged decoder
    # The next start reads both outcomes from the markers: no child process, the same shape eager again.
    again = aot_runner(model_cache, tmp_path)
    assert np.array_equal(levels(again.generate([FOX], SHAPE)["fox"][0]), image)
    stats = again.acceleration["aot_packages"]
    assert (stats["checked"], stats["loaded"]) == (0, 1)
    assert "recorded at an earlier start" in stats["failed"][unet_package.name]
    # A new file under that name (rebuilt or copied in) is checked again.
    unet_package.write_bytes(b"still not a package, and longer")
    third = aot_runner(model_cache, tmp_path)
    third.generate([FOX], SHAPE)
    assert third.acceleration["aot_packages"]["checked"] == 1


def test_sizes_that_are_not_compiled_run_eager_and_build_nothing(
    model_cache: Path, first_start: dict[str, Any]
) -> None:
    folder = first_start["folder"]
    before = sorted(folder.iterdir())
    runner = aot_runner(model_cache, folder)
    small = BatchShape(width=128, height=128, steps=3, guidance_scale=7.5, scheduler="euler")
    image = runner.generate([FOX], small)["fox"][0]
    stats = runner.acceleration["aot_packages"]
    assert (stats["loaded"], stats["built"], stats["failed"]) == (0, 0, {})
    assert sorted(folder.iterdir()) == before
    eager = PipelineRunner.load("tiny", device="cpu", cache_root=model_cache).generate([FOX], small)["fox"][0]
    assert np.array_equal(levels(image), levels(eager))


def test_calls_the_package_does_not_take_run_eager(model_cache: Path, first_start: dict[str, Any]) -> None:
    folder = first_start["folder"]
    before = sorted(folder.iterdir())
    runner = aot_runner(model_cache, folder)
    unet = runner.pipeline.unet
    torch.manual_seed(0)
    sample = torch.randn(2, unet.config.in_channels, 32, 32)
    hidden = torch.randn(2, 77, unet.config.cross_attention_dim)
    per_sample_timesteps = torch.tensor([500.0, 400.0])  # 1-D: the package takes one scalar timestep
    with torch.no_grad(), runner._accel.call_context(256, 256, 1):
        got = unet(sample, per_sample_timesteps, encoder_hidden_states=hidden, return_dict=False)[0]
    eager = load_model("tiny", device="cpu", cache_root=model_cache).pipeline.unet
    with torch.no_grad():
        want = eager(sample, per_sample_timesteps, encoder_hidden_states=hidden, return_dict=False)[0]
    assert torch.equal(got, want)
    assert runner.acceleration["aot_packages"]["loaded"] == 0
    assert sorted(folder.iterdir()) == before


def test_a_package_that_cannot_be_built_leaves_that_shape_eager(model_cache: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the package folder should be")
    runner = aot_runner(model_cache, blocked)
    image = runner.generate([FOX], SHAPE)["fox"][0]
    stats = runner.acceleration["aot_packages"]
    assert (stats["built"], stats["loaded"]) == (0, 0)
    assert sorted(name.split("-")[0] for name in stats["failed"]) == ["decoder", "unet"]
    runner.generate([FOX], SHAPE)
    assert len(stats["failed"]) == 2  # tried once per shape, not on every call
    eager = PipelineRunner.load("tiny", device="cpu", cache_root=model_cache).generate([FOX], SHAPE)["fox"][0]
    assert np.array_equal(levels(image), levels(eager))


def test_feature_reuse_keeps_torch_compile_and_no_package_is_built(model_cache: Path, tmp_path: Path) -> None:
    options = AccelerationOptions(compile=True, aot_dir=str(tmp_path), buckets=(1,), feature_reuse=3)
    runner = PipelineRunner.load("tiny", device="cpu", cache_root=model_cache, acceleration=options)
    assert "aot_packages" in runner.acceleration["skipped"]
    assert "feature_reuse" in runner.acceleration["applied"]
    runner.generate([FOX], SHAPE)
    assert list(tmp_path.iterdir()) == []


def test_the_fingerprint_changes_with_what_the_code_depends_on(model_cache: Path) -> None:
    unet = load_model("tiny", device="cpu", cache_root=model_cache).pipeline.unet
    base = fingerprint(unet, "unet", {"fuse_qkv": False, "fp8": False})
    assert fingerprint(unet, "unet", {"fuse_qkv": False, "fp8": False}) == base
    assert fingerprint(unet, "unet", {"fuse_qkv": True, "fp8": False}) != base
    with torch.no_grad():
        unet.conv_out.bias[0] += 0.01  # another checkpoint: inductor may have baked this bias into the code
    other_weights = fingerprint(unet, "unet", {"fuse_qkv": False, "fp8": False})
    assert other_weights != base
    assert fingerprint(unet.to(torch.bfloat16), "unet", {"fuse_qkv": False, "fp8": False}) not in {base, other_weights}


def test_the_fingerprint_compiles_nothing(model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # It is computed at every start: inductor's vector-ISA probe (a test program compiled and run per ISA) cost
    # 28 s of a warm start on one H100 machine. The host's CPU flags are read from /proc/cpuinfo instead.
    import torch._inductor.cpu_vec_isa as cpu_vec_isa

    def no_compiler() -> None:
        raise AssertionError("the fingerprint ran inductor's vector-ISA probe")

    monkeypatch.setattr(cpu_vec_isa, "pick_vec_isa", no_compiler)
    monkeypatch.setattr(cpu_vec_isa, "valid_vec_isa_list", no_compiler)
    unet = load_model("tiny", device="cpu", cache_root=model_cache).pipeline.unet
    assert len(fingerprint(unet, "unet", {"fuse_qkv": False, "fp8": False})) == 16


def test_the_startup_bench_reports_a_warm_start_from_packages(
    model_cache: Path, first_start: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SDQ_MODEL_CACHE", str(model_cache))
    argv = ["startup", "--arch", "tiny", "--device", "cpu", "--steps", "1", "--width", "256", "--height", "256"]
    aot = ["--compile", "--buckets", "1", "--aot-dir", str(first_start["folder"])]
    assert main([*argv, *aot, "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("startup-tiny-cpu-warm-*.json")
    report = json.loads(path.read_text())
    assert report["cache_state"] == "warm"
    assert report["acceleration"]["aot_packages"]["built"] == 0
    assert report["acceleration"]["aot_packages"]["loaded"] == 2


def test_sdxl_pipelines_take_the_package_with_their_added_conditioning(tmp_path: Path) -> None:
    from tests.unit.test_pipeline import tiny_sdxl_pipeline

    def runner(acceleration: AccelerationOptions | None) -> PipelineRunner:
        model = LoadedModel("tiny-xl", tiny_sdxl_pipeline(), torch.device("cpu"), torch.float32, True, None, "memory")
        return PipelineRunner(model, acceleration=acceleration)

    shape = BatchShape(64, 64, 2, 5.0, "euler")
    aot = runner(AccelerationOptions(compile=True, aot_dir=str(tmp_path), buckets=(1,)))
    image = aot.generate([FOX], shape)["fox"][0]
    assert aot.acceleration["aot_packages"]["built"] == 2
    (unet_package,) = tmp_path.glob("unet-*.pt2")
    # pooled text embeddings (2 x 32) and time ids (2 x 6) are package inputs beside the sample and text states
    assert unet_package.name.endswith("-2x4x8x8-scalar-2x77x64-2x32-2x6.pt2")
    eager = runner(None).generate([FOX], shape)["fox"][0]
    assert np.abs(levels(image) - levels(eager)).max() <= 1
