"""The worker benchmark behind ``sdq bench worker``: throughput of the pipeline runner per batch size.

For each batch size: one warm-up call, then ``repeats`` timed calls through ``PipelineRunner.generate`` (the
worker's own path, CFG on). Alongside: FLOPs per image (counted once, over one batch-1 call), a measured matmul
rate as the physical bound (bf16 8192^3 on CUDA, fp32 on CPU), the share of that bound reached, and a plain
diffusers baseline (one ``pipe(prompt)`` call per image) on the same weights, so the report says what batching
buys on this machine.

With speed levers (``AccelerationOptions``: ``--compile``, ``--cuda-graphs``, ...), the same run first measures
the runner eager at every batch size (``eager_results``), then applies the levers to the same weights and
measures again (``results``, with each size's first calls, which pay the compile, under ``first_calls_s``), and
checks seed equivalence: one job's image alone and inside a full batch, eager and accelerated
(``equivalence``, in 8-bit pixel levels). ``run_startup_bench`` times a worker-like start: process start to the
first finished image, cold or warm compile cache.

Run it as ``sdq bench worker`` or ``python -m benchmarks.worker_bench worker|startup`` (the latter needs no service
dependencies).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import diffusers
import numpy as np
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from benchmarks.reports import file_slug, run_folder
from cli.leverflags import acceleration_from_args, add_acceleration_arguments
from workflows.generation.acceleration import AccelerationOptions, save_compile_cache
from workflows.generation.models import Precision, precision_name, quiet_logger
from workflows.generation.pipeline import BatchShape, ImageJob, PipelineRunner

logger = logging.getLogger("benchmarks.worker_bench")  # also when run as __main__

BENCH_SCHEMA_VERSION = 1
GUIDANCE_SCALE = 7.5
_PROMPTS = (
    "a lighthouse on a cliff at dusk, oil painting",
    "a red fox in fresh snow, telephoto photograph",
    "isometric city block, clean vector illustration",
    "a bowl of ramen on a wooden table, studio light",
)


def run_worker_bench(
    arch: str,
    batch_sizes: list[int],
    steps: int,
    width: int,
    height: int,
    out_dir: Path | None,
    device: str | None = None,
    repeats: int = 2,
    *,
    scheduler: str = "euler",
    precision: Precision | None = None,
    cache_root: Path | None = None,
    acceleration: AccelerationOptions | None = None,
    eager_rows: bool = True,
    profile: bool = False,
    stock_compile: bool = False,
    inductor: dict[str, Any] | None = None,
    cudnn_benchmark: bool | None = None,
) -> dict[str, Any]:
    """Benchmark ``arch`` (``tiny``, ``sd15``, ``sdxl``, or any loadable model) and write the JSON report.

    With ``acceleration``, the levers are applied after the eager measurements (``eager_rows=False`` skips
    the eager rows; the plain diffusers baseline is always measured). ``profile`` adds a GPU kernel-time
    breakdown of one short call at the smallest and largest batch size (CUDA only). ``stock_compile`` adds the
    baseline a user gets from the diffusers docs' recipe (channels_last, ``torch.compile`` of the UNet), timed at
    every batch size on a second copy of the same weights (CUDA only). ``inductor`` (config name to value) and
    ``cudnn_benchmark`` are A/B probes: set just before the levers are applied, so the eager rows and baselines
    do not see them.

    Returns the report (also written to ``out_dir/worker-<arch>-<device>-<date>.json``, by default
    ``benchmarks/results/<date>-<card>/``; its path is under ``"path"``). Raises ``ValueError`` for empty or
    non-positive batch sizes, ``ModelNotFoundError`` for an unknown model, ``GenerationOOM`` when a batch size
    does not fit.
    """
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive, got {batch_sizes}")
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    started = datetime.now(UTC)
    runner = PipelineRunner.load(arch, device=device, precision=precision, cache_root=cache_root)
    dev = runner.device
    shape = BatchShape(width, height, steps, GUIDANCE_SCALE, scheduler)

    extra: dict[str, Any] = {}
    with _quiet_noise_model_casts(runner.is_noise_model):
        # The FLOP count runs the whole pipeline once, so it also pays the first call's one-off costs.
        flops_per_image = count_flops_per_image(runner, shape)
        baseline = _bench_plain_diffusers(runner, shape, repeats)
        if stock_compile and dev.type == "cuda":
            extra["stock_compile"] = _bench_stock_compile(arch, runner, shape, batch_sizes, repeats, cache_root)
        if acceleration is None:
            results = [_bench_batch(runner, shape, size, repeats) for size in batch_sizes]
        else:
            largest = max(batch_sizes)
            eager_probe = _probe_images(runner, shape, largest)
            if eager_rows:
                extra["eager_results"] = [_bench_batch(runner, shape, size, repeats) for size in batch_sizes]
            logger.info("plain diffusers: %.3f s per image; applying %s", baseline["seconds_per_batch"], acceleration)
            extra["probes"] = apply_probes(inductor, cudnn_benchmark)
            runner.accelerate(acceleration)
            apply_probes(inductor, None)  # again: the levers' own inductor settings must not override the probe
            results = [_bench_batch(runner, shape, size, repeats, first_calls=2) for size in batch_sizes]
            probe = _probe_images(runner, shape, largest)
            extra["equivalence"] = {
                "probe_batch_size": largest,
                "eager_alone_vs_eager_batched": image_difference(eager_probe[0], eager_probe[1]),
                "alone_vs_batched": image_difference(probe[0], probe[1]),
                "alone_vs_eager_alone": image_difference(probe[0], eager_probe[0]),
                "batched_vs_eager_batched": image_difference(probe[1], eager_probe[1]),
            }
            extra["acceleration"] = runner.acceleration
            if acceleration.mega_cache and "compile" in runner.acceleration["applied"]:
                extra["acceleration"]["mega_cache_saved_bytes"] = save_compile_cache(Path(acceleration.mega_cache))
        if profile and dev.type == "cuda":
            extra["profile"] = [profile_call(runner, shape, size) for size in sorted({min(batch_sizes), largest})]
    matmul = measure_matmul_rate(dev)

    bound = matmul["flops_per_s"]
    for row in [*results, *extra.get("eager_results", []), baseline]:
        row["share_of_bound"] = row["images_per_s"] * flops_per_image / bound
    best = max(results, key=lambda r: r["images_per_s"])

    report: dict[str, Any] = {
        **_report_header("worker", arch, runner, started, dev),
        "config": {
            "width": width,
            "height": height,
            "steps": steps,
            "guidance_scale": GUIDANCE_SCALE,
            "scheduler": scheduler,
            "repeats": repeats,
            "batch_sizes": list(batch_sizes),
        },
        "flops_per_image": flops_per_image,
        "matmul": matmul,
        "results": results,
        "baseline": baseline,
        "best": {"batch_size": best["batch_size"], "images_per_s": best["images_per_s"]},
        "speedup_vs_baseline": best["images_per_s"] / baseline["images_per_s"],
        **extra,
    }
    out_dir = out_dir or run_folder(started, report["device"]["short"])
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"worker-{file_slug(arch)}-{file_slug(report['device']['short'])}-{started:%Y%m%d-%H%M%S}.json"
    path = out_dir / name
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    report["path"] = str(path)
    return report


def _bench_batch(
    runner: PipelineRunner, shape: BatchShape, size: int, repeats: int, first_calls: int = 1
) -> dict[str, Any]:
    """``first_calls`` warm-up calls (timed: they pay compiles and graph recording), then ``repeats`` timed
    ``generate`` calls of ``size`` single-image jobs."""
    jobs = [ImageJob(f"job{i}", _PROMPTS[i % len(_PROMPTS)], "", seed=i, num_images=1) for i in range(size)]
    dev = runner.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    warm = [_timed(dev, lambda: runner.generate(jobs, shape)) for _ in range(first_calls)]
    times = [_timed(dev, lambda: runner.generate(jobs, shape)) for _ in range(repeats)]
    seconds = statistics.median(times)
    row: dict[str, Any] = {
        "batch_size": size,
        "seconds_per_batch": seconds,
        "seconds_per_batch_all": times,
        "images_per_s": size / seconds,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None,
    }
    if first_calls > 1:
        row["first_calls_s"] = warm
    logger.info("batch %d: %.3f s per batch, %.2f images/s (first calls %s)", size, seconds, size / seconds, warm)
    return row


def _probe_images(runner: PipelineRunner, shape: BatchShape, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """One job's image generated alone, and in the middle of a ``batch``-image batch of other jobs."""
    probe = ImageJob("probe", _PROMPTS[1], "", seed=1234, num_images=1)
    alone = runner.generate([probe], shape)["probe"][0]
    others = [ImageJob(f"other{i}", _PROMPTS[i % len(_PROMPTS)], "", seed=100 + i, num_images=1) for i in range(batch)]
    middle = (batch - 1) // 2
    batched = runner.generate([*others[:middle], probe, *others[middle : batch - 1]], shape)["probe"][0]
    return np.asarray(alone), np.asarray(batched)


