#!/usr/bin/env bash
# Issue 24, 2026-12-07 on one H100: the worker no longer imports diffusers' auto pipelines at start (they import
# every pipeline family: ControlNet, Kandinsky, ...); an image job or a hub checkpoint's load imports them when it
# needs them. A/B in one call, in the worker image's environment (peft, scikit-learn, torchvision and pandas
# hidden), old = the commit before (copied to .snapold), new = the working tree. SD 1.5 architecture, random
# weights, 512x512, 30 steps, euler, CFG 7.5, fp16, buckets 1 and 16.
#  0. `import handlers.worker`, fresh interpreters after one warm-up of each, old and new in turn, 4 times each;
#  1. cold builds of the precompiled forwards (buckets 1 and 16) in parallel, by the new code;
#  2. warm starts from them, one fresh process each, old and new in turn, twice each.
set -u
BUDGET=${BUDGET:-540}
source "$(dirname "$0")/device-prelude.sh" lazy-imports
byte_compile_repo
byte_compile_snapold
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-4}
gpu_clocks
# floor DIR: one fresh `import handlers.worker` from DIR's code, timed.
floor() {
  local t0=$EPOCHREALTIME
  (cd "$1" && PYTHONPATH=/tmp/site:$PWD python3 -c "$HIDE; import handlers.worker" >/dev/null 2>&1)
  echo "import handlers.worker ($2): $(python3 -c "print(f'{$EPOCHREALTIME - $t0:.2f}')") s"
}
echo "== 0. import floors at ${SECONDS}s" | log
floor .snapold old >/dev/null; floor . new >/dev/null
for _ in $(seq "${FLOORS:-4}"); do floor .snapold old | log; floor . new | log; done
build_precompiled "${WARM_S:-220}"
S=$PRECOMPILED_STARTUP
for run in 1 2; do
  for side in old new; do
    [ "$(left)" -gt 45 ] || break 2
    echo "== 2. warm start, precompiled, $side ($run) at ${SECONDS}s" | log
    if [ $side = old ]; then dir=.snapold; else dir=.; fi
    (cd $dir && PYTHONPATH=/tmp/site:$PWD timeout $(( $(left) - 5 )) "${HIDDEN[@]}" benchmarks.worker_bench startup $S \
      --out "$OUT/$side" 2>&1) | log
    sleep 1  # the reports' names carry the second they started
  done
done
echo "== done at ${SECONDS}s" | log
