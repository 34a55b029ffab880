#!/usr/bin/env bash
# Issue 8, next device call: the end-to-end gain of decoding a call's images in one VAE call (the eager default
# since 2026-11-29) against one at a time, same run: the bench's eager rows decode in one call, its "levers"
# rows are the same eager runner with --no-vae-one-call. SD 1.5 at batch 8 and 16 (the decode alone: 0.235 s
# against 0.419 s per 16 images, benchmarks/results/2026-11-29-h200/README.md), then SDXL at batch 1 and 4 (fp32 decode) if time
# is left. Random weights, 30 steps, fp16.
set -u
source "$(dirname "$0")/device-prelude.sh" vae-one-call
echo "== SD 1.5, one call (eager rows) against one at a time (levers rows) at ${SECONDS}s" | log
timeout $(( $(left) / 2 )) python3 -m benchmarks.worker_bench worker --arch sd15 --steps 30 --width 512 --height 512 \
  --out $OUT --batch-sizes 8,16 --repeats 5 --no-vae-one-call 2>&1 | log
echo "== SDXL, the same at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker --arch sdxl --steps 30 --width 1024 --height 1024 \
  --out $OUT --batch-sizes 1,4 --repeats 3 --no-vae-one-call 2>&1 | log
echo "== done at ${SECONDS}s" | log
