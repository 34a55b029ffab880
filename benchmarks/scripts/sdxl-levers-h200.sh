#!/usr/bin/env bash
# Issue 8: SDXL with the levers (never measured before). SDXL architecture with random weights, 1024x1024,
# 30 steps, fp16: plain diffusers and the eager runner beside compile + CUDA graphs + channels_last + fused QKV
# at buckets 1 and 4 (the fp16 force_upcast VAE decodes in fp32 per call, so its compile is skipped and
# reported), with the batch-vs-alone seed check. Run 1 had --profile as well and ran out of its budget after
# the timed calls, in the seed check or the profile (no JSON; its timings are in benchmarks/results/2026-11-29-h200/README.md).
# Run 2, on the same machine with the cache folder warm, is this script. The profile is sdxl-profile-h200.sh.
set -u
source "$(dirname "$0")/device-prelude.sh" sdxl-levers
python3 -c 'import torch, diffusers; print(torch.__version__, diffusers.__version__, torch.cuda.get_device_name())' 2>&1 | log
echo "== SDXL, eager rows then levers, batch 1 and 4 at ${SECONDS}s" | log
timeout $(left) python3 -m benchmarks.worker_bench worker --arch sdxl --steps 30 --width 1024 --height 1024 --out $OUT \
  --batch-sizes 1,4 --buckets 1,4 --repeats 3 --compile --compile-cache-dir /tmp/cc-sdxl 2>&1 | log
echo "== done at ${SECONDS}s" | log
