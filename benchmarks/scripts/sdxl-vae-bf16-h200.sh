#!/usr/bin/env bash
# Issue 8, next device call: SDXL with the levers plus the bf16 VAE decode (--vae-bf16: no fp32 upcast per
# call, so the decoder compiles too), against the eager runner and plain diffusers in the same run, with the
# image difference against the exact fp32 decode. SDXL architecture with random weights, 1024x1024, 30 steps,
# fp16, buckets 1 and 4. The exact levers measured 1.176 s (batch 1) and 4.632 s (batch 4) on another H200
# (benchmarks/results/2026-11-29-h200/README.md).
set -u
source "$(dirname "$0")/device-prelude.sh" sdxl-vae-bf16
echo "== SDXL, levers + bf16 VAE decode, batch 1 and 4 at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker --arch sdxl --steps 30 --width 1024 --height 1024 --out $OUT \
  --batch-sizes 1,4 --buckets 1,4 --repeats 3 --compile --vae-bf16 --compile-cache-dir /tmp/cc-sdxl 2>&1 | log
echo "== done at ${SECONDS}s" | log
