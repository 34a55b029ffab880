"""PNG encoding for the worker's hand-off: in-process and in spawned helper processes give the same file; the
helper processes are the default on a GPU only, and an explicit setting wins."""

from __future__ import annotations

import io

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
