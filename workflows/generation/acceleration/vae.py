"""The VAE levers: decoding an fp32-upcast (SDXL-type) VAE in bf16, and telling which pipelines upcast."""

from __future__ import annotations

from typing import Any


def decode_vae_in_bf16(vae: Any) -> None:
    """Keep ``vae`` in bf16 and cast what reaches its decoder (the pipeline's fp16 latents) to bf16.

    SDXL's VAE overflows fp16, so diffusers casts it to fp32 and back around every decode. bf16 has fp32's
    exponent range with fewer mantissa bits: no overflow, half the memory traffic, and one dtype for the whole
    call, so the decoder can be compiled. The images change slightly (the benchmark reports by how much).
    """
    import torch

    from workflows.generation.models import quiet_logger

    with quiet_logger("diffusers.models.modeling_utils"):  # "modules that should be kept in float32: []"
        vae.to(dtype=torch.bfloat16)

    def to_bf16(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(a.to(torch.bfloat16) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    first = vae.post_quant_conv if getattr(vae, "post_quant_conv", None) is not None else vae.decoder
    first.register_forward_pre_hook(to_bf16)


def device_has_bf16(device: Any) -> bool:
    import torch

    return device.type != "cuda" or bool(torch.cuda.is_bf16_supported())


def upcasts_vae_per_call(pipe: Any) -> bool:
    """SDXL-type pipelines (they have ``upcast_vae``) decode an fp16 ``force_upcast`` VAE in fp32 per call."""
    import torch

    vae = pipe.vae
    return bool(
        hasattr(pipe, "upcast_vae") and getattr(vae.config, "force_upcast", False) and vae.dtype == torch.float16
    )
