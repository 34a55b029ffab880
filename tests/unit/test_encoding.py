"""PNG encoding for the worker's hand-off: in-process and in spawned helper processes give the same file; the
helper processes are the default on a GPU only, and an explicit setting wins; they outlive the stop signals sent to
the worker's process group but not the worker itself, and a helper that dies costs no image."""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from workflows.generation.encoding import PngEncoder, encode_processes_for


def test_the_process_pool_and_the_inline_encoder_write_the_same_lossless_png() -> None:
    pixels = np.random.default_rng(7).integers(0, 256, (96, 64, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    inline = PngEncoder(0)
    pooled = PngEncoder(2)
    try:
        pooled.warm_up()
        from_pool = pooled.encode(image)
        assert from_pool == inline.encode(image)
    finally:
        pooled.close()
        inline.close()
    decoded = Image.open(io.BytesIO(from_pool))
    assert decoded.format == "PNG"
    assert decoded.size == (64, 96)
    assert np.array_equal(np.asarray(decoded), pixels)


@pytest.mark.parametrize(
    ("device_type", "setting", "expected"),
    [("cuda", None, 2), ("cpu", None, 0), ("mps", None, 0), ("cuda", 0, 0), ("cpu", 3, 3)],
)
def test_helper_processes_default_to_the_gpu_only_and_the_setting_wins(
    device_type: str, setting: int | None, expected: int
) -> None:
    assert encode_processes_for(device_type, setting) == expected


def _helpers_started_by(start: Callable[[], None]) -> list[multiprocessing.process.BaseProcess]:
    before = {child.pid for child in multiprocessing.active_children()}
    start()
    return [child for child in multiprocessing.active_children() if child.pid not in before]


def test_helpers_survive_the_stop_signals_sent_to_the_worker_process_group(caplog: pytest.LogCaptureFixture) -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    encoder = PngEncoder(1)
    try:
        helpers = _helpers_started_by(encoder.warm_up)
        assert len(helpers) == 1
        pid = helpers[0].pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        time.sleep(0.5)
        assert helpers[0].is_alive()
        with caplog.at_level("WARNING"):
            assert encoder.encode(image) == PngEncoder(0).encode(image)
        assert "PNG helper pool failed" not in caplog.text  # encoded by the helper, not by the fallback
    finally:
        encoder.close()


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie has exited
    except FileNotFoundError:
        return True


def test_helpers_exit_when_the_worker_is_killed_outright() -> None:
    script = (
        "import multiprocessing, time\n"
        "from workflows.generation.encoding import PngEncoder\n"
        "encoder = PngEncoder(2)\n"
        "encoder.warm_up()\n"
        "print(' '.join(str(c.pid) for c in multiprocessing.active_children()), flush=True)\n"
        "time.sleep(60)\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as worker:
        try:
            assert worker.stdout is not None
            helpers = [int(pid) for pid in worker.stdout.readline().split()]
            assert len(helpers) == 2
            worker.kill()  # SIGKILL: no cleanup runs in the worker
            worker.wait(10)
            deadline = time.monotonic() + 10
            while not all(_exited(pid) for pid in helpers) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert all(_exited(pid) for pid in helpers)
        finally:
            worker.kill()


def test_a_killed_helper_costs_no_image_and_the_pool_is_replaced(caplog: pytest.LogCaptureFixture) -> None:
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    expected = PngEncoder(0).encode(image)
    encoder = PngEncoder(1)
    try:
        (helper,) = _helpers_started_by(encoder.warm_up)
        helper.kill()
        helper.join(5)
        with caplog.at_level("WARNING"):
            assert encoder.encode(image) == expected  # encoded here while the broken pool is replaced
        assert "PNG helper pool failed" in caplog.text
        replacement = _helpers_started_by(lambda: encoder.encode(image))
        assert len(replacement) == 1  # the next image goes through a new helper
        assert encoder.encode(image) == expected
    finally:
        encoder.close()
    assert encoder.encode(image) == expected  # after close (a hard stop's late hand-off): encoded here
