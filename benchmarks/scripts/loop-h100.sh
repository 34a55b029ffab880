#!/usr/bin/env bash
# Issue 8, GPU duty cycle of the real worker loop on one H100 (run from the repo root, wheels installed):
# the local cloud and API in one process, a saturated queue, one `sdq worker` process draining it.
#  1. eager fp16, batch limit 16, PNG encoding in 2 helper processes (the GPU default);
#  2. the same with PNG encoding in the worker's own threads (SDQ_ENCODE_PROCESSES=0), the earlier design;
#  3. the levers (SDQ_COMPILE=1, one bucket of 16);
#  4. the pipeline alone with the same levers (sdq bench worker), if time is left.
set -u
BUDGET=${BUDGET:-570}
source "$(dirname "$0")/device-prelude.sh" loop
COMMON="--model sd15 --batch 16 --width 512 --height 512 --steps 30 --out $OUT"

echo "== 1. eager, encode in processes, 96 jobs at ${SECONDS}s" | log
timeout $(left) python3 -m cli.main bench loop $COMMON --jobs 96 --timeout 200 2>&1 | log
echo "== 2. eager, encode in threads, 96 jobs at ${SECONDS}s" | log
timeout $(left) python3 -m cli.main bench loop $COMMON --jobs 96 --timeout 200 \
  --worker-env SDQ_ENCODE_PROCESSES=0 2>&1 | log
echo "== 3. levers (SDQ_COMPILE=1, bucket 16), 160 jobs at ${SECONDS}s" | log
timeout $(left) python3 -m cli.main bench loop $COMMON --jobs 160 --compile --timeout $(( $(left) - 20 )) \
  --worker-env SDQ_BATCH_BUCKETS=16 --worker-env SDQ_COMPILE_CACHE_DIR=/tmp/sdq-inductor-cache 2>&1 | log
echo "== 4. same-run baseline: the pipeline alone, levers, batch 16, same cache folder at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker --arch sd15 --steps 30 --width 512 --height 512 --out $OUT \
  --batch-sizes 16 --repeats 3 --compile --buckets 16 --no-eager-rows \
  --compile-cache-dir /tmp/sdq-inductor-cache 2>&1 | log
echo "== done at ${SECONDS}s" | log
keep_worker_logs
