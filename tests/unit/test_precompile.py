"""Precompiled forwards (``SDQ_PRECOMPILE_DIR``, issue 24): the option's wiring from settings and flags, the guards
kept in the files, the cases that fall back to plain ``torch.compile``, and, with the real tiny model on CPU, a
first start that writes the UNet and decoder artefacts and a second start that loads them without a trace,
keeping the exact path's images."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.worker_bench import build_parser
from cli.leverflags import acceleration_from_args
from shared.settings import AccelerationSettings
from workflows.generation.acceleration import AccelerationOptions, options_from_settings
from workflows.generation.acceleration.precompile import PrecompiledForward, new_stats, portable_guards, supported
from workflows.generation.pipeline import BatchShape, ImageJob, PipelineRunner

SHAPE = BatchShape(width=256, height=256, steps=3, guidance_scale=7.5, scheduler="euler")
FOX = ImageJob("fox", "a red fox in snow", "blurry", seed=7, num_images=1)


def test_the_option_is_off_by_default_and_comes_from_the_setting_and_the_flag() -> None:
    assert AccelerationOptions().precompile_dir is None
    assert AccelerationSettings().precompile_dir is None
    assert options_from_settings(AccelerationSettings(precompile_dir="/srv/pre")).precompile_dir == "/srv/pre"
    args = build_parser().parse_args(["worker", "--compile", "--precompile-dir", "/srv/pre"])
    options = acceleration_from_args(args)
    assert options is not None
    assert options.precompile_dir == "/srv/pre"
    assert options.compile


def test_only_guards_a_new_process_can_check_are_kept() -> None:
    weight = torch.nn.Parameter(torch.zeros(2))

    def entry(kind: str, value: Any = None, is_global: bool = False) -> SimpleNamespace:
        return SimpleNamespace(guard_type=kind, value=value, is_global=is_global)

    entries = [
        entry("TENSOR_MATCH", torch.zeros(2)),  # an input's shape, dtype, strides: kept
        entry("TENSOR_MATCH", weight),  # a parameter: its identity is this process's
        entry("TENSOR_MATCH", torch.zeros(2), is_global=True),
        entry("GLOBAL_STATE"),  # grad mode and the like: kept
        entry("SHAPE_ENV"),
        entry("ID_MATCH", object()),  # object identity: cannot be written to a file
    ]
    assert portable_guards(entries) == [True, False, False, True, True, False]


def test_this_torch_can_precompile() -> None:
    assert supported() is None


@pytest.mark.parametrize(
    ("extra", "reason"),
    [({"feature_reuse": 2}, "feature reuse"), ({"autotune": True}, "max-autotune")],
)
def test_levers_it_cannot_keep_fall_back_to_plain_compile(
    model_cache: Path, tmp_path: Path, extra: dict[str, Any], reason: str
) -> None:
    options = AccelerationOptions(compile=True, precompile_dir=str(tmp_path), buckets=(1,), **extra)
    runner = PipelineRunner.load("tiny", device="cpu", cache_root=model_cache, acceleration=options)
    report = runner.acceleration
    assert "precompile" not in report["applied"]
    assert reason in report["skipped"]["precompile"]
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_the_first_start_writes_the_artefacts_and_the_next_loads_them(model_cache: Path, tmp_path: Path) -> None:
    eager = PipelineRunner.load("tiny", device="cpu", cache_root=model_cache)
    reference = np.asarray(eager.generate([FOX], SHAPE)["fox"][0]).astype(np.int16)
    options = AccelerationOptions(compile=True, precompile_dir=str(tmp_path), buckets=(1,))

    first = PipelineRunner.load("tiny", device="cpu", cache_root=model_cache, acceleration=options)
    image = np.asarray(first.generate([FOX], SHAPE)["fox"][0]).astype(np.int16)
    stats = first.acceleration["precompile"]
    assert "precompile" in first.acceleration["applied"]
    assert (stats["built"], stats["loaded"], stats["failed"]) == (2, 0, {})
    names = sorted(p.name.split("-")[0] for p in tmp_path.glob("*.dynamo"))
    assert names == ["decoder", "unet"]
    assert np.abs(image - reference).max() <= 1

    second = PipelineRunner.load("tiny", device="cpu", cache_root=model_cache, acceleration=options)
    again = np.asarray(second.generate([FOX], SHAPE)["fox"][0]).astype(np.int16)
    stats = second.acceleration["precompile"]
    assert (stats["built"], stats["loaded"], stats["failed"]) == (0, 2, {})
    assert np.abs(again - image).max() == 0
    # A size outside the buckets runs eager, with nothing built for it.
    two = [FOX, ImageJob("owl", "an owl", "", seed=3, num_images=1)]
    second.generate(two, SHAPE)
    assert second.acceleration["precompile"]["built"] == 0


@pytest.mark.slow
def test_a_runner_warms_its_smallest_bucket_at_load_and_the_others_one_call_at_a_time(
    model_cache: Path, tmp_path: Path
) -> None:
    # The worker's start: the smallest bucket before its first job, each other bucket on a turn with no job held
    # (``Worker._warm_next_shape``), so a batch of that size never waits for its compile.
    options = AccelerationOptions(compile=True, precompile_dir=str(tmp_path), buckets=(1, 2), warmup=True)
    runner = PipelineRunner.load("tiny", device="cpu", cache_root=model_cache, acceleration=options)
    side = runner.native_size
    assert runner.cold_shapes == [(2, side, side)]
    assert runner.acceleration["precompile"]["built"] == 2  # bucket 1's UNet and the decoder
    assert set(runner.acceleration["warmup_s"]) == {f"1@{side}x{side}"}

    assert runner.warm_next() is True
    assert runner.cold_shapes == []
    built = runner.acceleration["precompile"]["built"]
    assert built > 2  # bucket 2's UNet (and on CPU its two-image decode)
    assert set(runner.acceleration["warmup_s"]) == {f"1@{side}x{side}", f"2@{side}x{side}"}
    assert runner.warm_next() is False  # nothing left: the worker stops asking

    # The first batch of two finds its shape compiled: nothing is built for it.
    owl = ImageJob("owl", "an owl", "", seed=3, num_images=1)
    images = runner.generate([FOX, owl], BatchShape(side, side, 2, 7.5, "euler"))
    assert set(images) == {"fox", "owl"}
    assert runner.acceleration["precompile"]["built"] == built


def test_the_startup_bench_tells_a_cold_precompile_folder_from_a_warm_one(tmp_path: Path) -> None:
    from benchmarks.worker_bench import _cache_state

    options = AccelerationOptions(compile=True, precompile_dir=str(tmp_path / "pre"))
    assert _cache_state(options) == "cold"
    (tmp_path / "pre").mkdir()
    (tmp_path / "pre" / ".staging.unet-x.dynamo").write_bytes(b"")
    assert _cache_state(options) == "cold"
    (tmp_path / "pre" / "unet-x.dynamo").write_bytes(b"")
    assert _cache_state(options) == "warm"


@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_an_artefact_is_loaded_with_the_cuda_graph_lever_in_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cuda_graphs: bool
) -> None:
    # torch wraps a loaded artefact in CUDA graphs by inductor's global triton.cudagraphs at load time, not by the
    # compile's options: without the lever in force there, a loaded UNet ran with no graph (0.376 s a batch-1 call
    # against 0.216 s on one H100). The loader is torch's (no GPU here): this checks what it is handed.
    import torch._inductor.config as inductor_config

    seen: list[bool] = []

    def load(module: Any, data: bytes) -> None:
        seen.append(inductor_config.triton.cudagraphs)

    monkeypatch.setattr(torch._dynamo.eval_frame.OptimizedModule, "_load_aot_compiled_module", load)
    sample = torch.zeros(1, 4)
    forward = PrecompiledForward(
        kind="unet",
        eager=lambda x: x,
        core=torch.nn.Linear(4, 4),
        fingerprint="f",
        folder=tmp_path,
        cuda_graphs=cuda_graphs,
        inputs=lambda sample, args, kwargs: (sample,),
        wrap=lambda out, kwargs: out,
        active=lambda: True,
        stats=new_stats(),
    )
    forward.path((sample,)).write_bytes(b"artefact")
    forward._forward_for((sample,))
    assert seen == [cuda_graphs]
    assert forward.stats["loaded"] == 1
    assert inductor_config.triton.cudagraphs is False  # the global is put back
