"""``sdq admin loras import``: a LoRA's safetensors into the stack's own bucket, with their checksums.

The sibling of ``sdq admin models import`` (``cli/modelimport.py``) for the LoRA registry (docs/models.md#loras):
it copies the safetensors files of a local folder, or of a hub repository at a pinned commit (downloaded here, on
the operator's machine), under ``models/loras/<id>/<revision>/`` (the workers may read the bucket's ``models/``
prefix), and prints the registry entry that names the copy. A revision already imported is refused rather than
overwritten.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.modelimport import MODELS_PREFIX, hub_snapshot, refuse_existing
from shared.loraregistry import ADAPTER_SUFFIX, LoraEntry
from shared.modelregistry import HUB_PREFIX, S3_PREFIX, weight_checksums

if TYPE_CHECKING:
    from cli.admin import Admin

LORAS_PREFIX = f"{MODELS_PREFIX}loras/"


def lora_snapshot(source: str, revision: str | None) -> tuple[Path, str]:
    """The local folder to copy and the revision to record: a folder holding safetensors as it is (revision: the
    operator's label), or a hub repository's safetensors at ``revision`` (a commit; the resolved one is recorded).
    Raises ``FileNotFoundError`` or ``ValueError``."""
    if not source.startswith(HUB_PREFIX):
        folder = Path(source).expanduser().resolve()
        if not any(folder.rglob(f"*{ADAPTER_SUFFIX}")):
            raise FileNotFoundError(f"{folder} holds no {ADAPTER_SUFFIX} file")
        if not revision:
            raise ValueError("--revision is required for a local folder: the label its copy is pinned as")
        return folder, revision
    return hub_snapshot(source, revision, allow_patterns=[f"*{ADAPTER_SUFFIX}"])


def import_lora(
    s3: Any,
    bucket: str,
    *,
    lora_id: str,
    folder: Path,
    revision: str,
    base_models: tuple[str, ...],
    weight_name: str | None = None,
) -> LoraEntry:
    """Upload the safetensors files of ``folder`` under ``models/loras/<id>/<revision>/``; return the registry entry.

    Raises ``RevisionExists`` when that prefix holds files already, ``ValueError`` (pydantic's) for an entry the
    registry would refuse (several files and no ``weight_name``, no base model)."""
    prefix = f"{LORAS_PREFIX}{lora_id}/{revision}/"
    refuse_existing(s3, bucket, prefix)
    checksums = {path: digest for path, digest in weight_checksums(folder).items() if path.endswith(ADAPTER_SUFFIX)}
    entry = LoraEntry.model_validate(
        {
            "id": lora_id,
            "source": f"{S3_PREFIX}{bucket}/{prefix.rstrip('/')}",
            "revision": revision,
            "checksums": checksums,
            "base_models": base_models,
            **({"weight_name": weight_name} if weight_name else {}),
        }
    )
    for relative in sorted(checksums):
        s3.upload_file(str(folder / relative), bucket, prefix + relative)
    return entry


def cmd_loras_import(admin: Admin, args: argparse.Namespace) -> int:
    folder, revision = lora_snapshot(args.source, args.revision)
    entry = import_lora(
        admin.target.client("s3"),
        admin.target.bucket,
        lora_id=args.lora_id,
        folder=folder,
        revision=revision,
        base_models=tuple(args.base_models),
        weight_name=args.weight_name,
    )
    data = entry.model_dump(mode="json", exclude_defaults=True)
    if args.json:
        print(json.dumps(data))
    else:
        # Imported here: cli.admin imports this module for its parser.
        from cli.admin import err, out

        err.print(f"copied to {entry.source}; add this entry to the LoRA registry (SDQ_LORA_REGISTRY):")
        out.print_json(json.dumps(data))
    return 0


def add_loras_parser(admin_subparsers: Any, command: Any) -> None:
    """``loras import`` under ``sdq admin``; ``command`` adds a subcommand with the common flags."""
    loras = admin_subparsers.add_parser("loras", help="copy LoRA weights into the stack's bucket").add_subparsers(
        dest="loras_command", required=True
    )
    p = command(loras, "import", "copy a LoRA into the bucket and print its registry entry", cmd_loras_import)
    p.add_argument("lora_id", help="the id jobs will name in loras")
    p.add_argument("--from", dest="source", required=True, help="a local folder of safetensors, or hub:<org>/<name>")
    p.add_argument("--revision", help="a hub commit (default: the newest); for a folder, the label to pin it as")
    p.add_argument("--base-model", dest="base_models", action="append", required=True, help="a model id it applies to")
    p.add_argument("--weight-name", help="the safetensors file to load, when the folder holds several")
