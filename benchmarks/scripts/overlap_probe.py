"""Issue 24: does starting CUDA on a thread of its own overlap the worker's imports?

    python3 benchmarks/scripts/overlap_probe.py serial|thread

One fresh interpreter per run. ``serial``: ``import torch``, then the worker's import path (``handlers.worker`` and
the pipeline module), then CUDA's first work (context, a cuBLAS product, a cuDNN convolution, SDPA). ``thread``:
the same CUDA work on a thread started right after ``import torch``, while the main thread imports the rest.
Prints one JSON line: seconds from the interpreter's start to each point (the overlap pays only where torch's
calls release the GIL; Python imports hold it).
"""

from __future__ import annotations

import json
import sys
import threading
import time

T0 = time.perf_counter()


def cuda_first_work() -> None:
    import torch
    from torch.nn import functional

    x = torch.randn(1024, 1024, device="cuda", dtype=torch.float16)
    (x @ x).sum().item()
    img = torch.randn(1, 4, 64, 64, device="cuda", dtype=torch.float16)
    functional.conv2d(img, torch.randn(320, 4, 3, 3, device="cuda", dtype=torch.float16), padding=1).sum().item()
    q = torch.randn(2, 8, 4096, 40, device="cuda", dtype=torch.float16)
    functional.scaled_dot_product_attention(q, q, q).sum().item()
    torch.cuda.synchronize()


def main() -> int:
    mode = sys.argv[1]
    import torch  # noqa: F401  (both threads need it; imported once, here)

    marks = {"torch_s": time.perf_counter() - T0}
    done: dict[str, float] = {}

    def timed_cuda() -> None:
        cuda_first_work()
        done["cuda_done_s"] = time.perf_counter() - T0

    thread = threading.Thread(target=timed_cuda) if mode == "thread" else None
    if thread is not None:
        thread.start()
    import handlers.worker  # noqa: F401
    import workflows.generation.pipeline  # noqa: F401

    marks["imports_done_s"] = time.perf_counter() - T0
    if thread is not None:
        thread.join()
    else:
        timed_cuda()
    marks.update(done)
    marks["ready_s"] = time.perf_counter() - T0
    print(json.dumps({"mode": mode, "peft_imported": "peft" in sys.modules, **marks}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
