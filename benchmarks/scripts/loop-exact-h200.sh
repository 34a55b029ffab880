#!/usr/bin/env bash
# Issue 8, device call: the duty cycle of the full worker loop on the exact path (compile, CUDA graphs, compiled
# VAE decoder, no feature reuse) on an H200, bucket 16, 160 jobs, PNG encoding in 2 helper processes (the CUDA
# default), then the bare bench with the loop's euler_a scheduler on the same cache folder as its same-machine
# reference. Needs the service's runtime wheels carried (benchmarks/scripts/device-wheels.txt).
set -u
source "$(dirname "$0")/device-prelude.sh" loop-exact
CACHE=/tmp/sdq-inductor-cache-exact
echo "== 1. worker loop, exact levers, bucket 16, 160 jobs at ${SECONDS}s" | log
timeout $(( $(left) - 10 )) python3 -m cli.main bench loop --model sd15 --batch 16 --width 512 --height 512 \
  --steps 30 --out $OUT --jobs 160 --compile --timeout $(( $(left) - 20 )) --worker-env SDQ_BATCH_BUCKETS=16 \
  --worker-env SDQ_ENCODE_PROCESSES=2 --worker-env SDQ_COMPILE_CACHE_DIR=$CACHE 2>&1 | log
keep_worker_logs
echo "== 2. bare bench, exact levers, bucket 16, euler_a at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker --arch sd15 --steps 30 --width 512 --height 512 --out $OUT \
  --scheduler euler_a --compile --buckets 16 --batch-sizes 16 --repeats 3 --no-eager-rows \
  --compile-cache-dir $CACHE 2>&1 | log
echo "== done at ${SECONDS}s" | log
