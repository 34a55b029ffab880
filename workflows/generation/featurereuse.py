"""DeepCache-style feature reuse for SD-type UNets: a quality-trading speed lever, off by default (issue 8).

Adjacent denoising steps change the UNet's deep features little. Every ``interval``-th step (and the first)
runs the whole UNet and keeps the input of its last up block; the steps between run only the outermost level:
``conv_in``, the first down block (fresh skip connections from the current latents), the last up block on the
kept deep features, and the output head. With SD 1.5 and ``interval=3``, 20 of 30 steps skip every block below
the 64x64 level. Images change (that is the trade): ``sdq bench worker --feature-reuse N`` reports the pixel
difference against the exact path beside the speed.

Batch independence holds: every operation is per sample, so an image is the same alone or inside a batch.

The full step calls the UNet's own building blocks in diffusers' order; what the exact forward does beyond them
(ControlNet/adapter residuals, attention masks, GLIGEN) is refused here (``ValueError``), never run approximately.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Keyword arguments the pipelines pass as None; any other value would change the computation, so it is refused.
_REFUSED_UNLESS_NONE = (
    "timestep_cond",
    "attention_mask",
    "encoder_attention_mask",
    "down_block_additional_residuals",
    "mid_block_additional_residual",
    "down_intrablock_additional_residuals",
    "class_labels",
)


def supports(model: Any) -> str | None:
    """None when ``model`` (a pipeline's UNet) can reuse features, else why not (the report's reason)."""
    from diffusers import UNet2DConditionModel

    if not isinstance(model, UNet2DConditionModel):
        return f"not a UNet2DConditionModel ({type(model).__name__})"
    unet: Any = model
    if unet.config.addition_embed_type == "image_hint":
        return "image-hint UNets are not supported"
    if len(unet.down_blocks) < 2 or len(unet.up_blocks) < 2:
        return "needs at least two UNet levels"
    return None


class FeatureReuse:
    """Replaces ``unet.forward`` with a step-counting dispatcher between the full and the shallow forward.

    ``reset()`` starts a new pipeline call (step 0 runs in full). ``full`` and ``shallow`` are plain functions
    of tensors, so they can be compiled (``compile_with``); the kept feature is cloned when the compiled
    functions return memory owned by a CUDA graph.
    """

    def __init__(self, unet: Any, interval: int) -> None:
        if interval < 2:
            raise ValueError(f"feature reuse needs an interval of at least 2, got {interval}")
        reason = supports(unet)
        if reason is not None:
            raise ValueError(reason)
        self.unet = unet
        self.interval = interval
        self.full: Callable[..., tuple[torch.Tensor, torch.Tensor]] = self._full
        self.shallow: Callable[..., torch.Tensor] = self._shallow
        self._clone_kept = False
        self._step = 0
        self._kept: torch.Tensor | None = None
        self.full_steps = 0
        self.shallow_steps = 0
        unet.forward = self.forward

    def compile_with(self, compile_fn: Callable[[Callable[..., Any]], Callable[..., Any]], *, graphs: bool) -> None:
        self.full = compile_fn(self._full)
        self.shallow = compile_fn(self._shallow)
        self._clone_kept = graphs

    def reset(self) -> None:
        self._step = 0
        self._kept = None

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor,
        *,
        added_cond_kwargs: dict[str, Any] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
        **rest: Any,
    ) -> Any:
        for name in _REFUSED_UNLESS_NONE:
            if rest.pop(name, None) is not None:
                raise ValueError(f"feature reuse does not support {name}")
        if rest:
            raise ValueError(f"feature reuse does not support {sorted(rest)}")
        if cross_attention_kwargs:
            raise ValueError("feature reuse does not support cross_attention_kwargs")
        added = added_cond_kwargs or {}
        # A batch of another size (CFG on/off, a new call without reset) cannot use the kept features.
        fresh = self._kept is None or self._kept.shape[0] != sample.shape[0]
        if fresh or self._step % self.interval == 0:
            out, kept = self.full(sample, timestep, encoder_hidden_states, added)
            self._kept = kept.clone() if self._clone_kept else kept
            self._step = 1
            self.full_steps += 1
        else:
            out = self.shallow(sample, timestep, encoder_hidden_states, added, self._kept)
            self._step += 1
            self.shallow_steps += 1
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)

    # -- the two forwards (diffusers' UNet2DConditionModel.forward, restricted to what sdq's pipelines use) --

    def _embed(
        self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, added: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        unet = self.unet
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added)
        if aug is not None:
            emb = emb + aug
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        hidden = unet.process_encoder_hidden_states(
            encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added
        )
        return unet.conv_in(sample), emb, hidden

    @staticmethod
    def _block(block: Any, sample: torch.Tensor, emb: torch.Tensor, hidden: torch.Tensor, **kw: Any) -> Any:
        if getattr(block, "has_cross_attention", False):
            return block(hidden_states=sample, temb=emb, encoder_hidden_states=hidden, **kw)
        return block(hidden_states=sample, temb=emb, **kw)

    def _head(self, sample: torch.Tensor) -> torch.Tensor:
        unet = self.unet
        if unet.conv_norm_out is not None:
            sample = unet.conv_act(unet.conv_norm_out(sample))
        out: torch.Tensor = unet.conv_out(sample)
        return out

    def _forwards_upsample_size(self, sample: torch.Tensor) -> bool:
        """Whether the up blocks need explicit output sizes (a side not divisible by the total upsampling)."""
        factor = 2**self.unet.num_upsamplers
        return any(dim % factor != 0 for dim in sample.shape[-2:])

    def _full(
        self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, added: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact UNet output, and the input of the last up block (the features kept for reuse)."""
        unet = self.unet
        forward_size = self._forwards_upsample_size(sample)
        h, emb, hidden = self._embed(sample, timestep, encoder_hidden_states, added)
        residuals: tuple[torch.Tensor, ...] = (h,)
        for block in unet.down_blocks:
            h, res = self._block(block, h, emb, hidden)
            residuals += res
        if unet.mid_block is not None:
            if getattr(unet.mid_block, "has_cross_attention", False):
                h = unet.mid_block(h, emb, encoder_hidden_states=hidden)
            else:
                h = unet.mid_block(h, emb)
        kept = h
        last = len(unet.up_blocks) - 1
        for i, block in enumerate(unet.up_blocks):
            n = len(block.resnets)
            res, residuals = residuals[-n:], residuals[:-n]
            size = residuals[-1].shape[2:] if i < last and forward_size else None
            if i == last:
                kept = h
            h = self._block(block, h, emb, hidden, res_hidden_states_tuple=res, upsample_size=size)
        return self._head(h), kept

    def _shallow(
        self,
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor,
        added: dict[str, Any],
        kept: torch.Tensor,
    ) -> torch.Tensor:
        """The outermost level only: fresh skip connections, the kept deep features through the last up block."""
        unet = self.unet
        h, emb, hidden = self._embed(sample, timestep, encoder_hidden_states, added)
        _down, res = self._block(unet.down_blocks[0], h, emb, hidden)
        top = unet.up_blocks[-1]
        skips = ((h, *res))[: len(top.resnets)]
        return self._head(self._block(top, kept, emb, hidden, res_hidden_states_tuple=skips, upsample_size=None))
