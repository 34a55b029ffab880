"""Issue 8 device probe: does any AOTInductor package load on this CUDA machine? A two-layer model, built and
loaded (``python benchmarks/aot_minimal.py build|load|load-single``), each step in its own process.

Where torch's package loader crashes, the later steps find the layer that does: ``dlopen`` only loads the
package's compiled library (``ctypes``), ``runner`` builds the CUDA container runner on it without the package
loader, and ``legacy-build``/``legacy-load`` try the older ``.so`` route (``aot_compile`` + ``aot_load``)."""

from __future__ import annotations

import ctypes
import sys
import tempfile
import zipfile
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
    if step in ("dlopen", "runner"):
        folder = Path(tempfile.mkdtemp(prefix="aot-minimal-"))
        zipfile.ZipFile(path).extractall(folder)
        libraries = sorted(folder.rglob("*.so"))
        print("libraries", [str(lib.relative_to(folder)) for lib in libraries], flush=True)
        wrapper = next(lib for lib in libraries if lib.name.endswith("wrapper.so"))
        if step == "dlopen":
            ctypes.CDLL(str(wrapper))
            print("dlopen ok", flush=True)
            return
        container = torch._C._aoti.AOTIModelContainerRunnerCuda(str(wrapper), 1, "cuda", str(wrapper.parent))
        print("runner built", flush=True)
        with torch.no_grad():
            out = container.run([x])[0]
            print("max abs diff vs eager", (out - model(x)).abs().max().item(), flush=True)
        return
    legacy = str(Path(tempfile.gettempdir()) / "aot-minimal-legacy.so")
    if step == "legacy-build":
        program = torch.export.export(model, (x,))
        built = torch._inductor.aot_compile(program.module(), (x,), options={"aot_inductor.output_path": legacy})
        print("built", built, flush=True)
        return
    if step == "legacy-load":
        loaded = torch._export.aot_load(legacy, "cuda")
        print("loaded", flush=True)
        with torch.no_grad():
            print("max abs diff vs eager", (loaded(x) - model(x)).abs().max().item(), flush=True)
        return
    runner = torch._inductor.aoti_load_package(path, run_single_threaded=step == "load-single")
    print("loaded", flush=True)
    with torch.no_grad():
        print("max abs diff vs eager", (runner(x) - model(x)).abs().max().item(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
