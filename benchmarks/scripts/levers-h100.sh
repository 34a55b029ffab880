#!/usr/bin/env bash
# Issue 24, device call 1 on one H100: the exact path's untried inductor/cuDNN levers, each A/B against the
# exact levers of today, beside plain diffusers and the stock torch.compile recipe, at batch 16 and batch 1
# (SD 1.5 architecture, random weights, 512x512, 30 steps, euler, CFG 7.5, fp16, buckets 1 and 16).
#  1. warm: every variant's compile, one process per variant and size, in parallel (CPU-bound), each into its
#     own inductor cache folder, so that the timed runs after it only re-trace; the precompile probe's save too;
#  2. timed, one process each, one after another: A exact levers (+ stock torch.compile, + kernel profile),
#     B + cudnn.benchmark, C + coordinate_descent_tuning, D + freezing;
#  3. the precompile probe's load in a fresh process (does torch 2.11 load an AOT-compiled UNet without a trace).
# Epilogue fusion is not a variant: it acts only on Triton template GEMMs, which inductor emits under
# max-autotune alone; the script counts template kernels in A's cache to show there are none.
set -u
BUDGET=${BUDGET:-585}
source "$(dirname "$0")/device-prelude.sh" levers
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-4}
gpu_clocks
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
  'load_compiled_function', hasattr(torch.compiler, 'load_compiled_function'))" 2>&1 | log
W="python3 benchmarks/scripts/warm_compile.py"
echo "== 1. warm compiles in parallel at ${SECONDS}s" | log
pids=()
warm() { local name=$1; shift; $W "$@" >"/tmp/warm-$name.log" 2>&1 & pids+=($!); }
warm a1 --size 1 --cache-dir /tmp/cc-a
warm a16 --size 16 --no-compile-vae --cache-dir /tmp/cc-a
warm s1 --size 1 --stock --cache-dir /tmp/cc-a
warm s16 --size 16 --stock --cache-dir /tmp/cc-a
warm c1 --size 1 --cache-dir /tmp/cc-cdt --inductor coordinate_descent_tuning=True
warm c16 --size 16 --no-compile-vae --cache-dir /tmp/cc-cdt --inductor coordinate_descent_tuning=True
warm d1 --size 1 --cache-dir /tmp/cc-frz --inductor freezing=True
warm d16 --size 16 --no-compile-vae --cache-dir /tmp/cc-frz --inductor freezing=True
TORCHINDUCTOR_CACHE_DIR=/tmp/cc-aot python3 benchmarks/scripts/precompile_probe.py save --sizes 1,16 \
  --file /tmp/unet.aot >/tmp/warm-precompile-save.log 2>&1 &
pids+=($!)
( sleep 230; kill "${pids[@]}" 2>/dev/null ) & killer=$!
wait "${pids[@]}" 2>/dev/null
kill $killer 2>/dev/null
for f in /tmp/warm-*.log; do echo "$(basename "$f"): $(grep -E '^warm|"step"|Error' "$f" | tail -3 | cut -c1-600)"; done | log
for f in /tmp/warm-*.log; do echo "=== $f"; cat "$f"; done >"$OUT/warm-logs.txt"
echo "template GEMM kernels in A's cache: $(grep -rl 'triton_tem' /tmp/cc-a 2>/dev/null | wc -l)" | log
COMMON="--arch sd15 --steps 30 --width 512 --height 512 --out $OUT --batch-sizes 1,16 --repeats 3 --buckets 1,16 --compile"
echo "== 2A. exact levers + stock torch.compile + profile at ${SECONDS}s" | log
timeout $(( $(left) - 150 )) python3 -m benchmarks.worker_bench worker $COMMON --no-eager-rows --stock-compile --profile \
  --compile-cache-dir /tmp/cc-a 2>&1 | log
echo "== 2B. + cudnn.benchmark at ${SECONDS}s" | log
timeout $(( $(left) - 110 )) python3 -m benchmarks.worker_bench worker $COMMON --no-eager-rows --cudnn-benchmark \
  --compile-cache-dir /tmp/cc-a 2>&1 | log
echo "== 2C. + coordinate_descent_tuning at ${SECONDS}s" | log
timeout $(( $(left) - 70 )) python3 -m benchmarks.worker_bench worker $COMMON --no-eager-rows \
  --inductor coordinate_descent_tuning=True --compile-cache-dir /tmp/cc-cdt 2>&1 | log
echo "== 2D. + freezing at ${SECONDS}s" | log
timeout $(( $(left) - 35 )) python3 -m benchmarks.worker_bench worker $COMMON --no-eager-rows \
  --inductor freezing=True --compile-cache-dir /tmp/cc-frz 2>&1 | log
echo "== 3. precompile probe: load in a fresh process at ${SECONDS}s" | log
TORCHINDUCTOR_CACHE_DIR=/tmp/cc-aot timeout $(( $(left) - 3 )) python3 benchmarks/scripts/precompile_probe.py load \
  --sizes 1,16 --file /tmp/unet.aot 2>&1 | grep '"step"' | cut -c1-900 | log
echo "== done at ${SECONDS}s" | log
