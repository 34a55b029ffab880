"""What a worker leaves out of its start, decided before it imports torch and diffusers (issue 24).

diffusers and transformers import peft at their own import whenever it is installed, and the worker image has it
for per-job LoRAs (``workflows/generation/loras.py``). diffusers fixes its PEFT backend at that import, in every
module that copies its flag, so peft cannot be imported later, on a first LoRA: a process either has it from the
start or never. A worker that serves no LoRA leaves it out (measured in ``docs/performance.md``, issue 24).

The worker image has no torchvision either (nothing the service runs needs it): transformers then serves its PIL
image processors, as it should, but says so in three warnings as diffusers imports. They are dropped at their
source, so a worker's first lines say what the worker does.
"""

from __future__ import annotations

import logging
import sys

from shared.settings import Settings

# transformers' logger of the fallback, and the fallback's warning (the PIL processors are the ones a worker uses).
_FALLBACK_LOGGER = "transformers.utils.import_utils"
_FALLBACK_WARNING = "requires torchvision (not installed); falling back to"


class _NoTorchvisionFallbackWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _FALLBACK_WARNING not in record.getMessage()


def quiet_torchvision_fallback() -> None:
    """Drop transformers' warning that it uses its PIL image processors for want of torchvision; nothing else."""
    logger = logging.getLogger(_FALLBACK_LOGGER)
    if not any(isinstance(f, _NoTorchvisionFallbackWarning) for f in logger.filters):
        logger.addFilter(_NoTorchvisionFallbackWarning())


def keep_peft_off(serves_loras: bool) -> bool:
    """Mark peft as not installed for this process unless it serves LoRAs; call before diffusers is imported.

    Returns whether peft was kept off: False when LoRAs are served, or when diffusers or peft is already imported
    (too late to matter; nothing changes then).
    """
    if serves_loras or "diffusers" in sys.modules or "peft" in sys.modules:
        return False
    # The import system's "not installed" (typeshed types the values as modules): find_spec gives None.
    sys.modules["peft"] = None  # type: ignore[assignment]
    return True


def before_worker_imports(settings: Settings) -> None:
    """What a worker process decides before it imports diffusers (``python -m handlers.worker``, ``sdq worker``):
    peft off unless ``settings`` name a LoRA registry, and no torchvision warnings."""
    keep_peft_off(serves_loras=settings.lora_registry is not None)
    quiet_torchvision_fallback()
