#!/usr/bin/env bash
# Issue 8 measurements on one H100, run from the repo root; $OUT collects the JSON reports and the log.
#  1. cold start: process start to first image, empty compile cache folder (saves a mega-cache file);
#  2. start from that mega-cache file alone, in a fresh cache folder (the "shipped cache" start);
#  3. worker bench, fp16: eager rows, then the levers (compile + CUDA graphs + channels_last + fused QKV +
#     compiled VAE decoder, buckets) at batch 1, 8, 16 beside plain diffusers, with a kernel-time profile;
#  4. the same in bf16 at batch 1 and 16, if time is left.
set -u
BUDGET=${BUDGET:-585}
source "$(dirname "$0")/device-prelude.sh" issue8
CACHE=/tmp/sdq-inductor-cache
MEGA=/tmp/sdq-mega-sd15.bin
COMMON="--arch sd15 --steps 30 --width 512 --height 512 --out $OUT"
LEVERS="--compile"

python3 -c 'import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__, torch.cuda.get_device_name())' 2>&1 | log
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,memory.used --format=csv 2>&1 | log

echo "== 1. cold start (empty cache folder) at ${SECONDS}s" | log
timeout 200 python3 -m benchmarks.worker_bench startup $COMMON $LEVERS --compile-cache-dir "$CACHE" --mega-cache "$MEGA" 2>&1 | log
echo "== 2. start from the mega-cache file in a fresh cache folder at ${SECONDS}s" | log
timeout 90 python3 -m benchmarks.worker_bench startup $COMMON $LEVERS --compile-cache-dir /tmp/cc-fresh --mega-cache "$MEGA" 2>&1 | log
echo "== 3. worker bench fp16 at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker $COMMON --batch-sizes 1,8,16 --repeats 3 --profile \
  $LEVERS --compile-cache-dir "$CACHE" 2>&1 | log
echo "== 4. worker bench bf16 at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker $COMMON --batch-sizes 1,16 --repeats 3 --precision bf16 \
  $LEVERS --compile-cache-dir "$CACHE" 2>&1 | log
echo "== done at ${SECONDS}s" | log
