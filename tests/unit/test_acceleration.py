"""The speed levers' options and decisions, on CPU: GPU levers are skipped, buckets and hooks are checked."""

from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from cli.leverflags import acceleration_from_args, add_acceleration_arguments
from shared.settings import AccelerationSettings
from workflows.generation.acceleration import (
    DEFAULT_BUCKETS,
    AccelerationOptions,
    Accelerator,
    PromptEmbeddingCache,
    load_compile_cache,
    options_from_settings,
    parse_buckets,
    parse_resolutions,
)
from workflows.generation.acceleration.torchcompile import compile_forward

CPU = torch.device("cpu")


class FakePipe:
    """Stands in for a pipeline where only the accelerator's own logic is under test."""

    unet: Any = None
    vae: Any = None


def test_auto_levers_follow_compile() -> None:
    off = AccelerationOptions()
    assert (off.wants_cuda_graphs, off.wants_channels_last, off.wants_fuse_qkv) == (False, False, False)
    on = AccelerationOptions(compile=True)
    assert (on.wants_cuda_graphs, on.wants_channels_last, on.wants_fuse_qkv) == (True, True, True)
    assert on.compile_mode == "reduce-overhead"
    assert AccelerationOptions(compile=True, cuda_graphs=False).compile_mode == "default"
    assert AccelerationOptions(compile=True, autotune=True).compile_mode == "max-autotune"
    assert AccelerationOptions(compile=True, autotune=True, cuda_graphs=False).compile_mode == (
        "max-autotune-no-cudagraphs"
    )
    assert AccelerationOptions(compile=True, channels_last=False).wants_channels_last is False


def test_options_validate_and_serialise() -> None:
    with pytest.raises(ValueError, match="positive"):
        AccelerationOptions(buckets=(0, 4))
    with pytest.raises(ValueError, match="prompt_cache_size"):
        AccelerationOptions(prompt_cache_size=-1)
    data = AccelerationOptions(compile=True, buckets=(1, 4), compile_resolutions=((512, 768),)).to_dict()
    assert data["buckets"] == [1, 4]
    assert data["compile_resolutions"] == [[512, 768]]
    assert data["compile_mode"] == "reduce-overhead"
    assert AccelerationOptions().to_dict()["compile_mode"] is None


def test_parse_buckets_and_resolutions() -> None:
    assert parse_buckets("8,1, 4,4") == (1, 4, 8)
    assert parse_buckets("none") == ()
    assert parse_buckets("") == ()
    with pytest.raises(ValueError, match="positive"):
        parse_buckets("0,2")
    assert parse_resolutions("512x512, 768X512,640") == ((512, 512), (768, 512), (640, 640))


def test_gpu_levers_are_skipped_on_cpu_with_reasons() -> None:
    options = AccelerationOptions(compile=True, prompt_cache_size=0)
    accel = Accelerator(FakePipe(), CPU, options, native_size=512)
    assert not accel.compiled
    assert not accel.active
    assert accel.report.applied == []
    assert set(accel.report.skipped) == {"compile", "cuda_graphs", "channels_last", "fuse_qkv"}
    assert all("not on CUDA" in reason for reason in accel.report.skipped.values())
    # Auto buckets need a compiled model: no padding on CPU.
    assert accel.buckets == ()
    assert accel.padded_size(3, 512, 512) == 3
    assert accel.cap_batch_limit(6) == 6
    with accel.call_context(512, 512, 3):
        pass


def test_the_prompt_cache_is_skipped_for_other_pipelines() -> None:
    accel = Accelerator(FakePipe(), CPU, AccelerationOptions(), native_size=512)
    assert accel.prompt_cache is None
    assert "not an SD/SDXL pipeline" in accel.report.skipped["prompt_cache"]
    assert not PromptEmbeddingCache.supports(FakePipe())


def test_explicit_buckets_pad_on_cpu() -> None:
    accel = Accelerator(FakePipe(), CPU, AccelerationOptions(buckets=(4, 1, 2), prompt_cache_size=0), 256)
    assert accel.buckets == (1, 2, 4)
    assert [accel.padded_size(n, 320, 256) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 4, 5]  # over the top: as is
    assert [accel.cap_batch_limit(n) for n in (1, 3, 4, 16)] == [1, 2, 4, 4]
    assert not accel.uses_compiled_path(256, 256, 4)


