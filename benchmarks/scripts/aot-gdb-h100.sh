#!/usr/bin/env bash
# Issue 24: why AOTInductor packages segfault at load on the lent machines' torch 2.11.0+cu130
# (benchmarks/results/2026-11-29-h200/README.md): the two-layer package of aot_minimal.py built and loaded once,
# then, if the load crashes, the CUDA libraries the package's library links against beside torch's own, and the
# load's native backtrace under cuda-gdb (the device image has no gdb).
set -u
source "$(dirname "$0")/device-prelude.sh" aot-gdb
probe=benchmarks/scripts/aot_minimal.py
{ nvcc --version | tail -2; gcc --version | head -1; echo "CUDA_HOME=${CUDA_HOME:-unset}"; } 2>&1 | log
python3 -c "import torch, os; print(torch.__version__, torch.version.cuda, os.path.dirname(torch.__file__))" 2>&1 | log
for step in build load; do
  echo "== $step at ${SECONDS}s" | log
  timeout 150 python3 -X faulthandler $probe $step 2>&1 | grep -v "^Extension modules" | tail -25 | log
  echo "== $step exit status ${PIPESTATUS[0]}" | log
done
# Which libcudart/libcuda the package's wrapper needs and which ones resolve, against the ones torch loads.
mkdir -p /tmp/aot-x && (cd /tmp/aot-x && python3 -m zipfile -e /tmp/aot-minimal.pt2 .)
for lib in $(find /tmp/aot-x -name "*.so"); do
  echo "== ldd $lib" | log; ldd "$lib" 2>&1 | grep -E "cuda|torch|c10|stdc|not found" | log
done
python3 - <<'PY' 2>&1 | log
import torch
torch.zeros(1, device="cuda")
maps = {line.split()[-1] for line in open("/proc/self/maps") if ".so" in line}
print("torch process maps:", sorted(m for m in maps if "cud" in m or "nvrtc" in m))
PY
echo "== cuda-gdb backtrace of the load at ${SECONDS}s" | log
timeout 200 cuda-gdb -q -batch -ex "set pagination off" -ex "set print thread-events off" -ex run \
  -ex "bt 30" -ex "info sharedlibrary" --args python3 $probe load 2>&1 \
  | grep -v -E "^\[New Thread|^\[Thread .* exited|Extension modules" | tail -150 | log
echo "== done at ${SECONDS}s" | log
