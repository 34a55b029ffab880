#!/usr/bin/env bash
# Issue 8, the same-machine rows that complete reuse-latency-h200.sh on one H200, run from the repo root with the
# wheels installed: the exact levers and reuse every 3rd step at bucket 16, then reuse every 5th step at bucket 1,
# all with the VAE decoder compiled; one process each, every report with the pixel difference against exact eager.
set -u
source "$(dirname "$0")/device-prelude.sh" reuse-vae
COMMON="--arch sd15 --steps 30 --width 512 --height 512 --out $OUT --repeats 5 --compile --no-eager-rows"
gpu_clocks
echo "== exact levers, bucket 16, VAE compiled at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker $COMMON --batch-sizes 16 --buckets 16 2>&1 | log
echo "== reuse 3, bucket 16, VAE compiled at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker $COMMON --batch-sizes 16 --buckets 16 --feature-reuse 3 2>&1 | log
echo "== reuse 5, bucket 1, VAE compiled at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker $COMMON --batch-sizes 1 --buckets 1 --feature-reuse 5 2>&1 | log
echo "== done at ${SECONDS}s" | log
