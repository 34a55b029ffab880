#!/usr/bin/env bash
# Issue 8: PNG encoding in the worker's threads vs in 2 helper processes, with the levers (compiled, bucket 16),
# on the real worker loop against the local cloud. Threads first: the first run on a machine also pays the
# GPU's one-off warm-up, which the steady-state figures leave out.
set -u
BUDGET=${BUDGET:-570}
LOG_HIDE='^\{'  # the local cloud's CloudWatch metric lines
source "$(dirname "$0")/device-prelude.sh" loop-encode
COMMON="--model sd15 --batch 16 --width 512 --height 512 --steps 30 --out $OUT --compile"
LEVERS="--worker-env SDQ_BATCH_BUCKETS=16 --worker-env SDQ_COMPILE_CACHE_DIR=/tmp/sdq-inductor-cache"
for encode in 0 2; do
  echo "== levers, SDQ_ENCODE_PROCESSES=$encode, 160 jobs at ${SECONDS}s" | log
  timeout $(left) python3 -m cli.main bench loop $COMMON $LEVERS --jobs 160 --timeout 280 \
    --worker-env SDQ_ENCODE_PROCESSES=$encode 2>&1 | log
done
echo "== done at ${SECONDS}s" | log
keep_worker_logs
