#!/usr/bin/env bash
# Issue 24, device call 2 of the evening of 2026-12-06 on one H100: CFG truncation (the last share of the steps
# without the unconditional pass) as a quality-trading lever, alone and with feature reuse (every 5th step full),
# at batch 16, beside the exact path, plain diffusers and stock torch.compile, all in this call
# (scripts/cfgtrunc_probe.py). SD 1.5 architecture, random weights, 512x512, 30 steps, euler, CFG 7.5, fp16.
#  1. cold compiles in parallel, one process per variant (exact levers, levers + feature reuse, stock recipe);
#  2. each variant timed in a fresh process from its cache folder, one after another: every share of the exact
#     and the reuse variant with its PSNR against the eager exact images; plain diffusers; stock compile.
set -u
BUDGET=${BUDGET:-560}
source "$(dirname "$0")/device-prelude.sh" cfgtrunc
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-4}
gpu_clocks
P=benchmarks/scripts/cfgtrunc_probe.py
echo "== 1. cold compiles in parallel at ${SECONDS}s" | log
pids=()
python3 $P --warm-only --out "$OUT" --cache-dir /tmp/cq-e >/tmp/warm-e.log 2>&1 & pids+=($!)
python3 $P --warm-only --out "$OUT" --cache-dir /tmp/cq-r --feature-reuse 5 >/tmp/warm-r.log 2>&1 & pids+=($!)
TORCHINDUCTOR_CACHE_DIR=/tmp/cq-s python3 $P --warm-only --stock --out "$OUT" --cache-dir /tmp/cq-s >/tmp/warm-s.log 2>&1 & pids+=($!)
( sleep ${WARM_S:-230}; kill "${pids[@]}" 2>/dev/null ) & killer=$!
wait "${pids[@]}" 2>/dev/null
kill $killer 2>/dev/null
for f in /tmp/warm-*.log; do echo "$(basename "$f"): $(grep -E '^warm|Error|failed' "$f" | tail -3 | cut -c1-300)"; done | log
for f in /tmp/warm-*.log; do echo "=== $f"; cat "$f"; done >"$OUT/aux-logs.txt"
echo "== 2a. exact levers, every share, plain diffusers at ${SECONDS}s" | log
timeout $(( $(left) - 130 )) python3 $P --out "$OUT" --cache-dir /tmp/cq-e --plain 2>&1 | log
echo "== 2b. levers + feature reuse 5, every share at ${SECONDS}s" | log
timeout $(( $(left) - 45 )) python3 $P --out "$OUT" --cache-dir /tmp/cq-r --feature-reuse 5 2>&1 | log
echo "== 2c. stock torch.compile at ${SECONDS}s" | log
TORCHINDUCTOR_CACHE_DIR=/tmp/cq-s timeout $(( $(left) - 2 )) python3 $P --stock --out "$OUT" --cache-dir /tmp/cq-s 2>&1 | log
echo "== done at ${SECONDS}s" | log
