"""The LoRA registry: the adapters a job may name in ``loras``, each pinned to a revision, with its files' checksums
and the base models it applies to.

A sibling of the model registry (``shared/modelregistry.py``), read once with the settings from the
``lora_registry`` setting (a JSON file path or inline JSON ``{"loras": [...]}``); unset, it is empty and a job may
name no LoRA. Submission checks a job's ``loras`` against it (``shared/contracts.py``); a worker verifies an
adapter's files against its checksums before loading it (``workflows/generation/loras.py``); the images' metadata
record each LoRA's id, revision and scale (``workflows/postprocess.py``).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from shared.modelregistry import HUB_PREFIX, S3_PREFIX, Sha256, SourceKind

LoraId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^\S+$")]
ADAPTER_SUFFIX = ".safetensors"


class LoraEntry(BaseModel):
    """One LoRA a job may apply.

    ``source``: ``hub:<org>/<name>`` (fetched at ``revision``, a commit), ``s3://<bucket>/<prefix>`` (a folder
    copied there) or a local folder (an absolute path). ``checksums``: the sha256 of every safetensors file of the
    folder, by its path inside it; ``weight_name`` is the one loaded (default: the only one).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: LoraId = Field(description="What a job's `loras[].id` names")
    source: str = Field(description="`hub:<org>/<name>`, `s3://<bucket>/<prefix>` or an absolute path")
    revision: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^\S+$")] = Field(
        description="The pinned adapter: a hub commit, or the operator's label of an S3 or local copy"
    )
    checksums: dict[str, Sha256] = Field(
        min_length=1, description="sha256 of each safetensors file of the LoRA's folder, by path"
    )
    weight_name: str | None = Field(default=None, description="The safetensors file loaded (unset: the only one)")
    base_models: tuple[LoraId, ...] = Field(min_length=1, description="The model ids (registry ids) it applies to")

    @property
    def source_kind(self) -> SourceKind:
        if self.source.startswith(HUB_PREFIX):
            return "hub"
        if self.source.startswith(S3_PREFIX):
            return "s3"
        return "local"

    @property
    def location(self) -> str:
        """The source without its scheme: the hub repository, ``bucket/prefix`` or the path."""
        for prefix in (HUB_PREFIX, S3_PREFIX):
            if self.source.startswith(prefix):
                return self.source.removeprefix(prefix)
        return self.source

    @property
    def weight_file(self) -> str:
        """The path, inside the folder, of the safetensors file that holds the adapter."""
        return self.weight_name or next(iter(self.checksums))

    @field_validator("checksums")
    @classmethod
    def _safetensors_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            path = PurePosixPath(name)
            if path.is_absolute() or ".." in path.parts or not path.parts:
                raise ValueError(f"checksum paths are relative to the LoRA's folder, not {name!r}")
            if path.suffix != ADAPTER_SUFFIX:
                raise ValueError(f"a LoRA is loaded from safetensors files only, not {name!r}")
        return value

    @model_validator(mode="after")
    def _source_shape(self) -> LoraEntry:
        kind = self.source_kind
        if kind == "hub" and self.location.count("/") != 1:
            raise ValueError("a hub source is hub:<org>/<name>")
        if kind == "s3" and "/" not in self.location.strip("/"):
            raise ValueError("an S3 source is s3://<bucket>/<prefix>")
        if kind == "local" and not Path(self.source).is_absolute():
            raise ValueError("a local source is an absolute path (or hub:, s3://)")
        if self.weight_name is None and len(self.checksums) != 1:
            raise ValueError("weight_name must name the file to load when checksums list several")
        if self.weight_name is not None and self.weight_name not in self.checksums:
            raise ValueError(f"weight_name {self.weight_name!r} must be one of the files in checksums")
        return self


class LoraRegistry(BaseModel):
    """Every LoRA a deployment allows, by id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    loras: tuple[LoraEntry, ...] = ()

    @field_validator("loras")
    @classmethod
    def _unique_ids(cls, value: tuple[LoraEntry, ...]) -> tuple[LoraEntry, ...]:
        ids = [entry.id for entry in value]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"LoRA ids must be unique: {repeated}")
        return value

    @property
    def ids(self) -> list[str]:
        return [entry.id for entry in self.loras]

    def get(self, lora_id: str) -> LoraEntry | None:
        return next((entry for entry in self.loras if entry.id == lora_id), None)

    @property
    def revisions(self) -> dict[str, str]:
        """Each LoRA's pinned revision, by id."""
        return {entry.id: entry.revision for entry in self.loras}

    def revision(self, lora_id: str) -> str | None:
        """The pinned revision of ``lora_id``, or None for a LoRA outside the registry (retired since)."""
        entry = self.get(lora_id)
        return entry.revision if entry is not None else None


EMPTY_LORA_REGISTRY = LoraRegistry()


def parse_lora_registry(value: str | dict[str, Any] | LoraRegistry) -> LoraRegistry:
    """The registry from inline JSON (``{"loras": [...]}``), the path of a JSON file, or its parsed form.

    Raises ``ValueError`` (pydantic's ``ValidationError`` is one) naming what is wrong, or ``OSError`` when the
    file cannot be read.
    """
    if isinstance(value, LoraRegistry):
        return value
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text if text.startswith("{") else Path(text).expanduser().read_text(encoding="utf-8"))
    return LoraRegistry.model_validate(value)
