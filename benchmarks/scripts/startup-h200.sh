#!/usr/bin/env bash
# Issue 8, a worker's start on one H200, run from the repo root with the wheels installed (byte-compiled first, as
# the worker image ships them): process start to first image at bucket 1 with every lever, once with an empty
# compile cache (cold), then twice from the cache and mega-cache file that run left (warm).
set -u
source "$(dirname "$0")/device-prelude.sh" startup
byte_compile_repo
rm -rf /tmp/cc-startup /tmp/sdq-mega-startup.bin
START="--arch sd15 --steps 30 --width 512 --height 512 --out $OUT --compile --buckets 1 \
  --compile-cache-dir /tmp/cc-startup --mega-cache /tmp/sdq-mega-startup.bin"
for run in cold warm warm; do
  echo "== startup ($run) at ${SECONDS}s" | log
  timeout $(left) python3 -m benchmarks.worker_bench startup $START 2>&1 | log
done
echo "== done at ${SECONDS}s" | log
