#!/usr/bin/env bash
# Issue 8: the worker loop's GPU duty cycle with feature reuse on (the whole UNet every 5th step, bucket 16,
# compiled UNet graphs and VAE decoder): 160 jobs through the real loop against the local cloud. Needs the
# service's runtime wheels carried too (benchmarks/scripts/device-wheels.txt), not only diffusers.
set -u
source "$(dirname "$0")/device-prelude.sh" reuse-loop
echo "== worker loop, levers + feature reuse 5, bucket 16, 160 jobs at ${SECONDS}s" | log
timeout $(left) python3 -m cli.main bench loop --model sd15 --batch 16 --width 512 --height 512 --steps 30 \
  --out $OUT --jobs 160 --compile --timeout $(( $(left) - 20 )) --worker-env SDQ_BATCH_BUCKETS=16 \
  --worker-env SDQ_FEATURE_REUSE=5 2>&1 | log
echo "== done at ${SECONDS}s" | log
keep_worker_logs
