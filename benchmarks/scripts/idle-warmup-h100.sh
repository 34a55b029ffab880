#!/usr/bin/env bash
# Issue 24, 2026-12-07 on one H100: the worker warms its smallest bucket before its first job and each other bucket
# on a loop turn that finds it holding no job (a 3-step call), instead of every bucket before its first job. A/B in
# one call, in the worker image's environment (peft, scikit-learn, torchvision and pandas hidden), old = f57fd99
# (copied to .snapold), new = the working tree. SD 1.5 architecture, random weights, 512x512, 30 steps, euler,
# CFG 7.5, fp16, buckets 1 and 16, from precompiled forwards.
#  1. cold builds of the precompiled forwards (buckets 1 and 16) in parallel, by the new code;
#  2. warm starts, one fresh process each, old and new in turn, twice each. The old bench counts bucket 16 ready at
#     the end of its first full call; the new one at the end of the idle warm-up, then times that full call;
#  3. the new code once more with --warmup: the worker's own order (bucket 1 warmed at load, then the first image).
set -u
BUDGET=${BUDGET:-540}
source "$(dirname "$0")/device-prelude.sh" idle-warmup
byte_compile_repo
byte_compile_snapold
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-4}
gpu_clocks
build_precompiled "${WARM_S:-200}"
S=$PRECOMPILED_STARTUP
start() {  # start SIDE DIR OUTNAME [extra flags]
  local side=$1 dir=$2 name=$3; shift 3
  echo "== warm start, precompiled, $side at ${SECONDS}s" | log
  (cd "$dir" && PYTHONPATH=/tmp/site:$PWD timeout $(( $(left) - 5 )) "${HIDDEN[@]}" benchmarks.worker_bench startup $S \
    "$@" --out "$OUT/$name" 2>&1) | log
  sleep 1  # the reports' names carry the second they started
}
# SIDES: which code to start, in turn (default both); WARMUP_RUN=0 leaves out step 3.
for run in 1 2; do
  for side in ${SIDES:-old new}; do
    [ "$(left)" -gt 45 ] || break 2
    if [ "$side" = old ]; then start "old ($run)" .snapold old; else start "new ($run)" . new; fi
  done
done
[ "${WARMUP_RUN:-1}" = 1 ] && [ "$(left)" -gt 45 ] && start "new, --warmup" . new-warmup --warmup
echo "== done at ${SECONDS}s" | log
