#!/usr/bin/env bash
# Issue 24, the night of 2026-12-06: the quality-trading target (>= 13 img/s at >= 40 dB, batch 16) at CFG
# truncation shares above 0.5 with feature reuse every 3rd and 4th step, beside the exact levers, plain diffusers
# and stock torch.compile, all in this one call; and the warm start's import profile in the worker's environment.
# SD 1.5 architecture, random weights, 512x512, 30 steps, euler, CFG 7.5, fp16 (scripts/cfgtrunc_probe.py).
#  0. `python -X importtime` of the worker's entry points with peft hidden (a worker serving no LoRA), after a
#     warm-up, kept as importtime-gate.txt with its top modules printed;
#  1. cold compiles in parallel: exact, reuse 3, reuse 4, stock;
#  2. timed, one fresh process after another: exact (shares 0, 0.5) with plain diffusers; reuse 3 (0.5, 0.6,
#     0.7); reuse 4 (0.5, 0.6); stock.
set -u
BUDGET=${BUDGET:-585}
source "$(dirname "$0")/device-prelude.sh" quality
byte_compile_repo
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-3}
gpu_clocks
GATE="import sys; sys.modules.update(dict.fromkeys(['peft', 'sklearn', 'torchvision', 'pandas']))"
W="import handlers.worker, workflows.generation.pipeline"
echo "== 0. imports at ${SECONDS}s" | log
python3 -c "$GATE; $W" >/dev/null 2>&1
python3 -X importtime -c "$GATE; $W" 2>"$OUT/importtime-gate.txt" >/dev/null
python3 - "$OUT/importtime-gate.txt" <<'PY' | log
import re, sys
rows = [m.groups() for m in (re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", l) for l in open(sys.argv[1])) if m]
rows = [(int(s), int(c), len(d), n) for s, c, d, n in rows]
print(f"total {sum(r[0] for r in rows) / 1e6:.2f} s self over {len(rows)} modules")
for s, c, d, n in sorted((r for r in rows if r[2] <= 9), key=lambda r: -r[1])[:30]:
    print(f"cum {c / 1e6:6.2f} s  self {s / 1e6:5.2f} s  {'.' * ((d - 1) // 2)}{n}")
PY
echo "== 1. cold compiles in parallel at ${SECONDS}s" | log
P=benchmarks/scripts/cfgtrunc_probe.py
bg e python3 $P --warm-only --shares 0,0.5 --out "$OUT" --cache-dir /tmp/cq-e
bg r3 python3 $P --warm-only --shares 0.5,0.6,0.7 --out "$OUT" --cache-dir /tmp/cq-r3 --feature-reuse 3
bg r4 python3 $P --warm-only --shares 0.5,0.6 --out "$OUT" --cache-dir /tmp/cq-r4 --feature-reuse 4
TORCHINDUCTOR_CACHE_DIR=/tmp/cq-s bg s python3 $P --warm-only --stock --out "$OUT" --cache-dir /tmp/cq-s
wait_warm ${WARM_S:-200}
echo "== 2a. exact levers, plain diffusers at ${SECONDS}s" | log
timeout $(( $(left) - 200 )) python3 $P --shares 0,0.5 --out "$OUT" --cache-dir /tmp/cq-e --plain 2>&1 | log
echo "== 2b. feature reuse 3 at ${SECONDS}s" | log
timeout $(( $(left) - 130 )) python3 $P --shares 0.5,0.6,0.7 --out "$OUT" --cache-dir /tmp/cq-r3 --feature-reuse 3 2>&1 | log
echo "== 2c. feature reuse 4 at ${SECONDS}s" | log
timeout $(( $(left) - 65 )) python3 $P --shares 0.5,0.6 --out "$OUT" --cache-dir /tmp/cq-r4 --feature-reuse 4 2>&1 | log
echo "== 2d. stock torch.compile at ${SECONDS}s" | log
TORCHINDUCTOR_CACHE_DIR=/tmp/cq-s timeout $(( $(left) - 2 )) python3 $P --stock --out "$OUT" --cache-dir /tmp/cq-s 2>&1 | log
echo "== done at ${SECONDS}s" | log
