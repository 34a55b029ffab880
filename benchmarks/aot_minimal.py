"""Issue 8 device probe: does any AOTInductor package load on this CUDA machine? A two-layer model, built and
loaded (``python benchmarks/aot_minimal.py build|load|load-single``), each step in its own process."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(64, 64)
        self.second = torch.nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))


def main(step: str) -> None:
    path = str(Path(tempfile.gettempdir()) / "aot-minimal.pt2")
    torch.manual_seed(0)
    model = Small().cuda().eval()
    x = torch.randn(4, 64, device="cuda")
    print(torch.__version__, torch.version.cuda, "cxx11 abi", torch.compiled_with_cxx11_abi(), flush=True)
    if step == "build":
        program = torch.export.export(model, (x,))
        torch._inductor.aoti_compile_and_package(program, package_path=path)
        print("built", flush=True)
        return
    runner = torch._inductor.aoti_load_package(path, run_single_threaded=step == "load-single")
    print("loaded", flush=True)
    with torch.no_grad():
        print("max abs diff vs eager", (runner(x) - model(x)).abs().max().item(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