def image_difference(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Pixel differences of two 8-bit images: max, mean and 99th percentile, PSNR in dB (None when equal), and
    whether either is flat.

    A flat image (standard deviation under half a level) means NaN/black output, where a match says nothing.
    """
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    return {
        "max": int(diff.max()),
        "mean": float(diff.mean()),
        "p99": float(np.percentile(diff, 99)),
        "psnr_db": 10 * float(np.log10(255.0**2 / mse)) if mse > 0 else None,
        "flat": bool(a.std() < 0.5 or b.std() < 0.5),
    }


def batch_psnr(got: list[np.ndarray], want: list[np.ndarray]) -> dict[str, float]:
    """PSNR of a batch of 8-bit images against the same jobs' reference images, in dB: over the batch (its mean
    squared error) and of its worst image (inf where equal)."""
    mses = [float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)) for a, b in zip(got, want, strict=True)]
    mse = statistics.fmean(mses)
    return {
        "psnr_db": 10 * float(np.log10(255.0**2 / mse)) if mse > 0 else float("inf"),
        "worst_image_psnr_db": 10 * float(np.log10(255.0**2 / max(mses))) if max(mses) > 0 else float("inf"),
    }


def profile_call(runner: PipelineRunner, shape: BatchShape, size: int) -> dict[str, Any]:
    """GPU kernel time of one ``size``-image call, by kernel family and top kernels, against wall time."""
    from torch.profiler import ProfilerActivity, profile

    jobs = [ImageJob(f"p{i}", _PROMPTS[i % len(_PROMPTS)], "", seed=i, num_images=1) for i in range(size)]
    runner.generate(jobs, shape)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        wall = _timed(runner.device, lambda: runner.generate(jobs, shape))
    families: dict[str, float] = {}
    kernels: dict[str, float] = {}
    for event in prof.events():
        if getattr(event, "device_type", None) != torch.autograd.DeviceType.CUDA:
            continue
        seconds = event.time_range.elapsed_us() / 1e6
        family = _kernel_family(event.name)
        families[family] = families.get(family, 0.0) + seconds
        kernels[event.name[:100]] = kernels.get(event.name[:100], 0.0) + seconds
    busy = sum(families.values())
    return {
        "batch_size": size,
        "steps": shape.steps,
        "wall_s": wall,
        "gpu_kernel_s": busy,
        "gpu_busy_share": busy / wall if wall else None,
        "by_family_s": dict(sorted(families.items(), key=lambda kv: -kv[1])),
        "top_kernels_s": dict(sorted(kernels.items(), key=lambda kv: -kv[1])[:15]),
    }


_FAMILIES = (
    ("gemm (triton template)", re.compile(r"^triton_tem", re.IGNORECASE)),
    ("reduction/norm (triton)", re.compile(r"^triton_(red|per)", re.IGNORECASE)),
    ("pointwise (triton)", re.compile(r"^triton_", re.IGNORECASE)),
    ("attention", re.compile(r"flash|fmha|attention|sdpa", re.IGNORECASE)),
    ("convolution", re.compile(r"conv|implicit_gemm|winograd|dgrad|fprop", re.IGNORECASE)),
    ("gemm", re.compile(r"gemm|nvjet|xmma|cutlass|cublas|matmul", re.IGNORECASE)),
    # After convolution: cuDNN's NHWC convolution kernels carry "nhwc" in their names too.
    ("layout/copy", re.compile(r"copy|memcpy|memset|nchwToNhwc|nhwcToNchw|transpose", re.IGNORECASE)),
    ("norm (aten)", re.compile(r"norm|welford", re.IGNORECASE)),
    ("elementwise (aten)", re.compile(r"elementwise|vectorized|reduce_kernel", re.IGNORECASE)),
)


def _kernel_family(name: str) -> str:
    return next((family for family, pattern in _FAMILIES if pattern.search(name)), "other")


def _bench_plain_diffusers(runner: PipelineRunner, shape: BatchShape, repeats: int) -> dict[str, Any]:
    """The textbook call, one image per ``pipe(...)``, on the same weights and scheduler as the runner."""
    pipe = runner.pipeline
    pipe.scheduler = runner.scheduler(shape.scheduler)
    dev = runner.device

    def call() -> None:
        # Same log hygiene as the runner: SDXL's per-call VAE casts would print two warnings a call.
        with quiet_logger("diffusers.models.modeling_utils"):
            pipe(
                _PROMPTS[0],
                width=shape.width,
                height=shape.height,
                num_inference_steps=shape.steps,
                guidance_scale=shape.guidance_scale,
                generator=torch.Generator(dev).manual_seed(0),
            )

    call()
    times = [_timed(dev, call) for _ in range(repeats)]
    seconds = statistics.median(times)
    return {
        "description": "plain diffusers pipe(prompt), batch 1, same weights, dtype and scheduler",
        "batch_size": 1,
        "seconds_per_batch": seconds,
        "seconds_per_batch_all": times,
        "images_per_s": 1 / seconds,
    }


STOCK_COMPILE_RECIPE = (
    "pipe.unet/vae.to(memory_format=torch.channels_last); "
    "pipe.unet = torch.compile(pipe.unet, mode='reduce-overhead', fullgraph=True); pipe(prompts, generator=...)"
)


def _bench_stock_compile(
    arch: str,
    runner: PipelineRunner,
    shape: BatchShape,
    batch_sizes: list[int],
    repeats: int,
    cache_root: Path | None,
) -> dict[str, Any]:
    """The stock ``torch.compile`` baseline: a second copy of the model (same seed, same weights), compiled as
    the diffusers docs show, called through ``pipe(...)`` with one prompt and generator per image."""
    from workflows.generation.models import load_model

    precision = cast(Precision, precision_name(runner.dtype))
    model = load_model(arch, device=runner.device, precision=precision, cache_root=cache_root)
    pipe: Any = model.pipeline
    pipe.scheduler = type(runner.scheduler(shape.scheduler)).from_config(runner.scheduler(shape.scheduler).config)
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    pipe.vae.use_slicing = False  # the recipe's default: one VAE call for the batch
    pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)
    dev = runner.device
    rows = []
    for size in batch_sizes:
        prompts = [_PROMPTS[i % len(_PROMPTS)] for i in range(size)]

        def call(prompts: list[str] = prompts) -> None:
            pipe(
                prompts,
                width=shape.width,
                height=shape.height,
                num_inference_steps=shape.steps,
                guidance_scale=shape.guidance_scale,
                generator=[torch.Generator(dev).manual_seed(i) for i in range(len(prompts))],
            )

        first = [_timed(dev, call) for _ in range(2)]
        times = [_timed(dev, call) for _ in range(repeats)]
        seconds = statistics.median(times)
        rows.append(
            {
                "batch_size": size,
                "seconds_per_batch": seconds,
                "seconds_per_batch_all": times,
                "images_per_s": size / seconds,
                "first_calls_s": first,
            }
        )
        logger.info("stock compile, batch %d: %.3f s per batch (first calls %s)", size, seconds, first)
    return {"description": STOCK_COMPILE_RECIPE, "results": rows}


def apply_probes(inductor: dict[str, Any] | None, cudnn_benchmark: bool | None) -> dict[str, Any]:
    """Set inductor config values and ``torch.backends.cudnn.benchmark`` for an A/B run; what was set."""
    import torch._inductor.config as inductor_config

    for name, value in (inductor or {}).items():
        inductor_config.__setattr__(name, value)
    if cudnn_benchmark is not None:
        torch.backends.cudnn.benchmark = cudnn_benchmark
    return {"inductor": dict(inductor or {}), "cudnn_benchmark": torch.backends.cudnn.benchmark}


def parse_inductor_settings(items: list[str]) -> dict[str, Any]:
    """``["coordinate_descent_tuning=True", "freezing=1"]`` -> ``{"coordinate_descent_tuning": True, ...}``."""
    import ast

    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected NAME=VALUE, got {item!r}")
        try:
            out[name.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            out[name.strip()] = text.strip()
    return out


def run_startup_bench(
    arch: str,
    steps: int,
    width: int,
    height: int,
    out_dir: Path | None,
    device: str | None = None,
    *,
    scheduler: str = "euler",
    precision: Precision | None = None,
    cache_root: Path | None = None,
    acceleration: AccelerationOptions | None = None,
    then_sizes: list[int] | None = None,
) -> dict[str, Any]:
    """A worker's start: process start to the first finished image (batch 1, ``steps`` steps), by phase.

    Call it first thing in a fresh process (``python -m benchmarks.worker_bench startup``): the clock starts at the
    process's start (from ``/proc``), so interpreter start and imports count. With a compile cache folder or
    mega-cache file in ``acceleration``, the report says whether it held anything before the start (``cold`` or
    ``warm``). ``then_sizes``: after the first images, the compiled shapes no call has run yet are warmed as a
    worker holding no job warms them (``PipelineRunner.warm_next``: 3 steps each; the time they are all done is
    "every bucket ready"), then the first full call of each of these batch sizes is timed.
    """
    entered = process_age_s()
    started = datetime.now(UTC)
    options = acceleration or AccelerationOptions()
    cache_state = _cache_state(options)
    shape = BatchShape(width, height, steps, GUIDANCE_SCALE, scheduler)
    t0 = time.perf_counter()
    runner = PipelineRunner.load(arch, device=device, precision=precision, cache_root=cache_root, acceleration=options)
    dev = runner.device
    loaded = time.perf_counter()
    with _quiet_noise_model_casts(runner.is_noise_model):
        first = _timed_batch(runner, shape, 1)
        at_first_image = process_age_s()
        second = _timed_batch(runner, shape, 1)
        third = _timed_batch(runner, shape, 1)
        at_every_bucket = None
        if then_sizes:
            while runner.warm_next():
                pass
            at_every_bucket = process_age_s()
        later = {str(size): _timed_batch(runner, shape, size) for size in then_sizes or []}
        at_every_size = process_age_s() if then_sizes else None
    applied = runner.acceleration["applied"]
    compiled = "compile" in applied or "aot_packages" in applied or "precompile" in applied
    if not compiled:
        cache_state = "none"
    saved = None
    if options.mega_cache and "compile" in applied:
        saved = save_compile_cache(Path(options.mega_cache))
    report: dict[str, Any] = {
        **_report_header("startup", arch, runner, started, dev),
        "config": {"width": width, "height": height, "steps": steps, "scheduler": scheduler},
        "cache_state": cache_state,
        "acceleration": runner.acceleration,
        "phases_s": {
            "process_start_to_bench": entered,
            "load_and_levers": loaded - t0,
            "first_image": first,
            "second_image": second,
            "third_image": third,
        },
        "process_start_to_first_image_s": at_first_image,
        # Process start to the end of the idle warm-up: every compiled bucket loaded (or compiled) and recorded.
        "process_start_to_every_bucket_ready_s": at_every_bucket,
        # Each then-size's first full call after that warm-up, and the process's age at the end of the last one.
        "first_call_by_batch_size_s": later,
        "process_start_to_every_size_s": at_every_size,
        "compile_times": _compile_times(),
        "mega_cache_saved_bytes": saved,
    }
    out_dir = out_dir or run_folder(started, report["device"]["short"])
    out_dir.mkdir(parents=True, exist_ok=True)
    device = file_slug(report["device"]["short"])
    name = f"startup-{file_slug(arch)}-{device}-{cache_state}-{started:%Y%m%d-%H%M%S}.json"
    path = out_dir / name
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    report["path"] = str(path)
    return report


def _compile_times() -> str | None:
    """Dynamo's and inductor's time per compile phase in this process (``torch._dynamo.utils.compile_times``)."""
    try:
        from torch._dynamo.utils import compile_times

        return str(compile_times(repr="str", aggregate=True))
    except Exception:  # a report detail: its absence must not fail the bench
        return None


def _timed_batch(runner: PipelineRunner, shape: BatchShape, size: int) -> float:
    jobs = [ImageJob(f"job{i}", _PROMPTS[i % len(_PROMPTS)], "", seed=i, num_images=1) for i in range(size)]
    return _timed(runner.device, lambda: runner.generate(jobs, shape))


def _cache_state(options: AccelerationOptions) -> str:
    """``cold``/``warm`` by whether the cache folder, mega-cache file, AOT package or precompile folder holds
    anything; ``none`` without one."""
    folders = (options.cache_dir, options.mega_cache, options.aot_dir, options.precompile_dir)
    if not options.compile or not any(folders):
        return "none"
    if options.precompile_dir:
        folder = Path(options.precompile_dir)
        return "warm" if folder.is_dir() and any(folder.glob("[!.]*.dynamo")) else "cold"  # not staging files
    if options.aot_dir:
        folder = Path(options.aot_dir)
        return "warm" if folder.is_dir() and any(folder.glob("[!.]*.pt2")) else "cold"  # not staging files
    if options.mega_cache and Path(options.mega_cache).is_file():
        return "warm"
    if options.cache_dir and Path(options.cache_dir).is_dir() and any(Path(options.cache_dir).iterdir()):
        return "warm"
    return "cold"


def process_age_s() -> float | None:
    """Seconds since this process started (Linux ``/proc``), or None where that is unknown."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5); fields[0] is field 3
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _report_header(kind: str, arch: str, runner: PipelineRunner, started: Any, dev: torch.device) -> dict[str, Any]:
    """What every benchmark JSON starts with: what ran, where, when and with which versions."""
    return {
        "schema_version": BENCH_SCHEMA_VERSION,
        "kind": kind,
        "arch": arch,
        "model_note": runner.note,
        "date": started.isoformat(timespec="seconds"),
        "device": _describe_device(dev),
        "precision": precision_name(runner.dtype),
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def count_flops_per_image(runner: PipelineRunner, shape: BatchShape) -> int:
    """FLOPs of one batch-1 ``generate`` call (text encoders, every UNet step with CFG, VAE decode)."""
    with flop_counter() as counter:
        runner.generate([ImageJob("flops", _PROMPTS[0], "", seed=0, num_images=1)], shape)
    return int(counter.get_total_flops())


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, also counting attention on CPU (matmuls, convolutions and attention)."""
    # CPU SDPA runs a kernel the counter has no formula for; give it the same one as the CUDA kernels.
    cpu_sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    return FlopCounterMode(display=False, custom_mapping={cpu_sdpa: _sdpa_flops})


def _sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return int(sdpa_flop_count(query_shape, key_shape, value_shape))


def measure_matmul_rate(device: torch.device) -> dict[str, Any]:
    """A sustained dense matmul rate: bf16 8192^3 on CUDA (tensor cores), fp32 2048^3 on CPU."""
    cuda = device.type == "cuda"
    n, dtype, iters = (8192, torch.bfloat16, 50) if cuda else (2048, torch.float32, 5)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def loop() -> None:
        for _ in range(iters):
            torch.mm(a, b)

    loop()  # warm-up: kernel selection, clocks
    seconds = min(_timed(device, loop) for _ in range(3))
    return {
        "dtype": precision_name(dtype),
        "size": n,
        "iterations": iters,
        "flops_per_s": 2 * n**3 * iters / seconds,
    }


def _timed(device: torch.device, fn: Callable[[], object]) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _describe_device(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {
            "type": "cuda",
            "name": props.name,
            "short": props.name.replace("NVIDIA", "").strip().split(" ")[0],
            "memory_bytes": props.total_memory,
            "cuda": torch.version.cuda,
        }
    return {
        "type": "cpu",
        "name": _cpu_model_name(),
        "short": "cpu",
        "threads": torch.get_num_threads(),
    }


def _cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@contextmanager
def _quiet_noise_model_casts(enabled: bool) -> Iterator[None]:
    """Random fp16 weights can overflow to NaN; numpy then warns when the images are cast to uint8.

    Only for noise models: with trained weights the same warning means black images and must stay visible.
    """
    with warnings.catch_warnings():
        if enabled:
            warnings.filterwarnings("ignore", message="invalid value encountered in cast", category=RuntimeWarning)
        yield


def _summary_line(result: dict[str, Any]) -> str:
    """The best batch, the speed-up over plain diffusers and what the bound was computed from."""
    matmul = result["matmul"]
    return (
        f"Best: batch {result['best']['batch_size']}, {result['best']['images_per_s']:.2f} images/s, "
        f"{result['speedup_vs_baseline']:.2f}x the plain diffusers baseline. "
        f"FLOPs per image: {result['flops_per_image'] / 1e12:.3g} TFLOP; bound: measured {matmul['dtype']} "
        f"matmul rate {matmul['flops_per_s'] / 1e12:.3g} TFLOP/s."
    )


def format_bench_table(result: dict[str, Any]) -> str:
    """A markdown summary of a ``run_worker_bench`` report (for the README)."""
    if "eager_results" in result or "acceleration" in result:
        return format_lever_table(result)
    cfg = result["config"]
    dev = result["device"]
    peak_known = any(r.get("peak_memory_bytes") is not None for r in result["results"])
    lines = [
        f"**{result['arch']}** on {dev['name']} ({dev['type']}, {result['precision']}): "
        f"{cfg['width']}x{cfg['height']}, {cfg['steps']} steps, CFG {cfg['guidance_scale']}, "
        f"{cfg['scheduler']}; torch {result['versions']['torch']}, diffusers {result['versions']['diffusers']}, "
        f"{result['date']}",
        "",
        "| batch | s / batch | images / s | " + ("peak GPU memory | " if peak_known else "") + "share of bound |",
        "| ---: | ---: | ---: | " + ("---: | " if peak_known else "") + "---: |",
    ]
    rows = [*result["results"], {**result["baseline"], "batch_size": "1 (plain diffusers)"}]
    for row in rows:
        cells = [
            str(row["batch_size"]),
            f"{row['seconds_per_batch']:.3f}",
            f"{row['images_per_s']:.2f}",
        ]
        if peak_known:
            peak = row.get("peak_memory_bytes")
            cells.append(f"{peak / 2**30:.1f} GiB" if peak is not None else "-")
        cells.append(f"{row['share_of_bound']:.1%}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _summary_line(result)]
    if result.get("model_note"):
        lines.append(f"Note: {result['model_note'].rstrip('.')}.")
    return "\n".join(lines) + "\n"


def format_lever_table(result: dict[str, Any]) -> str:
    """A markdown summary of a run with speed levers: eager and accelerated side by side, same run."""
    cfg, dev, accel = result["config"], result["device"], result.get("acceleration", {})
    eager = {row["batch_size"]: row for row in result.get("eager_results", [])}
    lines = [
        f"**{result['arch']}** on {dev['name']} ({dev['type']}, {result['precision']}): "
        f"{cfg['width']}x{cfg['height']}, {cfg['steps']} steps, CFG {cfg['guidance_scale']}, "
        f"{cfg['scheduler']}; torch {result['versions']['torch']}, diffusers {result['versions']['diffusers']}, "
        f"{result['date']}",
        f"Levers applied: {', '.join(accel.get('applied', [])) or 'none'}"
        + (f" (mode {accel['options']['compile_mode']})" if "compile" in accel.get("applied", []) else "")
        + (f"; skipped: {accel['skipped']}" if accel.get("skipped") else ""),
        "",
        "| batch | eager s / batch | eager images / s | levers s / batch | levers images / s | speedup "
        "| first calls (s) | peak GPU memory | share of bound |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["results"]:
        base = eager.get(row["batch_size"])
        peak = row.get("peak_memory_bytes")
        cells = [
            str(row["batch_size"]),
            f"{base['seconds_per_batch']:.3f}" if base else "-",
            f"{base['images_per_s']:.2f}" if base else "-",
            f"{row['seconds_per_batch']:.3f}",
            f"{row['images_per_s']:.2f}",
            f"{row['images_per_s'] / base['images_per_s']:.2f}x" if base else "-",
            " + ".join(f"{t:.1f}" for t in row.get("first_calls_s", [])) or "-",
            f"{peak / 2**30:.1f} GiB" if peak is not None else "-",
            f"{row['share_of_bound']:.1%}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    b = result["baseline"]
    lines.append(
        f"| 1 (plain diffusers, eager) | {b['seconds_per_batch']:.3f} | {b['images_per_s']:.2f} "
        f"| - | - | - | - | - | {b['share_of_bound']:.1%} |"
    )
    for stock in result.get("stock_compile", {}).get("results", []):
        lines.append(
            f"| {stock['batch_size']} (stock torch.compile) | - | - | {stock['seconds_per_batch']:.3f} "
            f"| {stock['images_per_s']:.2f} | - | {' + '.join(f'{t:.1f}' for t in stock['first_calls_s'])} | - | - |"
        )
    lines += ["", _summary_line(result)]
    if "equivalence" in result:
        eq = result["equivalence"]
        parts = [
            f"{name.replace('_', ' ')}: max {d['max']}, mean {d['mean']:.2f}"
            + (f", PSNR {d['psnr_db']:.1f} dB" if d.get("psnr_db") is not None else "")
            + (" (flat image)" if d["flat"] else "")
            for name, d in eq.items()
            if isinstance(d, dict)
        ]
        lines.append(f"Seed equivalence (8-bit levels, batch {eq['probe_batch_size']}): " + "; ".join(parts) + ".")
    if result.get("model_note"):
        lines.append(f"Note: {result['model_note'].rstrip('.')}.")
    return "\n".join(lines) + "\n"


# --- command line ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker_bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    for name, help_text in (
        ("worker", "pipeline throughput per batch size vs plain diffusers, eager and with levers"),
        ("startup", "process start to first image (cold or warm compile cache)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--arch", default="tiny", help="tiny, sd15, sdxl or any loadable model")
        p.add_argument("--steps", type=int, default=30)
        p.add_argument("--width", type=int, default=512)
        p.add_argument("--height", type=int, default=512)
        p.add_argument("--scheduler", default="euler")
        p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
        p.add_argument("--out", help="report folder (default: benchmarks/results/<date>-<card>/)")
        add_acceleration_arguments(p)
        if name == "worker":
            p.add_argument("--batch-sizes", default="1,4,8,16")
            p.add_argument("--repeats", type=int, default=2)
            p.add_argument("--no-eager-rows", action="store_true", help="with levers: skip the eager rows")
            p.add_argument("--profile", action="store_true", help="GPU kernel-time breakdown (CUDA)")
            p.add_argument(
                "--stock-compile", action="store_true", help="also time the stock torch.compile recipe (CUDA)"
            )
            p.add_argument(
                "--inductor",
                action="append",
                default=[],
                metavar="NAME=VALUE",
                help="A/B probe: set an inductor config value before the levers compile (repeatable)",
            )
            p.add_argument(
                "--cudnn-benchmark",
                action=argparse.BooleanOptionalAction,
                default=None,
                help="A/B probe: torch.backends.cudnn.benchmark for the levers' run",
            )
        else:
            p.add_argument("--then-batch-sizes", default="", help="time these sizes' first calls after")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Progress lines on stderr (a run cut off by a time limit still shows the rows it finished).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    for name in ("benchmarks.worker_bench", "workflows.generation"):
        log = logging.getLogger(name)
        if not any(getattr(h, "_sdq_bench", False) for h in log.handlers):
            handler._sdq_bench = True  # type: ignore[attr-defined]
            log.addHandler(handler)
        log.setLevel(logging.INFO)
    acceleration = acceleration_from_args(args)
    if args.bench == "worker":
        result = run_worker_bench(
            args.arch,
            [int(b) for b in args.batch_sizes.split(",")],
            args.steps,
            args.width,
            args.height,
            Path(args.out) if args.out else None,
            device=args.device,
            repeats=args.repeats,
            scheduler=args.scheduler,
            precision=args.precision,
            acceleration=acceleration,
            eager_rows=not args.no_eager_rows,
            profile=args.profile,
            stock_compile=args.stock_compile,
            inductor=parse_inductor_settings(args.inductor),
            cudnn_benchmark=args.cudnn_benchmark,
        )
        print(format_bench_table(result))
    else:
        result = run_startup_bench(
            args.arch,
            args.steps,
            args.width,
            args.height,
            Path(args.out) if args.out else None,
            device=args.device,
            scheduler=args.scheduler,
            precision=args.precision,
            acceleration=acceleration,
            then_sizes=[int(b) for b in args.then_batch_sizes.split(",") if b.strip()],
        )
        keys = ("cache_state", "phases_s", "process_start_to_first_image_s", "process_start_to_every_size_s")
        print(json.dumps({k: result[k] for k in keys}))
    print(f"written: {result.get('path')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
