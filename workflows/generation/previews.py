"""Progress previews: a small JPEG of each job's first image as it forms, from the current latents through a fixed
linear latent-to-RGB map (no extra weights, no VAE decode).

Two halves, split by thread. On the GPU thread, :func:`capture` picks each job's first latent row, averages it
down to at most ``MAX_LATENT_SIDE`` per side and starts an asynchronous copy to the host (on CUDA: a
non-blocking copy into pinned memory and an event recorded behind it; nothing waits). Off the GPU thread,
:meth:`Captured.wait` waits for that event and :func:`to_jpeg` maps the four latent channels to RGB and encodes
a JPEG of at most ``MAX_PREVIEW_SIDE`` pixels per side.

The maps are the community's well-known least-squares fits of the VAE's decode to a linear function of the
latent channels (ComfyUI, ``comfy/latent_formats.py``: ``SD15`` and ``SDXL`` ``latent_rgb_factors``). A preview
is a colour sketch, not the image: the tiny model's previews are noise like its images.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image

MAX_PREVIEW_SIDE = 256
MAX_LATENT_SIDE = 64  # latents are averaged down to this per side on the device before the copy
JPEG_QUALITY = 70

# Rows: the four latent channels; columns: R, G, B (ComfyUI comfy/latent_formats.py, SD15 and SDXL).
SD15_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
SDXL_FACTORS = (
    (0.3920, 0.4054, 0.4549),
    (-0.2634, -0.0196, 0.0653),
    (0.0568, 0.1687, -0.0755),
    (-0.3112, -0.2359, -0.2076),
)
SDXL_SCALING_FACTOR = 0.13025


@dataclass(frozen=True)
class LatentFormat:
    """The linear map of one latent space to RGB."""

    name: str
    factors: tuple[tuple[float, float, float], ...]


def latent_format_for(pipe: Any) -> LatentFormat | None:
    """The map for ``pipe``'s latents: SDXL's for an SDXL VAE (scaling factor 0.13025), SD 1.x/2.x's for other
    four-channel latents (the tiny model's too); None for latents of another width (no preview)."""
    vae = getattr(pipe, "vae", None)
    config = getattr(vae, "config", None)
    if config is None or int(getattr(config, "latent_channels", 4)) != 4:
        return None
    if abs(float(getattr(config, "scaling_factor", 0.18215)) - SDXL_SCALING_FACTOR) < 1e-4:
        return LatentFormat("sdxl", SDXL_FACTORS)
    return LatentFormat("sd15", SD15_FACTORS)


@dataclass
class Captured:
    """Latents on their way to the host: one row per job, in the order of ``keys``."""

    keys: list[str]
    host: torch.Tensor
    done: Any  # a torch.cuda.Event recorded after the copy, or None when the copy was synchronous
    format: LatentFormat

    def wait(self) -> torch.Tensor:
        """The latents on the host (float32), once the copy has landed. Call off the GPU thread."""
        if self.done is not None:
            self.done.synchronize()
        return self.host.float()


def capture(latents: torch.Tensor, rows: Sequence[int], keys: list[str], fmt: LatentFormat) -> Captured:
    """Start copying ``latents[rows]`` (shrunk on the device) to the host; the GPU thread does not wait.

    Cost on the GPU thread: one gather, at most one average pool and one asynchronous copy of a few KiB.
    """
    with torch.no_grad():
        # Basic indexing and a stack: all on the device (a list index would first copy the indices to it).
        source = latents.detach()
        picked = torch.stack([source[row] for row in rows])
        side = max(int(picked.shape[-2]), int(picked.shape[-1]))
        factor = math.ceil(side / MAX_LATENT_SIDE)
        if factor > 1:
            picked = F.avg_pool2d(picked, kernel_size=factor, ceil_mode=True)
        if picked.device.type == "cuda":
            host = picked.to("cpu", non_blocking=True)  # into pinned memory: asynchronous
            done = torch.cuda.Event()
            done.record()
            return Captured(keys, host, done, fmt)
        return Captured(keys, picked.clone(), None, fmt)


def to_jpeg(latent: torch.Tensor, fmt: LatentFormat, *, max_side: int = MAX_PREVIEW_SIDE) -> bytes:
    """One latent (channels x height x width, on the host) as a JPEG of at most ``max_side`` per side."""
    factors = torch.tensor(fmt.factors, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latent.float(), factors)
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels, mode="RGB")
    height, width = pixels.shape[:2]
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()
