"""PNG encoding for the worker's hand-off: in-process and in spawned helper processes give the same file."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from workflows.generation.encoding import PngEncoder


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
