"""Fill an inductor cache folder for one lever variant and one batch size, so that the timed bench after it only
re-traces (issue 24: several variants compile in parallel processes, then are timed one after another).

    python3 benchmarks/scripts/warm_compile.py --size 16 --cache-dir /tmp/cc-a [--inductor NAME=VALUE ...]
        [--no-compile-vae] [--no-cuda-graphs] [--precompile-dir DIR] [--stock]

The model, levers and shapes are the bench's (``benchmarks.worker_bench``: SD 1.5 architecture, random weights,
512x512, CFG); ``--stock`` compiles the stock ``torch.compile`` recipe instead of the runner's levers. A few
denoising steps are enough: the compiled graph does not depend on the step count.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchmarks.worker_bench import (
    GUIDANCE_SCALE,
    _bench_stock_compile,
    apply_probes,
    parse_inductor_settings,
)
from workflows.generation.acceleration import AccelerationOptions, parse_buckets
from workflows.generation.pipeline import BatchShape, ImageJob, PipelineRunner


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--inductor", action="append", default=[])
    parser.add_argument("--no-compile-vae", action="store_true")
    parser.add_argument("--stock", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--arch", default="sd15")
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument("--precompile-dir")
    parser.add_argument("--buckets", default="1,16", help="the timed bench's buckets (same options, same cache key)")
    args = parser.parse_args()
    started = time.perf_counter()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.abspath(args.cache_dir)
    runner = PipelineRunner.load(args.arch)
    side = runner.native_size
    shape = BatchShape(side, side, args.steps, GUIDANCE_SCALE, "euler")
    if args.stock:
        _bench_stock_compile(args.arch, runner, shape, [args.size], 1, None)
    else:
        buckets = parse_buckets(args.buckets)
        options = AccelerationOptions(
            compile=True,
            buckets=buckets,
            cache_dir=args.cache_dir,
            compile_vae=not args.no_compile_vae,
            cuda_graphs=False if args.no_cuda_graphs else None,
            precompile_dir=args.precompile_dir,
        )
        runner.accelerate(options)
        apply_probes(parse_inductor_settings(args.inductor), None)
        jobs = [ImageJob(f"w{i}", "warm-up", "", seed=i, num_images=1) for i in range(args.size)]
        for _ in range(2):
            runner.generate(jobs, shape)
    print(f"warm {sys.argv[1:]}: {time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
