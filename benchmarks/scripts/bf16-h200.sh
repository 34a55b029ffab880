#!/usr/bin/env bash
# Issue 8: compiled bf16 at bucket 16 (all exact levers, VAE compiled), beside the same run's plain diffusers
# in bf16; the fp16 figure to compare is the same card's 7.10 img/s (benchmarks/results/2026-11-29-h200/worker-sd15-h200-20261129-1614..1643).
set -u
source "$(dirname "$0")/device-prelude.sh" bf16
echo "== compiled bf16, bucket 16 at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker --arch sd15 --steps 30 --width 512 --height 512 --out $OUT \
  --precision bf16 --compile --buckets 16 --batch-sizes 16 --repeats 3 --no-eager-rows 2>&1 | log
echo "== done at ${SECONDS}s" | log
