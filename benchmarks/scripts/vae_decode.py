"""Issue 8 device probe: is one batched VAE decode faster than the sliced decode the runner does (one image at a
time, ``enable_slicing``)? SD 1.5's VAE with random weights, fp16, channels_last, eager and compiled through the
runner's own hook (``reduce-overhead``: CUDA graphs, outputs cloned out of the pool), one process.

``python benchmarks/vae_decode.py [--size 512] [--batch 16] [--no-compile]``; prints one JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch
from diffusers import AutoencoderKL

from workflows.generation.acceleration.torchcompile import compile_forward, configure_inductor
from workflows.generation.models import _SD_VAE


def _timed(decode: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> dict[str, Any]:
    first = []
    for _ in range(2):  # compile / graph recording, then the first replay
        start = time.perf_counter()
        decode()
        _sync(device)
        first.append(round(time.perf_counter() - start, 3))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        decode()
        _sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"s": round(min(times), 4), "all_s": [round(t, 4) for t in times], "first_s": first, "peak_bytes": peak}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with device:
        vae = AutoencoderKL(**_SD_VAE).to(dtype=dtype, memory_format=torch.channels_last).eval()
    side = args.size // 8
    latents = torch.randn(args.batch, 4, side, side, device=device, dtype=dtype)

    def sliced() -> torch.Tensor:
        return torch.cat([vae.decode(latents[i : i + 1]).sample for i in range(args.batch)])

    def batched() -> torch.Tensor:
        return vae.decode(latents).sample

    modes = ["eager"] if args.no_compile or device.type != "cuda" else ["eager", "compiled"]
    reference: torch.Tensor | None = None
    with torch.no_grad():  # as the pipeline call
        for mode in modes:
            if mode == "compiled":
                configure_inductor(False, shapes=2)
                kwargs = {"mode": "reduce-overhead", "dynamic": False}
                compile_forward(vae.decoder, kwargs, cuda_graphs=True, timestep_arg=False)
            for name, decode in (("sliced", sliced), ("batched", batched)):
                row = _timed(decode, device, args.repeats)
                image = decode().float()
                if reference is None:
                    reference = image
                row["max_abs_vs_eager_sliced"] = round((image - reference).abs().max().item(), 5)
                print(json.dumps({"mode": mode, "decode": name, "batch": args.batch, "size": args.size, **row}))


if __name__ == "__main__":
    main()
