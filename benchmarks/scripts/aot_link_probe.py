"""Issue 24 device probe: how torch 2.11's AOTInductor links a CUDA package's library, and whether the package
loads when that link leaves libstdc++ static out (``python aot_link_probe.py build|build-dynamic``).

The cuda-gdb backtrace of 2026-12-07 put the load's segfault inside the package's own ``std::regex`` code
(``parse_device_str``), as if the library carried a copy of libstdc++ beside the process's. ``build`` prints every
compiler and linker command the build runs; ``build-dynamic`` runs the same build with ``-static-libstdc++`` and
``-static-libgcc`` taken out of those commands. Each then loads its package in a fresh process (aot_minimal.py)."""

from __future__ import annotations

import runpy
import subprocess
import sys
from typing import Any

STATIC_FLAGS = ("-static-libstdc++", "-static-libgcc")


def _strip(args: Any) -> Any:
    if isinstance(args, str):
        for flag in STATIC_FLAGS:
            args = args.replace(flag, "")
        return args
    if isinstance(args, (list, tuple)):
        return type(args)(a for a in args if a not in STATIC_FLAGS)
    return args


def main(step: str) -> None:
    original = subprocess.Popen.__init__
    dynamic = step == "build-dynamic"

    def logged(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        text = args if isinstance(args, str) else " ".join(map(str, args))
        if any(word in text for word in ("g++", "c++", "gcc", "clang", "nvcc", " -shared", "-o ")):
            print("CMD", ("(dynamic) " if dynamic else "") + text[:3000], flush=True)
        original(self, _strip(args) if dynamic else args, *rest, **kwargs)

    subprocess.Popen.__init__ = logged  # type: ignore[method-assign]
    sys.argv = ["aot_minimal.py", "build"]
    runpy.run_path("benchmarks/scripts/aot_minimal.py", run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1])
