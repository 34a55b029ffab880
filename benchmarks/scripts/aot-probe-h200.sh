#!/usr/bin/env bash
# Issue 8: why a start from AOTInductor packages stopped on the H200 (benchmarks/scripts/aot_probe.py, under faulthandler).
set -u
source "$(dirname "$0")/device-prelude.sh" aot-probe

for mode in decoder decoder-in-so unet; do
  rm -rf /tmp/aot-probe; echo "== $mode at ${SECONDS}s" | log
  timeout $(left) python3 -X faulthandler benchmarks/scripts/aot_probe.py $mode 2>&1 | log
  echo "== $mode exit status ${PIPESTATUS[0]} at ${SECONDS}s" | log
done
