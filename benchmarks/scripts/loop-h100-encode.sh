#!/usr/bin/env bash
# Issue 8: PNG encoding in the worker's threads vs in 2 helper processes, with the levers (compiled, bucket 16),
# on the real worker loop against the local cloud. Threads first: the first run on a machine also pays the
# GPU's one-off warm-up, which the steady-state figures leave out.
set -u
OUT=${OUT:-out/loop}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SDQ_MODEL_CACHE=/tmp/sdq-models PYTHONPATH=${PYTHONPATH:-}:$PWD
[ -d /tmp/site ] && python3 -m compileall -q -j 16 /tmp/site >/dev/null 2>&1
left() { echo $(( ${BUDGET:-570} - SECONDS )); }
log() { tee -a "$OUT/log.txt" | grep -v -E '^\s*$|^\{|UserWarning|warnings.warn|_warn_once|torchvision|flush_metrics'; }
COMMON="--model sd15 --batch 16 --width 512 --height 512 --steps 30 --out $OUT --compile"
LEVERS="--worker-env SDQ_BATCH_BUCKETS=16 --worker-env SDQ_COMPILE_CACHE_DIR=/tmp/sdq-inductor-cache"
for encode in 0 2; do
  echo "== levers, SDQ_ENCODE_PROCESSES=$encode, 160 jobs at ${SECONDS}s" | log
  timeout $(left) python3 -m cli.main bench loop $COMMON $LEVERS --jobs 160 --timeout 280 \
    --worker-env SDQ_ENCODE_PROCESSES=$encode 2>&1 | log
done
echo "== done at ${SECONDS}s" | log
for d in /tmp/sdq-loopbench-*; do cp "$d/worker.log" "$OUT/worker-$(basename "$d").log" 2>/dev/null; done
