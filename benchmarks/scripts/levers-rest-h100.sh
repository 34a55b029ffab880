#!/usr/bin/env bash
# Issue 24, device call 2 on the machine of call 1 (levers-h100.sh), right after it, with that call's inductor
# cache folders still in /tmp (the call ran inline; this is its command as a script): the variants call 1's
# budget cut, each timed in its own process at batch 1 and 16 beside plain diffusers (B + cudnn.benchmark,
# D + freezing, C + coordinate_descent_tuning at batch 16 only: its bucket-1 compile had not finished), then
# the imports (python -X importtime) and a warm start with buckets 1 and 16 (compile times per phase in its JSON).
set -u
source "$(dirname "$0")/device-prelude.sh" levers-rest
C="--arch sd15 --steps 30 --width 512 --height 512 --out $OUT --repeats 3 --buckets 1,16 --compile --no-eager-rows"
echo "== B" | log
timeout 100 python3 -m benchmarks.worker_bench worker $C --batch-sizes 1,16 --cudnn-benchmark \
  --compile-cache-dir /tmp/cc-a 2>&1 | log
echo "== D" | log
timeout 110 python3 -m benchmarks.worker_bench worker $C --batch-sizes 1,16 --inductor freezing=True \
  --compile-cache-dir /tmp/cc-frz 2>&1 | log
echo "== C16" | log
timeout 100 python3 -m benchmarks.worker_bench worker $C --batch-sizes 16 --inductor coordinate_descent_tuning=True \
  --compile-cache-dir /tmp/cc-cdt 2>&1 | log
echo "== importtime" | log
python3 -X importtime -c "import benchmarks.worker_bench" 2>"$OUT/importtime.txt"
echo "== startup" | log
timeout 90 python3 -m benchmarks.worker_bench startup --arch sd15 --out $OUT --compile --buckets 1,16 \
  --then-batch-sizes 16 --compile-cache-dir /tmp/cc-a 2>&1 | log
