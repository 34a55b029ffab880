"""PNG encoding for the worker's hand-off, optionally in helper processes.

Pillow holds the GIL for most of a PNG encode (about 34 ms for a 512x512 image at ``compress_level=1``),
and the worker's GPU thread needs the GIL to launch every kernel and scheduler step. Encoded in the worker's
own finisher threads, 16 images per batch stall generation; in a small pool of spawned processes the GPU thread
keeps the GIL and the encode runs on other cores. This module imports neither torch nor diffusers, so the
helper processes start in well under a second.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from PIL import Image

logger = logging.getLogger(__name__)

PNG_COMPRESS_LEVEL = 1  # staging copies: speed over size (postprocessing re-encodes the final output)

# Helper processes when the setting is left unset: on a GPU the encode moves off the GPU thread's GIL (one H200,
# feature reuse 5, bucket 16: 1.495 s per batch of 16 against 1.532 s with the encode in threads, on two
# machines; docs/performance.md); on CPU the pipeline needs the cores more.
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


def _start_helper() -> None:
    """In each helper: ignore the stop signals sent to the worker's process group (Ctrl-C, systemd's SIGTERM),
    since the worker stops the pool itself and a helper that died of them would break the pool under the batch
    the worker is finishing; and exit when the worker is gone, however it died (no orphan that only SIGKILL
    stops)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:

        def exit_with_parent() -> None:
            parent.join()
            os._exit(0)

        threading.Thread(target=exit_with_parent, name="sdq-parent-watch", daemon=True).start()


class PngEncoder:
    """Encodes in this process (``processes=0``) or in a pool of spawned processes. Thread-safe.

    A pool that breaks (a helper killed) is replaced, and the image at hand is encoded here; after ``close``
    images are encoded here too, so a hand-off still running at a hard stop finishes.
    """

    def __init__(self, processes: int = 0) -> None:
        self.processes = processes
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = self._new_pool() if processes > 0 else None

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the worker holds a CUDA context, which a forked child must not inherit.
        return ProcessPoolExecutor(
            self.processes, mp_context=multiprocessing.get_context("spawn"), initializer=_start_helper
        )

    def warm_up(self) -> None:
        """Start the helper processes now rather than on the first batch's hand-off."""
        pool = self._pool
        if pool is not None:
            tiny = Image.new("RGB", (8, 8))
            pending = [pool.submit(encode_png, "RGB", (8, 8), tiny.tobytes()) for _ in range(self.processes)]
            for future in pending:
                future.result()

    def encode(self, image: Image.Image) -> bytes:
        raw = (image.mode, image.size, image.tobytes())
        pool = self._pool
        if pool is None:
            return encode_png(*raw)
        try:
            return pool.submit(encode_png, *raw).result()
        except BrokenProcessPool as exc:  # a helper died
            self._replace(pool, exc)
        except (RuntimeError, CancelledError):
            if self._pool is pool:
                raise  # the encode itself failed, in a healthy pool
            # The pool was closed or replaced under this encode (a hard stop, another thread's replacement).
        return encode_png(*raw)

    def _replace(self, broken: ProcessPoolExecutor, exc: BaseException) -> None:
        """Swap a pool that failed for a new one, once, unless the encoder was closed meanwhile."""
        with self._lock:
            if self._pool is not broken:
                return  # closed, or another thread replaced it already
            logger.warning("PNG helper pool failed (%s): encoding here and starting a new pool", type(exc).__name__)
            self._pool = self._new_pool()
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
