#!/usr/bin/env bash
# Where a start from AOTInductor packages spends its load: the 39.8 s of "loading the two packages" of the warm
# start of 2026-12-07 (SD 1.5, bucket 1; results/2026-12-07-h100/README.md, calls 6 to 9), broken down in fresh
# processes, and whether a process that imported only torch loads and runs the packages fast
# (benchmarks/scripts/aot_load_probe.py says what each child measures). One call on one H100:
#   BUDGET=540 bash benchmarks/scripts/aot-load-h100.sh   (after installing .whl, as benchmarks/README.md shows)
# The packages are built with Ubuntu's GCC: the image's default CXX links libstdc++ statically, and such a
# package's library crashes at load (issue 24).
set -u
export CXX=/usr/bin/g++ CC=/usr/bin/gcc
BUDGET=${BUDGET:-540}
source "$(dirname "$0")/device-prelude.sh" aot-load
gpu_clocks
echo "== $(date -u +%FT%TZ) $(uname -r), $(nproc) cores, g++ $(/usr/bin/g++ -dumpfullversion), py-spy: $(command -v py-spy || echo none)" | log
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))" 2>&1 | log
set -o pipefail
python3 benchmarks/scripts/aot_load_probe.py all --work /tmp/aot-load --out "$OUT" --budget $(( $(left) - 10 )) 2>&1 | log
echo "== probe exit status $? at ${SECONDS}s; /tmp usage: $(du -sh /tmp 2>/dev/null | cut -f1)" | log
