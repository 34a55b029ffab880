"""PNG encoding for the worker's hand-off, optionally in helper processes.

Pillow holds the GIL for most of a PNG encode (about 34 ms for a 512x512 image at ``compress_level=1``),
and the worker's GPU thread needs the GIL to launch every kernel and scheduler step. Encoded in the worker's
own finisher threads, 16 images per batch stall generation; in a small pool of spawned processes the GPU thread
keeps the GIL and the encode runs on other cores. This module imports neither torch nor diffusers, so the
helper processes start in well under a second.
"""

from __future__ import annotations

import io
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from PIL import Image

PNG_COMPRESS_LEVEL = 1  # staging copies: speed over size (postprocessing re-encodes the final output)

# Helper processes when the setting is left unset: on a GPU the encode moves off the GPU thread's GIL (one H200,
# feature reuse 5, bucket 16: 1.495 s per batch of 16 against 1.532 s with the encode in threads, README
# "The worker loop under a saturated queue"); on CPU the pipeline needs the cores more than the GIL.
GPU_DEFAULT_ENCODE_PROCESSES = 2


def encode_processes_for(device_type: str, setting: int | None) -> int:
    """The helper-process count for a worker on ``device_type`` (``cuda``, ``cpu``, ...): the setting if given."""
    if setting is not None:
        return setting
    return GPU_DEFAULT_ENCODE_PROCESSES if device_type == "cuda" else 0


def encode_png(mode: str, size: tuple[int, int], raw: bytes) -> bytes:
    """PNG bytes of the image given as Pillow raw data (picklable arguments, for the process pool)."""
    buf = io.BytesIO()
    Image.frombytes(mode, size, raw).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


class PngEncoder:
    """Encodes in this process (``processes=0``) or in a pool of spawned processes. Thread-safe."""

    def __init__(self, processes: int = 0) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        if processes > 0:
            # spawn, not fork: the worker holds a CUDA context, which a forked child must not inherit.
            self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))

    def warm_up(self) -> None:
        """Start the helper processes now rather than on the first batch's hand-off."""
        if self._pool is not None:
            tiny = Image.new("RGB", (8, 8))
            pending = [self._pool.submit(encode_png, "RGB", (8, 8), tiny.tobytes()) for _ in range(self.processes)]
            for future in pending:
                future.result()

    def encode(self, image: Image.Image) -> bytes:
        if self._pool is None:
            return encode_png(image.mode, image.size, image.tobytes())
        return self._pool.submit(encode_png, image.mode, image.size, image.tobytes()).result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
