"""Issue 24, quality-trading: CFG truncation (``cfg_truncation``) alone and with feature reuse, at one batch size,
each share timed beside the exact path in one process and its images compared with the eager exact path's.

    python3 benchmarks/scripts/cfgtrunc_probe.py --out DIR --cache-dir DIR [--feature-reuse N]
        [--shares 0,0.2,0.3,0.4,0.5] [--batch 16] [--plain] [--warm-only] [--arch sdxl --size 1024 --vae-bf16]
    python3 benchmarks/scripts/cfgtrunc_probe.py --out DIR --cache-dir DIR --stock [--batch 16]

SD 1.5 architecture (or SDXL with ``--arch sdxl``), random weights, 512x512 (``--size``), 30 steps, euler, CFG 7.5,
fp16 (the bench's model and shapes). ``--vae-bf16``: the SDXL decode lever (bf16 instead of fp32).
The runner's levers (compile, CUDA graphs, channels_last, fused QKV, compiled decoder, bucket = the batch) are
applied once; the share is then set per row (every share runs the same two UNet shapes, so one compile serves
all). Each row: 2 first calls, 3 timed calls (median), the batch's 16 images against the same 16 jobs run eagerly
and exactly (PSNR over the batch and its worst image), and a probe job alone against inside the batch (seed
equivalence). ``--plain`` adds plain diffusers (one image per ``pipe(...)``); ``--stock`` times the stock
``torch.compile`` recipe instead. ``--warm-only`` fills the cache folder (3 steps, largest share) and exits.
Writes ``cfgtrunc-<variant>-<card>-<time>.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.worker_bench import (
    _PROMPTS,
    GUIDANCE_SCALE,
    _bench_plain_diffusers,
    _bench_stock_compile,
    _describe_device,
    _timed,
    _versions,
    batch_psnr,
    image_difference,
)
from workflows.generation.acceleration import AccelerationOptions
from workflows.generation.pipeline import BatchShape, ImageJob, PipelineRunner


def images(runner: PipelineRunner, jobs: list[ImageJob], shape: BatchShape) -> list[np.ndarray]:
    out = runner.generate(jobs, shape)
    return [np.asarray(out[job.key][0]) for job in jobs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--feature-reuse", type=int, default=0)
    parser.add_argument("--shares", default="0,0.2,0.3,0.4,0.5")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--stock", action="store_true")
    parser.add_argument("--warm-only", action="store_true")
    parser.add_argument("--arch", default="sd15")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--vae-bf16", action="store_true")
    args = parser.parse_args()
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    runner = PipelineRunner.load(args.arch)
    dev = runner.device
    shape = BatchShape(args.size, args.size, 3 if args.warm_only else 30, GUIDANCE_SCALE, "euler")
    report: dict[str, Any] = {
        "kind": "cfgtrunc-probe",
        "started": started.isoformat(),
        "device": _describe_device(dev),
        "versions": _versions(),
        "config": {
            "arch": args.arch,
            "width": args.size,
            "height": args.size,
            "vae_bf16": args.vae_bf16,
            "steps": shape.steps,
            "guidance_scale": GUIDANCE_SCALE,
            "scheduler": "euler",
            "batch_size": args.batch,
            "feature_reuse": args.feature_reuse,
        },
    }
    if args.stock:
        report["variant"] = "stock"
        report["stock_compile"] = _bench_stock_compile(args.arch, runner, shape, [args.batch], 3, None)
        return write(report, args, "warm" if args.warm_only else "stock", started, t0)
    jobs = [ImageJob(f"job{i}", _PROMPTS[i % len(_PROMPTS)], "", seed=i, num_images=1) for i in range(args.batch)]
    probe = ImageJob("probe", _PROMPTS[1], "", seed=1234, num_images=1)
    others = [ImageJob(f"o{i}", _PROMPTS[i % len(_PROMPTS)], "", seed=100 + i, num_images=1) for i in range(args.batch)]
    middle = (args.batch - 1) // 2
    probe_batch = [*others[:middle], probe, *others[middle : args.batch - 1]]
    shares = [float(s) for s in args.shares.split(",")]
    if not args.warm_only:
        if args.plain:
            report["plain_diffusers"] = _bench_plain_diffusers(runner, shape, 3)
        exact_eager = images(runner, jobs, shape)
        exact_probe = images(runner, [probe], shape)[0]
    runner.accelerate(
        AccelerationOptions(
            compile=True,
            buckets=(args.batch,),
            cache_dir=args.cache_dir,
            feature_reuse=args.feature_reuse,
            cfg_truncation=max(shares) or 0.0,
            vae_bf16=args.vae_bf16,
        )
    )
    report["acceleration"] = runner.acceleration
    accel = runner._accel  # the share is set per row below: one compile serves every share
    if args.warm_only:
        accel.cfg_truncation = max(shares)
        for _ in range(2):
            runner.generate(jobs, shape)
        return write(report, args, "warm", started, t0)
    rows = []
    for share in shares:
        accel.cfg_truncation = share
        first = [_timed(dev, lambda: runner.generate(jobs, shape)) for _ in range(2)]
        times = [_timed(dev, lambda: runner.generate(jobs, shape)) for _ in range(3)]
        seconds = statistics.median(times)
        got = images(runner, jobs, shape)
        alone = images(runner, [probe], shape)[0]
        batched = np.asarray(runner.generate(probe_batch, shape)["probe"][0])
        row = {
            "cfg_truncation": share,
            "seconds_per_batch": seconds,
            "seconds_per_batch_all": times,
            "first_calls_s": first,
            "images_per_s": args.batch / seconds,
            "vs_eager_exact": batch_psnr(got, exact_eager),
            "probe_vs_eager_exact": image_difference(alone, exact_probe),
            "probe_alone_vs_batched": image_difference(alone, batched),
            "flat_images": sum(int(g.std() < 0.5) for g in got),
        }
        rows.append(row)
        psnr = row["vs_eager_exact"]
        print(
            f"share {share}: {seconds:.3f} s/batch, {row['images_per_s']:.2f} img/s, "
            f"PSNR {psnr['psnr_db']:.1f} dB (worst {psnr['worst_image_psnr_db']:.1f}), "
            f"alone vs batched max {row['probe_alone_vs_batched']['max']}",
            flush=True,
        )
    report["rows"] = rows
    report["feature_reuse_steps"] = runner.acceleration.get("feature_reuse_steps")
    return write(report, args, f"reuse{args.feature_reuse}" if args.feature_reuse else "exact", started, t0)


def write(report: dict[str, Any], args: argparse.Namespace, variant: str, started: datetime, t0: float) -> int:
    report["wall_s"] = time.perf_counter() - t0
    if variant == "warm":
        print(f"warm {variant} reuse={args.feature_reuse}: {report['wall_s']:.1f} s", flush=True)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"cfgtrunc-{variant}-{args.arch}-{report['device']['short']}-{started:%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"written: {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
