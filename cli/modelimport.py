"""``sdq admin models import``: a model's weights into the stack's own bucket, with their checksums.

In production the workers fetch weights from the stack's bucket (``models/<id>/<revision>/``), never from a hub
at run time. This command copies a local diffusers folder, or a hub snapshot at a pinned revision (downloaded here,
on the operator's machine), under that prefix, computes the sha256 of every weight file and prints the registry
entry that names the copy: add it to the registry (``SDQ_MODEL_REGISTRY``, docs/worker.md) and roll the workers.
A revision already imported is refused rather than overwritten: a new revision is a new prefix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.modelregistry import HUB_PREFIX, S3_PREFIX, Architecture, ModelEntry, weight_checksums

MODELS_PREFIX = "models/"


class RevisionExists(Exception):
    """The bucket holds this model revision already."""


def snapshot(source: str, revision: str | None) -> tuple[Path, str]:
    """The local folder to copy and the revision to record: a folder as it is (revision: the operator's label),
    or a hub repository downloaded at ``revision`` (a commit; the resolved commit is recorded)."""
    if not source.startswith(HUB_PREFIX):
        folder = Path(source).expanduser().resolve()
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"{folder} is not a diffusers folder (no model_index.json)")
        if not revision:
            raise ValueError("--revision is required for a local folder: the label its copy is pinned as")
        return folder, revision
    return hub_snapshot(source, revision)


def hub_snapshot(source: str, revision: str | None, allow_patterns: list[str] | None = None) -> tuple[Path, str]:
    """A ``hub:<org>/<name>`` repository downloaded at ``revision`` (only ``allow_patterns``, when given), and the
    commit it resolved to (recorded as the entry's revision)."""
    from huggingface_hub import HfApi, snapshot_download

    repo = source.removeprefix(HUB_PREFIX)
    commit = HfApi().model_info(repo, revision=revision).sha or revision or "main"
    return Path(snapshot_download(repo, revision=commit, allow_patterns=allow_patterns)), commit


def refuse_existing(s3: Any, bucket: str, prefix: str) -> None:
    """RevisionExists when ``prefix`` holds files already: a revision is imported once, never overwritten."""
    if s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount", 0):
        raise RevisionExists(f"s3://{bucket}/{prefix} exists: import under a new --revision")


def import_model(
    s3: Any,
    bucket: str,
    *,
    model_id: str,
    folder: Path,
    revision: str,
    architecture: Architecture,
    schedulers: tuple[str, ...] | None = None,
    fleet: str | None = None,
) -> ModelEntry:
    """Upload ``folder`` under ``models/<id>/<revision>/`` and return its registry entry."""
    prefix = f"{MODELS_PREFIX}{model_id}/{revision}/"
    refuse_existing(s3, bucket, prefix)
    checksums = weight_checksums(folder)
    entry = ModelEntry.model_validate(
        {
            "id": model_id,
            "source": f"{S3_PREFIX}{bucket}/{prefix.rstrip('/')}",
            "revision": revision,
            "checksums": checksums,
            "architecture": architecture,
            **({"schedulers": schedulers} if schedulers else {}),
            **({"fleet": fleet} if fleet else {}),
        }
    )
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative.startswith(".") or "/." in relative:
            continue  # the hub cache's lock and metadata files
        s3.upload_file(str(path), bucket, prefix + relative)
    return entry
