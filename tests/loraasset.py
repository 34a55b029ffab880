"""The project's own LoRA for the built-in ``tiny`` model, built deterministically with peft (no download).

Rank-4 adapters on the UNet's attention projections, their weights drawn from a seed: peft's own initialisation
leaves ``lora_B`` at zero, an adapter that changes nothing, so every LoRA weight is drawn here instead. The same
seed gives the same file, byte for byte (its sha256 is what the registry entry pins).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig, get_peft_model_state_dict

from shared.modelregistry import weight_checksums
from shared.tinymodel import TINY_MODEL
from workflows.generation.models import build_tiny_pipeline

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
WEIGHT_FILE = "pytorch_lora_weights.safetensors"


def build_tiny_lora(folder: Path, seed: int = 1, std: float = 0.5) -> Path:
    """Write a seeded LoRA for ``tiny`` into ``folder`` (diffusers' ``pytorch_lora_weights.safetensors``)."""
    unet = build_tiny_pipeline().unet
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(unet.named_parameters()):
            if ".lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=get_peft_model_state_dict(unet), safe_serialization=True
    )
    return folder


def lora_entry(folder: Path, lora_id: str = "ink", **fields: Any) -> dict[str, Any]:
    """A LoRA registry entry for a folder built by :func:`build_tiny_lora`, with its checksum."""
    return {
        "id": lora_id,
        "source": str(folder),
        "revision": "r1",
        "checksums": weight_checksums(folder),
        "base_models": [TINY_MODEL],
        **fields,
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.loraasset FOLDER [ID]``: build the LoRA into FOLDER and print a registry for it."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("id", nargs="?", default="ink")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    folder = build_tiny_lora(args.folder.resolve(), seed=args.seed)
    print(json.dumps({"loras": [lora_entry(folder, args.id)]}))


if __name__ == "__main__":
    main()
