#!/usr/bin/env bash
# Issue 8 levers not measured before, on one H100 (sdq bench worker, SD 1.5 random weights, 512x512, 30 steps,
# fp16, batch 16, bucket 16 only so each compile is one shape):
#  1. max-autotune (GEMM/conv template search + the inductor settings for SD UNets), with CUDA graphs;
#  2. ablation: the default levers without channels_last, if time is left.
set -u
OUT=${OUT:-out/autotune}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD
[ -d /tmp/site ] && python3 -m compileall -q -j 16 /tmp/site >/dev/null 2>&1
left() { echo $(( ${BUDGET:-570} - SECONDS )); }
log() { tee -a "$OUT/log.txt" | grep -v -E '^\s*$|UserWarning|warnings.warn|_warn_once|torchvision'; }
COMMON="--arch sd15 --steps 30 --width 512 --height 512 --out $OUT --batch-sizes 16 --repeats 3 --buckets 16"
echo "== 1. max-autotune at ${SECONDS}s" | log
timeout 420 python3 -m benchmarks.worker_bench worker $COMMON --compile --autotune --compile-cache-dir /tmp/cc-at 2>&1 | log
echo "== 2. levers without channels_last at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker $COMMON --compile --no-channels-last --no-eager-rows \
  --compile-cache-dir /tmp/cc-ncl 2>&1 | log
echo "== done at ${SECONDS}s" | log
