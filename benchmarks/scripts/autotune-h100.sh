#!/usr/bin/env bash
# Issue 8 levers not measured before, on one H100 (sdq bench worker, SD 1.5 random weights, 512x512, 30 steps,
# fp16, batch 16, bucket 16 only so each compile is one shape):
#  1. max-autotune (GEMM/conv template search + the inductor settings for SD UNets), with CUDA graphs;
#  2. ablation: the default levers without channels_last, if time is left.
set -u
BUDGET=${BUDGET:-570}
source "$(dirname "$0")/device-prelude.sh" autotune
COMMON="--arch sd15 --steps 30 --width 512 --height 512 --out $OUT --batch-sizes 16 --repeats 3 --buckets 16"
echo "== 1. max-autotune at ${SECONDS}s" | log
timeout 420 python3 -m benchmarks.worker_bench worker $COMMON --compile --autotune --compile-cache-dir /tmp/cc-at 2>&1 | log
echo "== 2. levers without channels_last at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker $COMMON --compile --no-channels-last --no-eager-rows \
  --compile-cache-dir /tmp/cc-ncl 2>&1 | log
echo "== done at ${SECONDS}s" | log
