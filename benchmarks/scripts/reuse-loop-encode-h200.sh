#!/usr/bin/env bash
# Issue 8, next device call: why a feature-reuse batch takes 1.53 s in the worker loop against 1.37 s in the bare
# bench (benchmarks/results/2026-11-29-h200/README.md). Two candidates, one run each, sharing one inductor cache folder:
#  1. the loop as before but PNG encoding in 2 helper processes (SDQ_ENCODE_PROCESSES=2): Pillow holds the GIL
#     about 34 ms per image, which the GPU thread needs between its launches;
#  2. the bare bench with the loop's scheduler (euler_a: one noise draw per image per step) instead of euler.
#  3. with what is left: which layer of the AOTInductor package load crashes on this torch (aot_minimal.py:
#     dlopen of the package's library alone, the CUDA container runner without the package loader, the older
#     .so route).
# Needs the service's runtime wheels carried (benchmarks/scripts/device-wheels.txt).
set -u
source "$(dirname "$0")/device-prelude.sh" reuse-loop-encode
CACHE=/tmp/sdq-inductor-cache
echo "== 1. worker loop, reuse 5, bucket 16, encode in 2 processes, 160 jobs at ${SECONDS}s" | log
timeout $(left) python3 -m cli.main bench loop --model sd15 --batch 16 --width 512 --height 512 --steps 30 \
  --out $OUT --jobs 160 --compile --timeout $(( $(left) - 20 )) --worker-env SDQ_BATCH_BUCKETS=16 \
  --worker-env SDQ_FEATURE_REUSE=5 --worker-env SDQ_ENCODE_PROCESSES=2 \
  --worker-env SDQ_COMPILE_CACHE_DIR=$CACHE 2>&1 | log
keep_worker_logs
echo "== 2. bare bench, reuse 5, bucket 16, euler_a at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker --arch sd15 --steps 30 --width 512 --height 512 --out $OUT \
  --scheduler euler_a --compile --buckets 16 --feature-reuse 5 --batch-sizes 16 --repeats 3 --no-eager-rows \
  --compile-cache-dir $CACHE 2>&1 | log
for step in build dlopen runner legacy-build legacy-load; do
  [ "$(left)" -lt 20 ] && break
  echo "== 3. minimal AOTI package: $step at ${SECONDS}s" | log
  timeout $(( $(left) < 100 ? $(left) : 100 )) python3 -X faulthandler benchmarks/scripts/aot_minimal.py $step 2>&1 \
    | grep -v "^Extension modules" | log
  echo "== $step exit status ${PIPESTATUS[0]}" | log
done
echo "== done at ${SECONDS}s" | log
