"""Issue 8 device probe: builds one AOTInductor package of the SD 1.5 architecture (random weights) on CUDA in
this process and runs it beside eager, to find why a worker start from packages stopped (run under
``python -X faulthandler``). Modes: ``decoder`` (the VAE decoder at 512², batch 1), ``decoder-in-so`` (the same
with the weights inside the package), ``unet`` (the UNet at batch 1 with CFG: per-call time, launched from C++
and replayed as a CUDA graph with ``run_single_threaded``)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from workflows.generation import aotpackage
from workflows.generation.models import build_random_pipeline


def timed(fn, n: int = 30) -> float:
    fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / n


def main(mode: str) -> None:
    device = torch.device("cuda")
    pipe = build_random_pipeline("sd15", device, torch.float16)
    pipe.unet.fuse_qkv_projections()
    pipe.vae.fuse_qkv_projections()
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    folder = Path(tempfile.gettempdir()) / "aot-probe"
    stats = aotpackage.new_stats()
    levers = {"fuse_qkv": True, "fp8": False}
    torch.set_grad_enabled(False)
    if mode.startswith("decoder"):
        if mode == "decoder-in-so":
            original = torch._inductor.aoti_compile_and_package

            def in_so(program, package_path, inductor_configs):
                return original(program, package_path=package_path)

            torch._inductor.aoti_compile_and_package = in_so
        module = pipe.vae.decoder
        eager = module.forward
        forward = aotpackage.AotForward(module, "decoder", folder, levers, lambda: True, stats)
        inputs = (torch.randn(1, 4, 64, 64, device=device, dtype=torch.float16),)
        print("building/loading", flush=True)
        runner = forward._runner(inputs)
        print("runner", runner, stats, flush=True)
        out = forward(*inputs)
        ref = eager(*inputs)
        print("max abs diff vs eager", (out.float() - ref.float()).abs().max().item(), flush=True)
        eager_ms, package_ms = timed(lambda: eager(*inputs)) * 1e3, timed(lambda: forward(*inputs)) * 1e3
        print(f"eager {eager_ms:.2f} ms, package {package_ms:.2f} ms")
        return
    module = pipe.unet
    eager = module.forward
    forward = aotpackage.AotForward(module, "unet", folder, levers, lambda: True, stats)
    sample = torch.randn(2, 4, 64, 64, device=device, dtype=torch.float16)
    t = torch.tensor(500.0, device=device)
    hidden = torch.randn(2, 77, 768, device=device, dtype=torch.float16)
    inputs = forward._package_inputs(sample, (t, hidden), {"return_dict": False})
    runner = forward._runner(inputs)
    print("runner", runner, stats, flush=True)
    out = runner(*inputs)
    ref = eager(sample, t, hidden, return_dict=False)[0]
    print("max abs diff vs eager", (out.float() - ref.float()).abs().max().item(), flush=True)
    print(f"eager {timed(lambda: eager(sample, t, hidden, return_dict=False)) * 1e3:.2f} ms per UNet call")
    print(f"package {timed(lambda: runner(*inputs)) * 1e3:.2f} ms per UNet call", flush=True)
    # The same package loaded single-threaded, its call captured in a CUDA graph.
    path = forward.package_path(inputs)
    single = torch._inductor.aoti_load_package(str(path), run_single_threaded=True)
    state = {**dict(forward._core.named_parameters()), **dict(forward._core.named_buffers())}
    single.load_constants({n: state[n] for n in single.get_constant_fqns()}, check_full_update=True, user_managed=True)
    static = [x.clone() for x in inputs]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            single(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graphed_out = single(*static)
    graph.replay()
    torch.cuda.synchronize()
    print("graph max abs diff vs package", (graphed_out.float() - out.float()).abs().max().item())
    print(f"graph replay {timed(graph.replay) * 1e3:.2f} ms per UNet call", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
