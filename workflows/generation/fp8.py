"""FP8 matrix products for the UNet's transformer blocks: a quality-trading speed lever, off by default (issue 8).

Each ``nn.Linear`` inside the UNet's attention blocks (Q/K/V/out projections, fused or not, and the
feed-forward) becomes an :class:`Fp8Linear`: its weight is stored in float8 e4m3 with one scale per output
channel, and its input is quantized at run time with one scale per row (token), then ``torch._scaled_mm`` runs
the product on the FP8 tensor cores (Hopper and Ada; CPUs run the same arithmetic slowly, which the tests use).
Per-row scales keep the arithmetic of an image independent of its batch: no scale is shared between samples.
Kernels for another batch size still round the fp32 accumulations differently, and where that flips an FP8 code
the difference grows downstream: the stated tolerance for this path is under 1 level on average (the exact path
keeps 1 level at most).

Convolutions, normalisation and attention itself stay in the model's dtype. Images change (that is the
trade): ``sdq bench worker --fp8`` reports the pixel difference against the exact path beside the speed.
Measured on an H200 with SD 1.5 (docs/performance.md, 2026-11-29) it is slower than the exact levers (5.94 against 6.29
images/s): the per-row quantization costs a reduction pass per product, more than the FP8 GEMMs save.
"""

from __future__ import annotations

from typing import Any

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)
# torch._scaled_mm wants both matrix dimensions of the weight in multiples of 16.
_ALIGN = 16


class Fp8Linear(torch.nn.Module):
    """``y = x W^T + b`` with ``W`` in float8 (per output channel scale) and ``x`` quantized per row."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.out_dtype = weight.dtype
        scale = weight.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX  # (out, 1)
        self.weight_fp8: torch.Tensor
        self.weight_scale: torch.Tensor
        self.register_buffer("weight_fp8", (weight.float() / scale).to(FP8))  # (out, in), row-major
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        scale = rows.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX  # (rows, 1)
        quantized = (rows.float() / scale).to(FP8)
        # Row-wise scaled products produce bf16 (the kernels' only output type for row-wise scales).
        out = torch._scaled_mm(
            quantized,
            self.weight_fp8.t(),  # column-major (in, out), as the kernel wants its second operand
            scale_a=scale,
            scale_b=self.weight_scale,
            out_dtype=torch.bfloat16,
        ).to(self.out_dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def supports(device: torch.device) -> str | None:
    """None when FP8 products run on ``device``, else why not (the acceleration report's reason)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            return f"FP8 tensor cores need compute capability 8.9 or newer, this GPU has {major}.{minor}"
    elif device.type != "cpu":
        return f"not on CUDA or CPU ({device.type})"
    return None


def convert_attention_linears(unet: Any) -> int:
    """Swap every aligned ``nn.Linear`` inside the UNet's attention blocks for an ``Fp8Linear``; how many."""
    swapped = 0
    for name, module in list(unet.named_modules()):
        if ".attentions." not in f".{name}.":
            continue
        for child_name, child in list(module.named_children()):
            if (
                isinstance(child, torch.nn.Linear)
                and child.in_features % _ALIGN == 0
                and child.out_features % _ALIGN == 0
            ):
                setattr(module, child_name, Fp8Linear(child))
                swapped += 1
    return swapped
