"""Reading a picture of the ``shapes`` model back: its background colour, its shape's colour and which shape.

The colours are the nearest of ``SHAPES_COLOURS`` to the median of the corners and of the centre; the shape is
told by how much of its bounding box it fills (square about 1, circle about pi/4, triangle about 1/2). The
accuracy figure of ``training/evaluate_shapes.py`` and the tests measure with this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from shared.shapesmodel import SHAPES_COLOURS

_PALETTE = np.array(list(SHAPES_COLOURS.values()), dtype=np.float32)
_NAMES = list(SHAPES_COLOURS)
# Fill of its bounding box above which a shape is a square, below which a triangle (a circle between).
SQUARE_FILL = 0.9
TRIANGLE_FILL = 0.66


@dataclass(frozen=True)
class Reading:
    """What a picture shows, as measured."""

    colour: str  # the nearest palette colour at the centre
    background: str  # the nearest palette colour at the corners
    shape: str  # "circle", "square", "triangle", or "none" when nothing stands out from the background
    fill: float  # the shape's area over its bounding box's
    centre_rgb: tuple[int, int, int]
    corner_rgb: tuple[int, int, int]


def nearest_colour(rgb: np.ndarray) -> str:
    return _NAMES[int(np.argmin(((_PALETTE - rgb) ** 2).sum(axis=1)))]


def read_picture(image: Image.Image) -> Reading:
    """Measure one picture (any size)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w, _ = pixels.shape
    p = max(2, min(h, w) // 16)
    corners = np.concatenate(
        [c.reshape(-1, 3) for c in (pixels[:p, :p], pixels[:p, -p:], pixels[-p:, :p], pixels[-p:, -p:])]
    )
    cy, cx, q = h // 2, w // 2, max(2, min(h, w) // 12)
    centre = pixels[cy - q : cy + q, cx - q : cx + q].reshape(-1, 3)
    corner_rgb, centre_rgb = np.median(corners, axis=0), np.median(centre, axis=0)
    # A pixel belongs to the shape when it is nearer the centre's colour than the corners'.
    to_fg = ((pixels - centre_rgb) ** 2).sum(axis=2)
    to_bg = ((pixels - corner_rgb) ** 2).sum(axis=2)
    mask = to_fg < to_bg
    shape, fill = "none", 0.0
    if np.linalg.norm(centre_rgb - corner_rgb) > 60 and mask.sum() > 0.02 * h * w:
        ys, xs = np.nonzero(mask)
        y0, y1 = np.percentile(ys, [1, 99])
        x0, x1 = np.percentile(xs, [1, 99])
        box = mask[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1]
        fill = float(box.mean())
        shape = "square" if fill > SQUARE_FILL else "triangle" if fill < TRIANGLE_FILL else "circle"
    return Reading(
        colour=nearest_colour(centre_rgb),
        background=nearest_colour(corner_rgb),
        shape=shape,
        fill=round(fill, 3),
        centre_rgb=tuple(int(v) for v in centre_rgb),  # type: ignore[arg-type]
        corner_rgb=tuple(int(v) for v in corner_rgb),  # type: ignore[arg-type]
    )
