#!/usr/bin/env bash
# Issue 8, same-card ablations on one H200, run from the repo root with the wheels installed: the exact levers at
# bucket 16 (compile + CUDA graphs + channels_last + fused QKV, VAE decoder compiled), then the same without fused
# QKV, without channels_last, and in bf16; one process each on the same machine (the inductor cache is shared, so first calls are not comparable).
set -u
source "$(dirname "$0")/device-prelude.sh" ablation
COMMON="--arch sd15 --steps 30 --width 512 --height 512 --out $OUT --repeats 5 --compile --no-eager-rows \
  --batch-sizes 16 --buckets 16"
gpu_clocks
for variant in "" "--no-fuse-qkv" "--no-channels-last" "--precision bf16"; do
  echo "== levers ${variant:-(all)} at ${SECONDS}s" | log
  timeout $(left) python3 -m benchmarks.worker_bench worker $COMMON $variant 2>&1 | log
done
echo "== done at ${SECONDS}s" | log
