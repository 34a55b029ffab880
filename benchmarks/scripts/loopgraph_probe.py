"""Probe (issue 24): one CUDA graph over the whole denoising loop (30 UNet calls, CFG, the Euler step).

    python3 benchmarks/scripts/loopgraph_probe.py --sizes 1,16 --cache-dir /tmp/cc-lg

The UNet and VAE decoder are compiled without CUDA graphs (inductor kernels, ``mode="default"``), then the
loop that diffusers' SD pipeline runs (same operations, same order) is captured once per batch size with
``torch.cuda.graph`` and replayed. Reported per size: the loop alone, replayed, against the same loop launched
from Python; the whole call (loop + one-image-at-a-time decode + PIL conversion) against the runner's call on
the same compiled model; and the graph's latents against the Python loop's (max abs difference), and its
decoded probe image against the runner's (8-bit levels). The exact path's per-step CUDA graphs
(``reduce-overhead``) are timed by the worker bench in the same device call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import numpy as np
import torch

from benchmarks.worker_bench import _PROMPTS, GUIDANCE_SCALE, image_difference
from workflows.generation.acceleration import AccelerationOptions
from workflows.generation.pipeline import BatchShape, ImageJob, PipelineRunner


def timed(fn: Any, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,16")
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--out")
    args = parser.parse_args()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.abspath(args.cache_dir)
    sizes = [int(s) for s in args.sizes.split(",")]
    runner = PipelineRunner.load("sd15")
    runner.accelerate(
        AccelerationOptions(compile=True, cuda_graphs=False, buckets=tuple(sizes), cache_dir=args.cache_dir)
    )
    pipe, dev, accel = runner.pipeline, runner.device, runner._accel
    shape = BatchShape(512, 512, 30, GUIDANCE_SCALE, "euler")
    sched = runner.scheduler("euler")
    report: dict[str, Any] = {"sizes": {}}
    for size in sizes:
        jobs = [ImageJob(f"j{i}", _PROMPTS[i % len(_PROMPTS)], "", seed=1234 + i, num_images=1) for i in range(size)]
        runner.generate(jobs, shape)  # compile (from the cache folder) and warm
        call_s = timed(lambda jobs=jobs: runner.generate(jobs, shape), 3)
        reference = np.asarray(runner.generate(jobs, shape)[jobs[0].key][0])
        prompts = [job.prompt for job in jobs]
        kwargs = accel.prompt_cache.pipeline_kwargs(prompts, [""] * size)
        emb = torch.cat([kwargs["negative_prompt_embeds"], kwargs["prompt_embeds"]])
        pipe.scheduler = sched
        sched.set_timesteps(30, device=dev)
        generators = [torch.Generator(dev).manual_seed(job.seed) for job in jobs]
        latents0 = pipe.prepare_latents(size, 4, 512, 512, emb.dtype, dev, generators, None)
        static_latents, static_emb = latents0.clone(), emb.clone()

        def loop() -> torch.Tensor:
            sched._step_index = None
            sched.set_begin_index(0)
            latents = static_latents  # noqa: B023 - used within this size's iteration
            for t in sched.timesteps:
                model_input = sched.scale_model_input(torch.cat([latents] * 2), t)
                noise = pipe.unet(model_input, t, encoder_hidden_states=static_emb, return_dict=False)[0]  # noqa: B023 - used within this size's iteration
                uncond, text = noise.chunk(2)
                noise = uncond + GUIDANCE_SCALE * (text - uncond)
                latents = sched.step(noise, t, latents, return_dict=False)[0]
            return latents

        def decode(latents: torch.Tensor) -> list[Any]:
            images = [
                pipe.vae.decode(latents[i : i + 1] / pipe.vae.config.scaling_factor, return_dict=False)[0]
                for i in range(latents.shape[0])
            ]
            return pipe.image_processor.postprocess(torch.cat(images), output_type="pil")

        entry: dict[str, Any] = {"runner_call_s": call_s}
        with torch.no_grad(), accel.call_context(512, 512, size):
            python_loop = loop().clone()
            entry["python_loop_s"] = timed(loop)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loop()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            started = time.perf_counter()
            with torch.cuda.graph(graph):
                graph_out = loop()
            entry["capture_s"] = time.perf_counter() - started
            entry["graph_loop_s"] = timed(graph.replay)
            graph.replay()
            entry["graph_vs_python_loop_max_abs"] = (graph_out.float() - python_loop.float()).abs().max().item()

            def whole() -> list[Any]:
                static_latents.copy_(latents0)  # noqa: B023 - used within this size's iteration
                graph.replay()  # noqa: B023 - used within this size's iteration
                return decode(graph_out)  # noqa: B023 - used within this size's iteration

            entry["graph_call_s"] = timed(whole, 3)
            probe = np.asarray(whole()[0])
        entry["probe_vs_runner"] = image_difference(probe, reference)
        report["sizes"][str(size)] = entry
        print(json.dumps({"size": size, **entry}), flush=True)
    if args.out:
        with open(os.path.join(args.out, "loopgraph-probe.json"), "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
