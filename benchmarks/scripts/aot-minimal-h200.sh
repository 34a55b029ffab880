#!/usr/bin/env bash
# Issue 8: whether a minimal AOTInductor package (two linear layers, benchmarks/scripts/aot_minimal.py) loads on this CUDA
# machine at all; every SD 1.5 package load had segfaulted inside torch's loader (benchmarks/results/2026-11-29-h200/README.md).
set -u
source "$(dirname "$0")/device-prelude.sh" aot-minimal
gcc --version | head -1 | log
for step in build load load-single; do
  echo "== minimal AOTI package: $step at ${SECONDS}s" | log
  timeout 120 python3 -X faulthandler benchmarks/scripts/aot_minimal.py $step 2>&1 | grep -v "^Extension modules" | log
  echo "== $step exit status ${PIPESTATUS[0]}" | log
done
