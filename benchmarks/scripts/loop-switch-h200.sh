#!/usr/bin/env bash
# Issue 8, device call: is the worker loop's per-batch gap to the bare bench (exact levers: 2.396 s against
# 2.277 s per batch of 16, benchmarks/results/2026-11-30-h200/README.md, duty cycle 100%) the GPU thread waiting for the GIL while
# the loop's boto3 threads run? The same loop with CPython's thread switch interval at 0.5 ms instead of 5 ms
# (set through a sitecustomize module on the worker's path).
set -u
source "$(dirname "$0")/device-prelude.sh" loop-switch
CACHE=/tmp/sdq-inductor-cache-exact
mkdir -p /tmp/switch && echo 'import sys; sys.setswitchinterval(0.0005)' > /tmp/switch/sitecustomize.py
echo "== worker loop, exact levers, bucket 16, 160 jobs, switch interval 0.5 ms at ${SECONDS}s" | log
timeout $(( $(left) - 10 )) python3 -m cli.main bench loop --model sd15 --batch 16 --width 512 --height 512 \
  --steps 30 --out $OUT --jobs 160 --compile --timeout $(( $(left) - 20 )) --worker-env SDQ_BATCH_BUCKETS=16 \
  --worker-env SDQ_ENCODE_PROCESSES=2 --worker-env SDQ_COMPILE_CACHE_DIR=$CACHE \
  --worker-env PYTHONPATH=/tmp/switch:$PYTHONPATH 2>&1 | log
echo "== done at ${SECONDS}s" | log
