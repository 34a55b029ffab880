# Sourced by every device script in benchmarks/scripts/ (source "$(dirname "$0")/device-prelude.sh" NAME).
# The scripts run from the repository root on the GPU machine, with the wheels of device-wheels.txt installed
# into /tmp/site (see benchmarks/README.md). This sets:
#   OUT       where the JSON reports and log.txt go: the device's $OUT when set, else out/NAME;
#   BUDGET    seconds the script may take (default 540; a script may set its own before sourcing);
#   LOG_HIDE  an extra grep -E pattern of lines to keep out of the printed log (log.txt keeps everything);
# and the functions log (tee to $OUT/log.txt, warnings filtered), left (seconds of BUDGET left),
# gpu_clocks (the card's name, clocks and power), byte_compile_repo and keep_worker_logs; and HIDE, HIDDEN and
# HIDDEN_SCRIPT, the worker image's environment (the packages it does not ship hidden from Python).
OUT=${OUT:-out/$1}
mkdir -p "$OUT"
# PYTHONPATH: the probe scripts run as files, not modules, and import the service packages.
export PYTHONUNBUFFERED=1 SDQ_MODEL_CACHE=/tmp/sdq-models PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
# The wheels were installed with --no-compile: byte-compile them once, as a worker image ships them.
[ -d /tmp/site ] && python3 -m compileall -q -j 16 /tmp/site >/dev/null 2>&1
log() {
  tee -a "$OUT/log.txt" \
    | grep -v -E "^\s*$|UserWarning|warnings.warn|_warn_once|torchvision|flush_metrics${LOG_HIDE:+|$LOG_HIDE}"
}
left() { echo $(( ${BUDGET:-540} - SECONDS )); }
gpu_clocks() { nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw --format=csv 2>&1 | log; }
# A start measured as a worker image starts: the service's own packages byte-compiled too.
byte_compile_repo() { python3 -m compileall -q -j 16 workflows shared >/dev/null 2>&1; }
# sdq bench loop leaves each worker's log in /tmp/sdq-loopbench-*: keep them beside the report.
keep_worker_logs() {
  for d in /tmp/sdq-loopbench-*; do cp "$d/worker.log" "$OUT/worker-$(basename "$d").log" 2>/dev/null; done
}
# Cold compiles in parallel: `bg NAME CMD...` starts one with its output in /tmp/warm-NAME.log; `wait_warm SECONDS`
# waits for them, kills what is still running after SECONDS, logs each one's last lines and keeps the whole logs
# in $OUT/aux-logs.txt. Logs of an earlier script on the same machine are removed first.
rm -f /tmp/warm-*.log
WARM_PIDS=()
bg() { local name=$1; shift; "$@" >"/tmp/warm-$name.log" 2>&1 & WARM_PIDS+=($!); }
wait_warm() {
  ( sleep "$1"; kill "${WARM_PIDS[@]}" 2>/dev/null ) & local killer=$!
  wait "${WARM_PIDS[@]}" 2>/dev/null
  kill $killer 2>/dev/null
  WARM_PIDS=()
  for f in /tmp/warm-*.log; do
    echo "$(basename "$f"): $(grep -E '^warm|Error|failed|could not' "$f" | tail -3 | cut -c1-300)"
  done | log
  for f in /tmp/warm-*.log; do echo "=== $f"; cat "$f"; done >>"$OUT/aux-logs.txt"
}
# The worker image's environment: peft, scikit-learn, torchvision and pandas hidden (the image lacks them).
# python3 -c "$HIDE; CODE" runs CODE there; "${HIDDEN[@]}" MODULE ARGS... is python -m MODULE (an array, so that
# timeout runs it); "${HIDDEN_SCRIPT[@]}" PATH ARGS... a script.
HIDE="import sys, runpy; sys.modules.update(dict.fromkeys(['peft', 'sklearn', 'torchvision', 'pandas']))"
HIDDEN=(python3 -c "$HIDE; sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__')")
HIDDEN_SCRIPT=(python3 -c "$HIDE; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
# An A/B of old and new code: the old is a copy of a commit in .snapold, byte-compiled as an image ships it.
byte_compile_snapold() { (cd .snapold && python3 -m compileall -q -j 16 workflows shared handlers >/dev/null 2>&1); }
# `build_precompiled SECONDS`: SD 1.5's precompiled forwards for buckets 1 and 16 (cache folder /tmp/cc-p,
# artefacts /tmp/pc), cold builds in parallel by the working tree's code; PRECOMPILED_STARTUP: the startup bench's
# flags that start from them (512x512, 30 steps, bucket 16 timed after the first images).
build_precompiled() {
  echo "== cold builds of the precompiled forwards in parallel at ${SECONDS}s" | log
  bg p1 "${HIDDEN_SCRIPT[@]}" benchmarks/scripts/warm_compile.py --size 1 --cache-dir /tmp/cc-p --precompile-dir /tmp/pc
  bg p16 "${HIDDEN_SCRIPT[@]}" benchmarks/scripts/warm_compile.py --size 16 --no-compile-vae --cache-dir /tmp/cc-p \
    --precompile-dir /tmp/pc
  wait_warm "$1"
}
PRECOMPILED_STARTUP="--arch sd15 --steps 30 --width 512 --height 512 --compile --buckets 1,16 --then-batch-sizes 16"
PRECOMPILED_STARTUP="$PRECOMPILED_STARTUP --compile-cache-dir /tmp/cc-p --precompile-dir /tmp/pc"
