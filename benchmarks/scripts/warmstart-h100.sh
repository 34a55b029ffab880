#!/usr/bin/env bash
# Issue 24, device call 3 on one H100: the warm start with precompiled forwards (SDQ_PRECOMPILE_DIR) against
# today's warm start (compile cache folder, Dynamo re-trace), both on this machine, and the whole-loop CUDA graph
# probe beside the exact path (SD 1.5 architecture, random weights, 512x512, 30 steps, euler, CFG 7.5, fp16).
#  1. cold builds in parallel, one process per variant and size (CPU-bound): the exact path's cache folder, the
#     precompiled artefacts (and their cache folder), the compile without CUDA graphs for the loop-graph probe;
#  2. warm starts, one fresh process each, buckets 1 and 16: today's path, precompiled; process start to the first
#     image and to bucket 16's first call (every bucket ready);
#  3. the exact path timed (bench, batch 1 and 16, plain diffusers beside it): the same-machine baseline;
#  4. the precompiled path timed the same way (throughput and seed equivalence);
#  5. the whole-loop CUDA graph probe (benchmarks/scripts/loopgraph_probe.py);
#  6. the precompiled warm start again with the packages the worker image lacks hidden (peft, scikit-learn,
#     torchvision, pandas: diffusers and transformers import them when present).
# Before stage 1, on the idle machine: `python -X importtime` of the worker's entry point (handlers.worker) with
# those packages hidden, its 25 slowest imports (cumulative) printed; the raw output goes to aux-logs.txt.
# Ran on 2026-12-06 (results/2026-12-06-h100/README.md, call A). Stage 6 cannot work as written: the artefacts of
# stage 1 were built with those packages present and refer to them. warmstart2-h100.sh builds and starts everything
# in the worker image's environment.
# QUICK=1 (a short call): only the warm starts (stages 1 without the probe's builds, 2 and 6), builds cut at
# WARM_S seconds (default 200).
set -u
BUDGET=${BUDGET:-500}
QUICK=${QUICK:-0}
# Seconds kept back after stages 2a and 2b for what follows them.
if [ "$QUICK" = 0 ]; then KEEP_A=60; KEEP_B=60; else KEEP_A=35; KEEP_B=3; fi
source "$(dirname "$0")/device-prelude.sh" warmstart
byte_compile_repo
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-4}
gpu_clocks
echo "== 0. imports of the worker's entry point at ${SECONDS}s" | log
python3 -X importtime -c "$HIDE; import handlers.worker" 2>/tmp/importtime.txt
sort -t'|' -k2 -n -r /tmp/importtime.txt | head -25 | log
W="python3 benchmarks/scripts/warm_compile.py"
echo "== 1. cold builds in parallel at ${SECONDS}s" | log
pids=()
warm() { local name=$1; shift; $W "$@" >"/tmp/warm-$name.log" 2>&1 & pids+=($!); }
warm a1 --size 1 --cache-dir /tmp/cc-a
warm a16 --size 16 --no-compile-vae --cache-dir /tmp/cc-a
warm p1 --size 1 --cache-dir /tmp/cc-p --precompile-dir /tmp/pc
warm p16 --size 16 --no-compile-vae --cache-dir /tmp/cc-p --precompile-dir /tmp/pc
if [ "$QUICK" = 0 ]; then
  warm g1 --size 1 --no-cuda-graphs --cache-dir /tmp/cc-lg
  warm g16 --size 16 --no-compile-vae --no-cuda-graphs --cache-dir /tmp/cc-lg
fi
( sleep ${WARM_S:-200}; kill "${pids[@]}" 2>/dev/null ) & killer=$!
wait "${pids[@]}" 2>/dev/null
kill $killer 2>/dev/null
for f in /tmp/warm-*.log; do echo "$(basename "$f"): $(grep -E '^warm|Error|failed' "$f" | tail -3 | cut -c1-400)"; done | log
for f in /tmp/warm-*.log /tmp/importtime.txt; do echo "=== $f"; cat "$f"; done >"$OUT/aux-logs.txt"
ls -la /tmp/pc 2>&1 | log
S="--arch sd15 --steps 30 --width 512 --height 512 --out $OUT --compile --buckets 1,16 --then-batch-sizes 16"
B="--arch sd15 --steps 30 --width 512 --height 512 --out $OUT --compile --buckets 1,16 --batch-sizes 1,16 --repeats 3"
echo "== 2a. warm start, today's path at ${SECONDS}s" | log
timeout $(( $(left) - KEEP_A )) python3 -m benchmarks.worker_bench startup $S --compile-cache-dir /tmp/cc-a 2>&1 | log
echo "== 2b. warm start, precompiled at ${SECONDS}s" | log
timeout $(( $(left) - KEEP_B )) python3 -m benchmarks.worker_bench startup $S --compile-cache-dir /tmp/cc-p \
  --precompile-dir /tmp/pc 2>&1 | log
if [ "$QUICK" = 0 ]; then
echo "== 3. exact path, bench at ${SECONDS}s" | log
timeout $(( $(left) - 50 )) python3 -m benchmarks.worker_bench worker $B --no-eager-rows --compile-cache-dir /tmp/cc-a \
  2>&1 | log
echo "== 4. precompiled path, bench at ${SECONDS}s" | log
timeout $(( $(left) - 40 )) python3 -m benchmarks.worker_bench worker $B --no-eager-rows --compile-cache-dir /tmp/cc-p \
  --precompile-dir /tmp/pc 2>&1 | log
echo "== 5. whole-loop CUDA graph probe at ${SECONDS}s" | log
timeout $(( $(left) - 25 )) python3 benchmarks/scripts/loopgraph_probe.py --sizes 1,16 --cache-dir /tmp/cc-lg --out $OUT \
  2>&1 | log
fi
echo "== 6. precompiled warm start, worker-image packages only at ${SECONDS}s" | log
timeout $(( $(left) - 2 )) python3 -c "$HIDE; import runpy
sys.argv = ['worker_bench', *sys.argv[1:]]
runpy.run_module('benchmarks.worker_bench', run_name='__main__')" startup $S --compile-cache-dir /tmp/cc-p \
  --precompile-dir /tmp/pc 2>&1 | log
echo "== done at ${SECONDS}s" | log
