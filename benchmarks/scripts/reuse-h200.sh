#!/usr/bin/env bash
# Issue 8, feature reuse (DeepCache-style, interval 3) on one H200, in one process, run from the repo root with
# the wheels installed: eager exact rows at batch 16 (the same-run baseline), then compile + CUDA graphs +
# channels_last + fused QKV + feature reuse at bucket 16 (VAE decoder eager, to keep the compile inside the
# call's time), with the pixel difference against the exact eager path and a kernel-time profile.
set -u
source "$(dirname "$0")/device-prelude.sh" reuse
gpu_clocks
echo "== reuse 3, compiled, bucket 16 at ${SECONDS}s" | log
timeout "${BUDGET:-290}" python3 -m benchmarks.worker_bench worker --arch sd15 --steps 30 --width 512 --height 512 \
  --out "$OUT" --batch-sizes 16 --repeats 3 --compile --buckets 16 --no-compile-vae --feature-reuse 3 \
  --profile 2>&1 | log
echo "== done at ${SECONDS}s" | log
