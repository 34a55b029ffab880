"""Probe (issue 24): skip the Dynamo re-trace at a warm start with torch's AOT-compiled functions.

    python3 benchmarks/scripts/precompile_probe.py save --arch sd15 --sizes 1,16 --file /tmp/unet.aot
    python3 benchmarks/scripts/precompile_probe.py load --arch sd15 --sizes 1,16 --file /tmp/unet.aot

``save`` traces the UNet once per batch size with ``torch.compile(fn, fullgraph=True, mode=...).aot_compile``
(torch's precompile: Dynamo's byte code, guards and the inductor artefacts in one serialisable object) and
writes one file per size. ``load``, in a fresh process, loads the files with
``torch.compiler.load_compiled_function`` (no trace), calls each size, and compares the result with the eager
UNet's (max abs difference), then times a call. Prints one JSON line per step; what torch lacks is printed, not
raised.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any

import torch

from workflows.generation.acceleration import AccelerationOptions
from workflows.generation.pipeline import PipelineRunner

T0 = time.perf_counter()


def say(**fields: Any) -> None:
    print(json.dumps({"t": round(time.perf_counter() - T0, 2), **fields}), flush=True)


def unet_step(unet: Any, sample: torch.Tensor, timestep: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    return unet(sample, timestep, encoder_hidden_states=hidden, return_dict=False)[0]


def portable_guards(entries: Any) -> list[bool]:
    """Keep what a new process can check (tensor metadata, grad mode and the like), not object identities."""
    return [
        e.guard_type in ("GLOBAL_STATE", "SHAPE_ENV")
        or (e.guard_type == "TENSOR_MATCH" and not e.is_global and not isinstance(e.value, torch.nn.Parameter))
        for e in entries
    ]


def sync(runner: PipelineRunner) -> None:
    if runner.device.type == "cuda":
        torch.cuda.synchronize()


def inputs(runner: PipelineRunner, size: int) -> tuple[Any, ...]:
    unet = runner.pipeline.unet
    dev, dtype = runner.device, runner.dtype
    side = int(unet.config.sample_size)
    gen = torch.Generator(dev).manual_seed(size)
    sample = torch.randn(2 * size, unet.config.in_channels, side, side, device=dev, dtype=dtype, generator=gen)
    hidden = torch.randn(2 * size, 77, unet.config.cross_attention_dim, device=dev, dtype=dtype, generator=gen)
    return sample, torch.tensor(500.0, device=dev), hidden


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["save", "load"])
    parser.add_argument("--arch", default="sd15")
    parser.add_argument("--sizes", default="1,16")
    parser.add_argument("--file", required=True, help="prefix: one file per size, PREFIX.<size>")
    parser.add_argument("--mode-compile", default="reduce-overhead")
    args = parser.parse_args()
    say(step="imported", torch=torch.__version__, has_load=hasattr(torch.compiler, "load_compiled_function"))
    runner = PipelineRunner.load(args.arch)
    levers = AccelerationOptions(compile=False, fuse_qkv=True, channels_last=True, cuda_graphs=False)
    runner.accelerate(levers)
    unet = runner.pipeline.unet
    say(step="loaded", applied=runner.acceleration["applied"])
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.mode == "save":
        options = {"guard_filter_fn": portable_guards, "triton.cudagraphs": args.mode_compile == "reduce-overhead"}
        compiled = torch.compile(unet_step, fullgraph=True, dynamic=False, options=options)
        for size in sizes:
            try:
                started = time.perf_counter()
                with torch.no_grad():
                    fn = compiled.aot_compile(((unet, *inputs(runner, size)), {}))
                traced = time.perf_counter() - started
                fn.save_compiled_function(f"{args.file}.{size}")
                say(step="saved", size=size, compile_s=traced, bytes=os.path.getsize(f"{args.file}.{size}"))
            except Exception as exc:  # a probe: report and go on
                say(step="save failed", size=size, error=repr(exc)[:500], where=traceback.format_exc()[-1500:])
        return 0
    import torch._inductor.config as inductor_config

    for size in sizes:
        try:
            started = time.perf_counter()
            graphs = args.mode_compile == "reduce-overhead" and runner.device.type == "cuda"
            with open(f"{args.file}.{size}", "rb") as f, inductor_config.patch({"triton.cudagraphs": graphs}):
                fn = torch.compiler.load_compiled_function(f)
            loaded = time.perf_counter() - started
            args_ = inputs(runner, size)
            with torch.no_grad():
                started = time.perf_counter()
                out = fn(unet, *args_).clone()
                sync(runner)
                first = time.perf_counter() - started
                second_start = time.perf_counter()
                fn(unet, *args_)
                sync(runner)
                second = time.perf_counter() - second_start
                times = []
                for _ in range(10):
                    s = time.perf_counter()
                    fn(unet, *args_)
                    sync(runner)
                    times.append(time.perf_counter() - s)
                ref = unet_step(unet, *args_)
                eager = []
                for _ in range(5):
                    s = time.perf_counter()
                    unet_step(unet, *args_)
                    if runner.device.type == "cuda":
                        torch.cuda.synchronize()
                    eager.append(time.perf_counter() - s)
            diff = (out.float() - ref.float()).abs().max().item()
            say(
                step="loaded fn",
                size=size,
                load_s=loaded,
                first_s=first,
                second_s=second,
                median_s=sorted(times)[5],
                eager_median_s=sorted(eager)[2],
                max_abs_diff_vs_eager=diff,
            )
        except Exception as exc:
            say(step="load failed", size=size, error=repr(exc)[:500], where=traceback.format_exc()[-1500:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
