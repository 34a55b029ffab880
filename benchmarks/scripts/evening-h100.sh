#!/usr/bin/env bash
# Issue 24, the evening of 2026-12-06, everything in one H100 device call (the machines were scarce): the warm
# start with peft in the worker image, the overlap probe, and CFG truncation alone and with feature reuse beside
# the exact path, plain diffusers and stock torch.compile. SD 1.5 architecture, random weights, 512x512, 30 steps,
# euler, CFG 7.5, fp16. A second call ran feature reuse every 3rd step the same way, inline (its results README).
# IMG: the worker image's packages (scikit-learn, torchvision, pandas hidden; peft present). GATE: peft hidden too,
# as a worker serving no LoRA now starts (workflows/generation/acceleration/startup.py).
#  0. import floors on the quiet machine, IMG and GATE alternating; the overlap probe (scripts/overlap_probe.py);
#  1. cold compiles in parallel: precompiled artefacts (GATE), CFG-truncation probes (exact, feature reuse 5), stock;
#  2. precompiled warm starts: GATE, then IMG (the same artefacts);
#  3. CFG truncation: the exact levers at shares 0, 0.3, 0.5 with plain diffusers; the same with feature reuse 5;
#     stock torch.compile. Each in a fresh process, one after another.
set -u
BUDGET=${BUDGET:-585}
source "$(dirname "$0")/device-prelude.sh" evening
byte_compile_repo
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-3}
gpu_clocks
IMG="import sys, runpy; sys.modules.update(dict.fromkeys(['sklearn', 'torchvision', 'pandas']))"
GATE="import sys, runpy; sys.modules.update(dict.fromkeys(['peft', 'sklearn', 'torchvision', 'pandas']))"
MOD_IMG=(python3 -c "$IMG; sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__')")
MOD_GATE=(python3 -c "$GATE; sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__')")
run_script() { local env=$1; shift; python3 -c "$env; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')" "$@"; }
floor() { local t0=$EPOCHREALTIME; python3 -c "$2; $3" 2>/dev/null; echo "$1 $3: $(python3 -c "print(f'{$EPOCHREALTIME - $t0:.2f}')") s"; }
W="import handlers.worker, workflows.generation.pipeline"
echo "== 0. import floors at ${SECONDS}s" | log
python3 -c "$IMG; $W" >/dev/null 2>&1

for r in 1 2; do
  floor IMG "$IMG" "$W" | log
  floor GATE "$GATE" "$W" | log
done
for m in serial thread; do run_script "$GATE" benchmarks/scripts/overlap_probe.py $m 2>/dev/null | log; done
echo "== 1. cold compiles in parallel at ${SECONDS}s" | log
P=benchmarks/scripts/cfgtrunc_probe.py
SH=0,0.3,0.5
pids=()
bg() { local name=$1; shift; "$@" >"/tmp/warm-$name.log" 2>&1 & pids+=($!); }
bg g1 run_script "$GATE" benchmarks/scripts/warm_compile.py --size 1 --cache-dir /tmp/cc-g --precompile-dir /tmp/pc-g
bg g16 run_script "$GATE" benchmarks/scripts/warm_compile.py --size 16 --no-compile-vae --cache-dir /tmp/cc-g \
  --precompile-dir /tmp/pc-g
bg e python3 $P --warm-only --shares $SH --out "$OUT" --cache-dir /tmp/cq-e
bg r python3 $P --warm-only --shares $SH --out "$OUT" --cache-dir /tmp/cq-r --feature-reuse 5
TORCHINDUCTOR_CACHE_DIR=/tmp/cq-s bg s python3 $P --warm-only --stock --out "$OUT" --cache-dir /tmp/cq-s
( sleep ${WARM_S:-190}; kill "${pids[@]}" 2>/dev/null ) & killer=$!
wait "${pids[@]}" 2>/dev/null
kill $killer 2>/dev/null
for f in /tmp/warm-*.log; do echo "$(basename "$f"): $(grep -E '^warm|Error|failed|could not' "$f" | tail -3 | cut -c1-300)"; done | log
for f in /tmp/warm-*.log; do echo "=== $f"; cat "$f"; done >"$OUT/aux-logs.txt"
S="--arch sd15 --steps 30 --width 512 --height 512 --out $OUT --compile --buckets 1,16 --then-batch-sizes 16"
echo "== 2. warm start, precompiled, GATE (peft kept off) at ${SECONDS}s" | log
timeout 60 "${MOD_GATE[@]}" benchmarks.worker_bench startup $S --compile-cache-dir /tmp/cc-g --precompile-dir /tmp/pc-g 2>&1 | log
sleep 1
echo "== 2. warm start, precompiled, IMG (peft imported) at ${SECONDS}s" | log
timeout 60 "${MOD_IMG[@]}" benchmarks.worker_bench startup $S --compile-cache-dir /tmp/cc-g --precompile-dir /tmp/pc-g 2>&1 | log
echo "== 3a. CFG truncation, exact levers, plain diffusers at ${SECONDS}s" | log
timeout $(( $(left) - 95 )) python3 $P --shares $SH --out "$OUT" --cache-dir /tmp/cq-e --plain 2>&1 | log
echo "== 3b. CFG truncation with feature reuse 5 at ${SECONDS}s" | log
timeout $(( $(left) - 35 )) python3 $P --shares $SH --out "$OUT" --cache-dir /tmp/cq-r --feature-reuse 5 2>&1 | log
echo "== 3c. stock torch.compile at ${SECONDS}s" | log
TORCHINDUCTOR_CACHE_DIR=/tmp/cq-s timeout $(( $(left) - 2 )) python3 $P --stock --out "$OUT" --cache-dir /tmp/cq-s 2>&1 | log
echo "== done at ${SECONDS}s" | log