def test_compiled_path_only_for_compiled_shapes() -> None:
    accel = Accelerator(FakePipe(), CPU, AccelerationOptions(prompt_cache_size=0), 512)
    # What _compile sets on CUDA, set by hand: the decisions are plain Python.
    accel.compiled, accel.buckets, accel.resolutions = True, DEFAULT_BUCKETS, ((512, 512),)
    assert accel.padded_size(3, 512, 512) == 4
    assert accel.padded_size(3, 640, 512) == 3  # not compiled at that size: no padding, eager
    assert accel.padded_size(17, 512, 512) == 17
    assert accel.uses_compiled_path(512, 512, 4)
    assert not accel.uses_compiled_path(512, 512, 17)
    assert not accel.uses_compiled_path(640, 512, 4)

    compiles: list[int] = []

    def backend(gm: torch.fx.GraphModule, _inputs: Any) -> Any:
        compiles.append(1)
        return gm.forward

    double = torch.compile(lambda x: x * 2, backend=backend, dynamic=False)
    with accel.call_context(640, 512, 3):
        double(torch.ones(3))
    assert compiles == []  # forced eager
    with accel.call_context(512, 512, 4):
        double(torch.ones(4))
    assert compiles == [1]


class ToyUNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.register_buffer("state", torch.zeros(2))

    def forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: Any = None) -> tuple[Any, ...]:
        # The second output aliases a buffer, as a CUDA graph's outputs alias its memory pool.
        return (sample * self.scale + timestep, self.state)


def test_compiled_forward_normalises_timesteps_and_clones_outputs() -> None:
    with warnings.catch_warnings():
        # torch's CPU build deprecates torch.jit in a module that inductor's CUDA-graph code imports.
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch._inductor.cudagraph_trees
    torch._dynamo.reset()
    compiles: list[torch.dtype] = []

    def backend(gm: torch.fx.GraphModule, inputs: list[Any]) -> Any:
        compiles.append(next(i.dtype for i in inputs if isinstance(i, torch.Tensor) and i.dim() == 0))
        return gm.forward

    unet = ToyUNet()
    compile_forward(unet, {"backend": backend, "dynamic": False}, cuda_graphs=True, timestep_arg=True)
    sample = torch.zeros(2, 3)
    with torch.no_grad():
        out_int = unet(sample, torch.tensor(7))  # DDIM/PNDM-style int64 timestep
        out_float = unet(sample, torch.tensor(7.0))  # Euler-style float32 timestep
        out_python = unet(sample, 7)
        out_kwarg = unet(sample, timestep=torch.tensor(3))
    assert compiles == [torch.float32]  # one graph for every scheduler's timestep type
    for out in (out_int, out_float, out_python):
        assert out[0].dtype == torch.float32
        assert torch.equal(out[0], torch.full((2, 3), 7.0))
    assert torch.equal(out_kwarg[0], torch.full((2, 3), 3.0))
    assert out_int[1].data_ptr() != unet.state.data_ptr()  # cloned out of the "pool"
    assert isinstance(unet, ToyUNet)  # the module object stays (config, dtype, hooks)
    torch._dynamo.reset()


def test_missing_compile_cache_file_loads_nothing(tmp_path: Path) -> None:
    assert load_compile_cache(tmp_path / "absent.bin") is None


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_acceleration_arguments(parser)
    return parser.parse_args(list(argv))


def test_bench_flags_map_to_options() -> None:
    assert acceleration_from_args(parse()) is None  # the plain eager benchmark
    assert acceleration_from_args(parse("--levers")) == AccelerationOptions()
    options = acceleration_from_args(
        parse("--compile", "--no-cuda-graphs", "--buckets", "1,8", "--compile-cache-dir", "/tmp/c", "--warmup")
    )
    assert options == AccelerationOptions(
        compile=True, cuda_graphs=False, buckets=(1, 8), cache_dir="/tmp/c", warmup=True
    )
    assert acceleration_from_args(parse("--prompt-cache", "0")) == AccelerationOptions(prompt_cache_size=0)
    assert acceleration_from_args(parse("--feature-reuse", "3")) == AccelerationOptions(feature_reuse=3)
    assert acceleration_from_args(parse("--fp8")) == AccelerationOptions(fp8=True)
    assert acceleration_from_args(parse("--compile", "--aot-dir", "/opt/sdq/aot")) == AccelerationOptions(
        compile=True, aot_dir="/opt/sdq/aot"
    )
    assert acceleration_from_args(parse("--no-vae-one-call")) == AccelerationOptions(vae_one_call=False)
    assert acceleration_from_args(parse("--vae-bf16")) == AccelerationOptions(vae_bf16=True)
    assert parse("--precision", "bf16").precision == "bf16"


