"""The worker benchmark behind ``sdq bench worker``: throughput of the pipeline runner per batch size.

For each batch size: one warm-up call, then ``repeats`` timed calls through ``PipelineRunner.generate`` (the
worker's own path, CFG on). Alongside: FLOPs per image (counted once, over one batch-1 call), a measured matmul
rate as the physical bound (bf16 8192^3 on CUDA, fp32 on CPU), the share of that bound reached, and a plain
diffusers baseline (one ``pipe(prompt)`` call per image) on the same weights, so the report says what batching
buys on this machine.
"""

from __future__ import annotations

import json
import platform
import re
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from workflows.generation.models import Precision, precision_name, quiet_logger
from workflows.generation.pipeline import BatchShape, ImageJob, PipelineRunner

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
    out_dir: Path,
    device: str | None = None,
    repeats: int = 2,
    *,
    scheduler: str = "euler",
    precision: Precision | None = None,
    cache_root: Path | None = None,
) -> dict[str, Any]:
    """Benchmark ``arch`` (``tiny``, ``sd15``, ``sdxl``, or any loadable model) and write the JSON report.

    Returns the report (also written to ``out_dir/worker-<arch>-<device>-<date>.json``; its path is under
    ``"path"``). Raises ``ValueError`` for empty or non-positive batch sizes, ``ModelNotFoundError`` for an
    unknown model, ``GenerationOOM`` when a batch size does not fit.
    """
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive, got {batch_sizes}")
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    started = datetime.now(UTC)
    runner = PipelineRunner.load(arch, device=device, precision=precision, cache_root=cache_root)
    dev = runner.device
    shape = BatchShape(width, height, steps, GUIDANCE_SCALE, scheduler)

    with _quiet_noise_model_casts(runner.is_noise_model):
        # The FLOP count runs the whole pipeline once, so it also pays the first call's one-off costs.
        flops_per_image = count_flops_per_image(runner, shape)
        baseline = _bench_plain_diffusers(runner, shape, repeats)
        results = [_bench_batch(runner, shape, size, repeats) for size in batch_sizes]
    matmul = measure_matmul_rate(dev)

    for row in results:
        row["share_of_bound"] = row["images_per_s"] * flops_per_image / matmul["flops_per_s"]
    best = max(results, key=lambda r: r["images_per_s"])
    baseline["share_of_bound"] = baseline["images_per_s"] * flops_per_image / matmul["flops_per_s"]

    report: dict[str, Any] = {
        "schema_version": BENCH_SCHEMA_VERSION,
        "kind": "worker",
        "arch": arch,
        "model_note": runner.note,
        "date": started.isoformat(timespec="seconds"),
        "device": _describe_device(dev),
        "precision": precision_name(runner.dtype),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
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
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"worker-{_slug(arch)}-{_slug(report['device']['short'])}-{started:%Y%m%d-%H%M%S}.json"
    path = out_dir / name
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    report["path"] = str(path)
    return report


def _bench_batch(runner: PipelineRunner, shape: BatchShape, size: int, repeats: int) -> dict[str, Any]:
    """Warm-up, then ``repeats`` timed ``generate`` calls of ``size`` single-image jobs."""
    jobs = [ImageJob(f"job{i}", _PROMPTS[i % len(_PROMPTS)], "", seed=i, num_images=1) for i in range(size)]
    dev = runner.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    runner.generate(jobs, shape)
    times = [_timed(dev, lambda: runner.generate(jobs, shape)) for _ in range(repeats)]
    seconds = statistics.median(times)
    return {
        "batch_size": size,
        "seconds_per_batch": seconds,
        "seconds_per_batch_all": times,
        "images_per_s": size / seconds,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None,
    }


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


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "model"


@contextmanager
def _quiet_noise_model_casts(enabled: bool) -> Iterator[None]:
    """Random fp16 weights can overflow to NaN; numpy then warns when the images are cast to uint8.

    Only for noise models: with trained weights the same warning means black images and must stay visible.
    """
    with warnings.catch_warnings():
        if enabled:
            warnings.filterwarnings("ignore", message="invalid value encountered in cast", category=RuntimeWarning)
        yield


def format_bench_table(result: dict[str, Any]) -> str:
    """A markdown summary of a ``run_worker_bench`` report (for the README)."""
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
    matmul = result["matmul"]
    lines += [
        "",
        f"Best: batch {result['best']['batch_size']}, {result['best']['images_per_s']:.2f} images/s, "
        f"{result['speedup_vs_baseline']:.2f}x the plain diffusers baseline. "
        f"FLOPs per image: {result['flops_per_image'] / 1e12:.3g} TFLOP; bound: measured {matmul['dtype']} "
        f"matmul rate {matmul['flops_per_s'] / 1e12:.3g} TFLOP/s.",
    ]
    if result.get("model_note"):
        lines.append(f"Note: {result['model_note']}.")
    return "\n".join(lines) + "\n"
