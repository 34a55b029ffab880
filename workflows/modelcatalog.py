"""What ``GET /v1/models`` answers: the models this deployment accepts, each with the values a job of it runs with
where its request leaves them out, the schedulers and LoRAs it may name, and a built-in model's note.

Everything here is read from the settings (the allowlist, the model and LoRA registries, the request limits), so
the list is the same for every tenant and changes only with a deployment.
"""

from __future__ import annotations

from typing import get_args

from shared.contracts import ModelInfo, ModelList, Scheduler
from shared.settings import Settings


def model_catalog(settings: Settings) -> ModelList:
    """The accepted models, the default first, then in the allowlist's order."""
    ids = list(dict.fromkeys([settings.default_model, *settings.models]))
    return ModelList(models=[_info(settings, model_id) for model_id in ids])


def _info(settings: Settings, model_id: str) -> ModelInfo:
    entry = settings.registry.get(model_id)
    if entry is None:  # the settings refuse an allowed model missing from the registry
        raise LookupError(f"model {model_id!r} is not in the model registry")
    return ModelInfo(
        id=model_id,
        default=model_id == settings.default_model,
        architecture=entry.architecture,
        revision=entry.revision,
        default_width=entry.default_width,
        default_height=entry.default_height,
        default_num_inference_steps=settings.limits.default_steps,
        default_guidance_scale=settings.limits.default_guidance,
        schedulers=list(entry.schedulers or get_args(Scheduler)),
        loras=[lora.id for lora in settings.loras.loras if model_id in lora.base_models],
        note=entry.note,
    )
