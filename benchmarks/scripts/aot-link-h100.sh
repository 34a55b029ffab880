#!/usr/bin/env bash
# Issue 24: the AOTInductor load's segfault sits in the package library's own std::regex (cuda-gdb, 2026-12-07,
# aot-gdb-h100.sh). How torch 2.11 links that library, what it carries, and whether it loads when built without
# static libstdc++/libgcc (aot_link_probe.py).
set -u
source "$(dirname "$0")/device-prelude.sh" aot-link
torchdir=$(python3 -c "import torch, os; print(os.path.dirname(torch.__file__))")
echo "== static flags in torch's cpp_builder" | log
grep -n -B2 -A2 "static-libstdc\|static-libgcc\|-static\b\|nostdlib" "$torchdir/_inductor/cpp_builder.py" | head -60 | log
for step in build build-dynamic; do
  rm -f /tmp/aot-minimal.pt2; rm -rf /tmp/aot-x; mkdir -p /tmp/aot-x
  echo "== $step at ${SECONDS}s" | log
  timeout 150 python3 benchmarks/scripts/aot_link_probe.py $step 2>&1 | grep -E "^CMD|built|Error|error" | cut -c1-3000 | log
  (cd /tmp/aot-x && python3 -m zipfile -e /tmp/aot-minimal.pt2 .)
  lib=$(find /tmp/aot-x -name "*wrapper.so" | head -1)
  echo "== $step: NEEDED, and libstdc++ code the library defines ($lib)" | log
  readelf -d "$lib" | grep -E "NEEDED|RPATH|RUNPATH" | log
  echo "defined std::locale symbols: $(nm -C --defined-only "$lib" 2>/dev/null | grep -c 'std::locale')" | log
  echo "defined codecvt symbols: $(nm -C --defined-only "$lib" 2>/dev/null | grep -c 'codecvt')" | log
  echo "== $step: load at ${SECONDS}s" | log
  timeout 120 python3 -X faulthandler benchmarks/scripts/aot_minimal.py load 2>&1 | grep -v "^Extension modules" \
    | tail -8 | log
  echo "== $step: load exit status ${PIPESTATUS[0]}" | log
done
echo "== done at ${SECONDS}s" | log
