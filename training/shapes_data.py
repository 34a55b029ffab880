"""The synthetic training set of the ``shapes`` model: one coloured shape on a plain background, with its caption.

Pictures are drawn on the fly with torch (anti-aliased signed distances), so any batch of any size is made on
the training device in microseconds and the whole set is defined by a seed. The colours, shapes and the main
caption come from ``shared/shapesmodel.py``, which owns them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from shared.shapesmodel import SHAPES_COLOURS, SHAPES_SHAPES, shapes_caption

COLOUR_NAMES = tuple(SHAPES_COLOURS)
# Size of a shape: its circle's radius (a square's half side) as a fraction of the picture's shorter side.
RADIUS_RANGE = (0.22, 0.30)
# How far its centre may sit from the picture's centre, as a fraction of each side.
CENTRE_JITTER = 0.06
# A triangle's circumradius relative to that radius (so it reads as big as the circle).
TRIANGLE_SCALE = 1.3
# Caption forms and how often each is drawn; "" trains the unconditional branch that guidance needs.
CAPTION_FORMS: tuple[tuple[str, float], ...] = (
    ("full", 0.62),
    ("no_article", 0.10),
    ("no_background", 0.10),
    ("no_colour", 0.06),
    ("empty", 0.12),
)


@dataclass(frozen=True)
class Scene:
    """One picture's content: indexes into ``COLOUR_NAMES`` / ``SHAPES_SHAPES`` and its placement."""

    colour: int
    shape: int
    background: int
    centre_x: float  # fractions of the width/height
    centre_y: float
    radius: float  # fraction of the shorter side


def caption(scene: Scene, form: str = "full") -> str:
    """The caption of ``scene`` in one of the ``CAPTION_FORMS``."""
    colour, shape, background = COLOUR_NAMES[scene.colour], SHAPES_SHAPES[scene.shape], COLOUR_NAMES[scene.background]
    if form == "full":
        return shapes_caption(colour, shape, background)
    if form == "no_article":
        return f"{colour} {shape} on {background}"
    if form == "no_background":
        return f"a {colour} {shape}"
    if form == "no_colour":
        return f"a {shape} on a {background} background"
    if form == "empty":
        return ""
    raise ValueError(f"unknown caption form {form!r}")


def sample_scenes(n: int, generator: torch.Generator) -> list[Scene]:
    """``n`` random scenes; the shape's colour always differs from the background's."""
    k = len(COLOUR_NAMES)
    values = torch.rand(n, 6, generator=generator).tolist()
    scenes = []
    for u in values:
        colour = int(u[0] * k)
        background = (colour + 1 + int(u[1] * (k - 1))) % k
        scenes.append(
            Scene(
                colour=colour,
                shape=int(u[2] * len(SHAPES_SHAPES)),
                background=background,
                centre_x=0.5 + CENTRE_JITTER * (2 * u[3] - 1),
                centre_y=0.5 + CENTRE_JITTER * (2 * u[4] - 1),
                radius=RADIUS_RANGE[0] + (RADIUS_RANGE[1] - RADIUS_RANGE[0]) * u[5],
            )
        )
    return scenes


def sample_captions(scenes: list[Scene], generator: torch.Generator) -> list[str]:
    """A caption for each scene, its form drawn by ``CAPTION_FORMS``' weights."""
    forms = [form for form, _ in CAPTION_FORMS]
    weights = torch.tensor([w for _, w in CAPTION_FORMS])
    picks = torch.multinomial(weights, len(scenes), replacement=True, generator=generator).tolist()
    return [caption(scene, forms[i]) for scene, i in zip(scenes, picks, strict=True)]


def render(scenes: list[Scene], height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The pictures of ``scenes`` as a ``(n, 3, height, width)`` float tensor in [-1, 1] (the VAE's range)."""
    n = len(scenes)
    palette = torch.tensor(list(SHAPES_COLOURS.values()), dtype=torch.float32, device=device) / 127.5 - 1
    fg = palette[torch.tensor([s.colour for s in scenes], device=device)]
    bg = palette[torch.tensor([s.background for s in scenes], device=device)]
    shape = torch.tensor([s.shape for s in scenes], device=device).view(n, 1, 1)
    side = min(height, width)
    cx = torch.tensor([s.centre_x * width for s in scenes], device=device).view(n, 1, 1)
    cy = torch.tensor([s.centre_y * height for s in scenes], device=device).view(n, 1, 1)
    r = torch.tensor([s.radius * side for s in scenes], device=device).view(n, 1, 1)
    ys = torch.arange(height, device=device, dtype=torch.float32).view(1, height, 1) + 0.5
    xs = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, width) + 0.5
    dx, dy = xs - cx, ys - cy
    circle = torch.sqrt(dx**2 + dy**2) - r
    square = torch.maximum(dx.abs(), dy.abs()) - r
    # An upright equilateral triangle around its centroid (y grows downwards): the largest of its three edge
    # distances, each edge at the inradius (half the circumradius) along its outward normal.
    big_r = TRIANGLE_SCALE * r
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    triangle = torch.maximum(torch.maximum(dy, -c * dx - s * dy), c * dx - s * dy) - big_r / 2
    distance = torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))
    coverage = (0.5 - distance).clamp(0, 1).unsqueeze(1)  # one pixel of anti-aliasing
    return bg.view(n, 3, 1, 1) + (fg - bg).view(n, 3, 1, 1) * coverage
