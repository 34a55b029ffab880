#!/usr/bin/env bash
# Issue 8, next device call: PNG encoding in the worker's threads against 2 helper processes (the GPU default
# since 2026-11-29), on one machine: the worker loop with feature reuse 5, bucket 16, 160 jobs, once each,
# sharing one inductor cache folder (the first run compiles, the second reads the cache). The earlier
# comparison (1.532 against 1.495 s per batch) was across two machines. Needs the service's runtime wheels
# carried (benchmarks/scripts/device-wheels.txt).
set -u
source "$(dirname "$0")/device-prelude.sh" encode-ab
CACHE=/tmp/sdq-inductor-cache
for processes in 0 2; do
  echo "== worker loop, reuse 5, bucket 16, SDQ_ENCODE_PROCESSES=$processes at ${SECONDS}s" | log
  timeout $(( $(left) - 10 )) python3 -m cli.main bench loop --model sd15 --batch 16 --width 512 --height 512 \
    --steps 30 --out $OUT --jobs 160 --compile --timeout $(( $(left) - 20 )) --worker-env SDQ_BATCH_BUCKETS=16 \
    --worker-env SDQ_FEATURE_REUSE=5 --worker-env SDQ_ENCODE_PROCESSES=$processes \
    --worker-env SDQ_COMPILE_CACHE_DIR=$CACHE 2>&1 | log
done
keep_worker_logs
echo "== done at ${SECONDS}s" | log
