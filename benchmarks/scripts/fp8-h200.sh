#!/usr/bin/env bash
# Issue 8, FP8 attention-block products on one H200 (or H100), run from the repo root with the wheels installed:
# the levers + FP8, the levers + FP8 + feature reuse every 3rd step, then the exact levers, all at bucket 16 with
# the VAE decoder eager (as in reuse-h200.sh), one process each on the same machine; each report carries the pixel
# difference against the exact eager path.
set -u
source "$(dirname "$0")/device-prelude.sh" fp8
COMMON="--arch sd15 --steps 30 --width 512 --height 512 --out $OUT --batch-sizes 16 --repeats 3 --compile --buckets 16 --no-compile-vae"
gpu_clocks
echo "== levers + fp8 at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker $COMMON --fp8 --profile 2>&1 | log
echo "== levers + fp8 + reuse 3 at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker $COMMON --fp8 --feature-reuse 3 --no-eager-rows 2>&1 | log
echo "== exact levers (same machine) at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker $COMMON --no-eager-rows 2>&1 | log
echo "== done at ${SECONDS}s" | log
