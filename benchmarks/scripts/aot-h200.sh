#!/usr/bin/env bash
# Issue 8, AOTInductor packages (--aot-dir) on one H200 (or H100), run from the repo root with the wheels installed
# (byte-compiled first, as a worker image ships them): a worker's start at bucket 1 with an empty package folder
# (cold: export + AOTInductor build), then twice from the packages that run left (warm: no Dynamo trace); then the
# throughput at bucket 16 from packages, beside the same machine's plain diffusers.
set -u
source "$(dirname "$0")/device-prelude.sh" aot
byte_compile_repo
rm -rf /tmp/sdq-aot
COMMON="--arch sd15 --steps 30 --width 512 --height 512 --out $OUT --compile --aot-dir /tmp/sdq-aot"
gpu_clocks
for run in cold warm warm; do
  echo "== startup from AOT packages ($run) at ${SECONDS}s" | log
  timeout $(left) python3 -m benchmarks.worker_bench startup $COMMON --buckets 1 2>&1 | log
done
echo "== worker bench from AOT packages, bucket 1 and 16 at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker $COMMON --buckets 1,16 --batch-sizes 1,16 --repeats 5 \
  --no-eager-rows 2>&1 | log
echo "== done at ${SECONDS}s" | log
