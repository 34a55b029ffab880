"""The GPU watchdog: a pipeline call that makes no step for ``stall_s`` is hung, and the worker gives up on it.

A wedged GPU (a driver fault, a kernel that never returns) blocks the GPU thread inside the pipeline call, where
no stop can reach it, while the heartbeat thread keeps renewing its jobs' leases: the jobs would stay RUNNING on a
worker that will never finish them. The watchdog thread sees the call's last sign of life (its start, or its
latest denoising step) grow older than the bound, lets every held message go (visible now, so the jobs run again
elsewhere once their leases lapse) and ends the process with :data:`EXIT_HUNG`: nothing in a wedged process can
be trusted to stop cleanly, and the container's restart policy (ECS) replaces it. While no call hangs it touches
the health file every second (:mod:`.health`), so a process too wedged for its own watchdog fails its container's
health check instead.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from aws_lambda_powertools import Logger
from PIL.Image import Image

from workflows.generation.batchrun import Generator, WarmsUp
from workflows.generation.health import touch
from workflows.generation.pipeline import BatchShape, ImageJob, LatentTap

if TYPE_CHECKING:
    from workflows.generation.previews import Captured

logger = Logger(service="sdq-worker")

EXIT_HUNG = 70  # EX_SOFTWARE: the process gave up on itself


class Watchdog:
    """Watches the pipeline calls of one worker. When a call hangs, ``on_hang`` (given the seconds since its last
    sign of life) runs once on the watchdog thread, then ``exit_process(EXIT_HUNG)``."""

    def __init__(
        self,
        stall_s: float,
        on_hang: Callable[[float], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        exit_process: Callable[[int], Any] = os._exit,
        alive_file: Path | None = None,
    ) -> None:
        self._alive_file = alive_file
        self._stall_s = stall_s
        self._on_hang = on_hang
        self._clock = clock
        self._exit = exit_process
        self._lock = threading.Lock()
        self._alive_at: float | None = None  # the running call's last sign of life; None between calls
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sdq-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> None:
        """A call started or made a step."""
        with self._lock:
            self._alive_at = self._clock()

    def idle(self) -> None:
        """The call returned (or raised)."""
        with self._lock:
            self._alive_at = None

    def _mark_alive(self) -> None:
        if self._alive_file is None:
            return
        try:
            touch(self._alive_file)
        except OSError as exc:
            logger.warning("health file not touched", path=str(self._alive_file), error=str(exc))

    def stalled_for(self) -> float:
        """Seconds since the running call's last sign of life (0 between calls)."""
        with self._lock:
            return 0.0 if self._alive_at is None else self._clock() - self._alive_at

    def _run(self) -> None:
        interval = min(1.0, self._stall_s / 4)
        while not self._stop.wait(interval):
            stalled = self.stalled_for()
            if stalled <= self._stall_s:
                self._mark_alive()
                continue
            logger.error("pipeline call hung; letting its jobs go and exiting", stalled_s=round(stalled, 1))
            try:
                self._on_hang(stalled)
            finally:
                self._exit(EXIT_HUNG)
            return


class _Step:
    """An ``on_step`` that reports each step to the watchdog, then passes it on; a :class:`LatentTap`'s preview
    calls go through unchanged (the pipeline asks ``isinstance(on_step, LatentTap)``)."""

    def __init__(self, watchdog: Watchdog, on_step: Callable[[int, int], None] | None) -> None:
        self._watchdog = watchdog
        self._on_step = on_step
        self._tap = on_step if isinstance(on_step, LatentTap) else None

    def __call__(self, step: int, total: int) -> None:
        self._watchdog.beat()
        if self._on_step is not None:
            self._on_step(step, total)

    def wants_latents(self, step: int, total: int) -> bool:
        return self._tap is not None and self._tap.wants_latents(step, total)

    def take_latents(self, step: int, total: int, latents: Captured) -> None:
        if self._tap is not None:
            self._tap.take_latents(step, total, latents)


class Watched:
    """``generator`` with its calls and steps reported to ``watchdog``; everything else is the generator's."""

    def __init__(self, generator: Generator, watchdog: Watchdog) -> None:
        self._generator = generator
        self._watchdog = watchdog

    @property
    def model_name(self) -> str:
        return self._generator.model_name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._generator, name)

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
    ) -> dict[str, list[Image]]:
        self._watchdog.beat()
        try:
            return self._generator.generate(jobs, shape, _Step(self._watchdog, on_step))
        finally:
            self._watchdog.idle()

    def warm_next(self) -> bool:
        """The generator's ``warm_next`` (a compile and a short call), watched as a batch's call is."""
        self._watchdog.beat()
        try:
            return cast(WarmsUp, self._generator).warm_next()
        finally:
            self._watchdog.idle()
