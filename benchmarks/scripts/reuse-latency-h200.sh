#!/usr/bin/env bash
# Issue 8, feature reuse with every lever on one H200, run from the repo root with the wheels installed: a lone
# job's latency (bucket 1) with reuse every 3rd step, the best throughput (bucket 16) with reuse every 5th step and
# the VAE decoder compiled too, then the exact levers at bucket 1 as the same-machine latency baseline; one process
# each, every report with the pixel difference against the exact eager path.
set -u
source "$(dirname "$0")/device-prelude.sh" reuse-latency
COMMON="--arch sd15 --steps 30 --width 512 --height 512 --out $OUT --repeats 5 --compile"
gpu_clocks
echo "== reuse 3, bucket 1, VAE compiled at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker $COMMON --batch-sizes 1 --buckets 1 --feature-reuse 3 2>&1 | log
echo "== reuse 5, bucket 16, VAE compiled at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker $COMMON --batch-sizes 16 --buckets 16 --feature-reuse 5 \
  --no-eager-rows 2>&1 | log
echo "== exact levers, bucket 1, VAE compiled at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker $COMMON --batch-sizes 1 --buckets 1 --no-eager-rows 2>&1 | log
echo "== done at ${SECONDS}s" | log