def test_worker_settings_map_to_options() -> None:
    assert options_from_settings(AccelerationSettings()) == AccelerationOptions(warmup=True)
    settings = AccelerationSettings(
        compile=True,
        autotune=False,
        cuda_graphs=None,
        buckets="1,2,4,8",
        compile_resolutions="512x512,768x512",
        cache_dir="/var/cache/sdq/inductor",
        mega_cache="/opt/sdq/compile-cache.bin",
        warmup=False,
        prompt_cache_size=0,
        feature_reuse=3,
        fp8=True,
        aot_dir="/opt/sdq/aot",
        vae_one_call=False,
        vae_bf16=True,
    )
    assert options_from_settings(settings) == AccelerationOptions(
        compile=True,
        buckets=(1, 2, 4, 8),
        compile_resolutions=((512, 512), (768, 512)),
        cache_dir="/var/cache/sdq/inductor",
        mega_cache="/opt/sdq/compile-cache.bin",
        warmup=False,
        prompt_cache_size=0,
        feature_reuse=3,
        fp8=True,
        aot_dir="/opt/sdq/aot",
        vae_one_call=False,
        vae_bf16=True,
    )
    assert options_from_settings(AccelerationSettings(buckets="1,16")).buckets == (1, 16)


def test_the_service_variables_reach_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.settings import get_settings

    # Five options keep the variable names they had before the settings were grouped.
    for name, value in {
        "SDQ_COMPILE": "true",
        "SDQ_COMPILE_AUTOTUNE": "true",
        "SDQ_BATCH_BUCKETS": "1,2",
        "SDQ_COMPILE_CACHE_DIR": "/c",
        "SDQ_COMPILE_MEGA_CACHE": "/c/mega.bin",
        "SDQ_COMPILE_WARMUP": "false",
        "SDQ_PROMPT_CACHE_SIZE": "0",
    }.items():
        monkeypatch.setenv(name, value)
    assert options_from_settings(get_settings().acceleration) == AccelerationOptions(
        compile=True, autotune=True, buckets=(1, 2), cache_dir="/c", mega_cache="/c/mega.bin", prompt_cache_size=0
    )


def test_options_and_flags_import_without_torch() -> None:
    code = (
        "import sys, argparse; from cli import leverflags as a; "
        "p = argparse.ArgumentParser(); a.add_acceleration_arguments(p); "
        "assert a.acceleration_from_args(p.parse_args(['--compile'])).compile; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2], timeout=60)


def test_option_defaults_are_the_service_settings_but_for_the_runner_profile() -> None:
    from dataclasses import fields

    from shared.settings import Settings
    from workflows.generation.acceleration.options import RUNNER_PROFILE

    service = Settings().acceleration
    runner = AccelerationOptions()
    for f in fields(AccelerationOptions):
        expected = RUNNER_PROFILE.get(f.name, getattr(service, f.name))
        assert getattr(runner, f.name) == expected, f.name
    assert RUNNER_PROFILE == {"warmup": False}
    assert service.warmup is True  # the worker compiles every shape before its first job
    assert options_from_settings(service) == AccelerationOptions(warmup=True)


def test_every_option_has_a_flag_with_the_settings_help() -> None:
    from dataclasses import fields

    from cli.leverflags import flag_name

    parser = argparse.ArgumentParser()
    add_acceleration_arguments(parser)
    flags = {option for action in parser._actions for option in action.option_strings}
    for f in fields(AccelerationOptions):
        assert flag_name(f.name) in flags, f.name
    assert {"--prompt-cache", "--compile-cache-dir", "--no-compile-vae", "--no-cuda-graphs", "--levers"} <= flags
    assert "--no-fp8" not in flags  # off by default: switched on only
    assert "Compile the smallest bucket before the first job" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp64"])
