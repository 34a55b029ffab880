#!/usr/bin/env bash
# Issue 24, device call 1 of the evening of 2026-12-06 on one H100: the warm start now that peft is in the worker
# image (requirements/worker.txt, for per-job LoRAs; diffusers and transformers import it at their own import
# whenever it is installed), against the same start with peft kept off the path (what a worker serving no LoRA
# does since this change: workflows/generation/acceleration/startup.py); and whether starting CUDA on a thread
# overlaps the imports. SD 1.5 architecture, random weights, 512x512, 30 steps, euler, CFG 7.5, fp16, buckets 1, 16.
# IMG: the worker image's packages (scikit-learn, torchvision, pandas hidden; peft present). GATE: peft hidden too.
#  0. import floors, each a fresh interpreter after one warm-up, IMG and GATE alternating; -X importtime of IMG;
#  1. the overlap probe (scripts/overlap_probe.py): CUDA's first work after the imports, or on a thread during them;
#  2. precompiled artefacts built in parallel, one set per environment (an artefact refers to the packages present);
#  3. precompiled warm starts, one fresh process each, IMG and GATE alternating, twice.
set -u
BUDGET=${BUDGET:-560}
source "$(dirname "$0")/device-prelude.sh" warmstart3
byte_compile_repo
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-4}
gpu_clocks
IMG="import sys, runpy; sys.modules.update(dict.fromkeys(['sklearn', 'torchvision', 'pandas']))"
GATE="import sys, runpy; sys.modules.update(dict.fromkeys(['peft', 'sklearn', 'torchvision', 'pandas']))"
# "${MOD_IMG[@]}" MODULE ARGS...: python -m MODULE in that environment (an array, so that timeout runs it).
MOD_IMG=(python3 -c "$IMG; sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__')")
MOD_GATE=(python3 -c "$GATE; sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__')")
run_script() { local env=$1; shift; python3 -c "$env; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')" "$@"; }
floor() { local t0=$EPOCHREALTIME; python3 -c "$2; $3" 2>/dev/null; echo "$1 $3: $(python3 -c "print(f'{$EPOCHREALTIME - $t0:.2f}')") s"; }
W="import handlers.worker, workflows.generation.pipeline"
echo "== 0. import floors at ${SECONDS}s" | log
python3 -c "$IMG; $W" >/dev/null 2>&1
floor IMG "$IMG" "import torch" | log
floor IMG "$IMG" "import torch, torch._dynamo" | log
for r in 1 2; do
  floor IMG "$IMG" "$W" | log
  floor GATE "$GATE" "$W" | log
done
python3 -X importtime -c "$IMG; $W" 2>"$OUT/importtime-img.txt" >/dev/null
echo "== 1. overlap probe at ${SECONDS}s" | log
for r in 1 2; do
  for m in serial thread; do run_script "$IMG" benchmarks/scripts/overlap_probe.py $m 2>/dev/null | log; done
done
echo "== 2. precompiled artefacts, built in parallel at ${SECONDS}s" | log
pids=()
warm() { local name=$1 env=$2; shift 2; run_script "$env" benchmarks/scripts/warm_compile.py "$@" >"/tmp/warm-$name.log" 2>&1 & pids+=($!); }
warm i1 "$IMG" --size 1 --cache-dir /tmp/cc-i --precompile-dir /tmp/pc-i
warm i16 "$IMG" --size 16 --no-compile-vae --cache-dir /tmp/cc-i --precompile-dir /tmp/pc-i
warm g1 "$GATE" --size 1 --cache-dir /tmp/cc-g --precompile-dir /tmp/pc-g
warm g16 "$GATE" --size 16 --no-compile-vae --cache-dir /tmp/cc-g --precompile-dir /tmp/pc-g
( sleep ${WARM_S:-200}; kill "${pids[@]}" 2>/dev/null ) & killer=$!
wait "${pids[@]}" 2>/dev/null
kill $killer 2>/dev/null
for f in /tmp/warm-*.log; do echo "$(basename "$f"): $(grep -E '^warm|Error|failed|could not' "$f" | tail -3 | cut -c1-300)"; done | log
for f in /tmp/warm-*.log; do echo "=== $f"; cat "$f"; done >"$OUT/aux-logs.txt"
S="--arch sd15 --steps 30 --width 512 --height 512 --out $OUT --compile --buckets 1,16 --then-batch-sizes 16"
for r in 1 2; do
  echo "== 3. warm start, precompiled, IMG (peft imported) ($r) at ${SECONDS}s" | log
  timeout $(( $(left) - 10 )) "${MOD_IMG[@]}" benchmarks.worker_bench startup $S --compile-cache-dir /tmp/cc-i \
    --precompile-dir /tmp/pc-i 2>&1 | log
  sleep 1
  echo "== 3. warm start, precompiled, GATE (peft kept off) ($r) at ${SECONDS}s" | log
  timeout $(( $(left) - 5 )) "${MOD_GATE[@]}" benchmarks.worker_bench startup $S --compile-cache-dir /tmp/cc-g \
    --precompile-dir /tmp/pc-g 2>&1 | log
  sleep 1
done
echo "== done at ${SECONDS}s" | log
