#!/usr/bin/env bash
# Issue 8: GPU kernel time of SDXL with the levers at bucket 4 (what bounds it), on the machine of
# sdxl-levers-h200.sh with its cache folder warm. SDXL architecture with random weights, 1024x1024, 30 steps, fp16.
set -u
source "$(dirname "$0")/device-prelude.sh" sdxl-profile
timeout 400 python3 -m benchmarks.worker_bench worker --arch sdxl --steps 30 --width 1024 --height 1024 --out $OUT \
  --batch-sizes 4 --buckets 4 --repeats 2 --compile --profile --no-eager-rows --compile-cache-dir /tmp/cc-sdxl 2>&1 | log
