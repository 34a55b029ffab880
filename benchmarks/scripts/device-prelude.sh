# Sourced by the issue-8 device scripts (benchmarks/*-h200.sh): OUT (default out/$1), the environment, the
# wheels byte-compiled once, log (tee to $OUT/log.txt, warnings filtered) and left (seconds of BUDGET left).
OUT=${OUT:-out/$1}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SDQ_MODEL_CACHE=/tmp/sdq-models
[ -d /tmp/site ] && python3 -m compileall -q -j 16 /tmp/site >/dev/null 2>&1
log() { tee -a "$OUT/log.txt" | grep -v -E '^\s*$|UserWarning|warnings.warn|_warn_once|torchvision'; }
left() { echo $(( ${BUDGET:-540} - SECONDS )); }
