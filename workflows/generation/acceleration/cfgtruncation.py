"""CFG truncation: the last part of the schedule without classifier-free guidance's unconditional pass.

A quality-trading lever (issue 24), off by default. With guidance, every step runs the UNet on each image twice
(the negative prompt's prediction and the prompt's); late in the schedule the two barely differ, so the last
``share`` of the steps run the prompt's half alone: half the UNet work in those steps. The images change (the
trade): ``benchmarks/scripts/cfgtrunc_probe.py`` reports the PSNR against the exact path beside the speed.

It is diffusers' own "dynamic classifier-free guidance" recipe: at the end of the last guided step a
``callback_on_step_end`` sets the pipeline's guidance scale to 0 and keeps the prompt's half of every tensor the
pipeline stacked [negative, prompt] for guidance. Every image of a batch switches at the same step and each
operation is per image, so an image is the same alone or inside a batch.
"""

from __future__ import annotations

from typing import Any

# The per-image tensors diffusers' SD and SDXL text-to-image pipelines stack [negative, prompt] for guidance and
# hand to ``callback_on_step_end``.
_STACKED = ("prompt_embeds", "add_text_embeds", "add_time_ids")


def supports(pipe: Any) -> str | None:
    """None when ``pipe`` can drop guidance mid-call through its step callback, else why not."""
    inputs = getattr(pipe, "_callback_tensor_inputs", ())
    if "prompt_embeds" not in inputs or not hasattr(type(pipe), "do_classifier_free_guidance"):
        return f"{type(pipe).__name__} does not hand its guidance embeddings to step callbacks"
    return None


def unguided_steps(total: int, share: float) -> int:
    """How many of ``total`` steps, at the end, run without guidance for ``share`` (0 to 1) of them."""
    return min(total - 1, round(total * share)) if share > 0 else 0


def tensor_inputs(pipe: Any) -> list[str]:
    """The tensors the step callback must be handed (``callback_on_step_end_tensor_inputs``)."""
    return [name for name in _STACKED if name in pipe._callback_tensor_inputs]


def stop_guidance_after(pipe: Any, step: int, share: float, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
    """At the end of 0-based ``step``: if it is the last guided one, turn guidance off for the rest of the call
    (the pipeline reads ``callback_kwargs`` back). Returns ``callback_kwargs``."""
    total = int(pipe.num_timesteps)
    skipped = unguided_steps(total, share)
    if skipped and step + 1 == total - skipped and pipe.do_classifier_free_guidance:
        pipe._guidance_scale = 0.0  # diffusers' documented switch; the next call sets its own scale again
        for name in tensor_inputs(pipe):
            value = callback_kwargs.get(name)
            if value is not None:
                callback_kwargs[name] = value.chunk(2)[1]
    return callback_kwargs
