"""The LoRA registry: the adapters a job may name in ``loras``, each pinned to a revision, with its files' checksums
and the base models it applies to.

A sibling of the model registry (``shared/modelregistry.py``), read once with the settings from the
``lora_registry`` setting (a JSON file path or inline JSON ``{"loras": [...]}``); unset, it is empty and a job may
name no LoRA. Submission checks a job's ``loras`` against it (``shared/contracts.py``); a worker verifies an
adapter's files against its checksums before loading it (``workflows/generation/loras.py``); the images' metadata
record each LoRA's id, revision and scale (``workflows/postprocess.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from shared.modelregistry import (
    Sha256,
    SourceKind,
    check_relative_paths,
    check_source_shape,
    check_unique_ids,
    read_json_or_file,
    source_kind,
    source_location,
)

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
    retired_revisions: tuple[str, ...] = Field(
        default=(),
        description=(
            "Earlier revisions no worker serves any more: a queued job pinned to one fails `LORA_REVISION_GONE`."
            " A revision neither pinned here nor listed may be newer than this registry (a rolling deployment):"
            " its jobs are left for the workers that have it"
        ),
    )

    @property
    def source_kind(self) -> SourceKind:
        return source_kind(self.source)

    @property
    def location(self) -> str:
        """The source without its scheme: the hub repository, ``bucket/prefix`` or the path."""
        return source_location(self.source)

    @property
    def weight_file(self) -> str:
        """The path, inside the folder, of the safetensors file that holds the adapter."""
        return self.weight_name or next(iter(self.checksums))

    @field_validator("checksums")
    @classmethod
    def _safetensors_paths(cls, value: dict[str, str]) -> dict[str, str]:
        check_relative_paths(value, "the LoRA's folder")
        for name in value:
            if PurePosixPath(name).suffix != ADAPTER_SUFFIX:
                raise ValueError(f"a LoRA is loaded from safetensors files only, not {name!r}")
        return value

    @model_validator(mode="after")
    def _source_shape(self) -> LoraEntry:
        if self.source_kind == "builtin":
            raise ValueError("a LoRA has no built-in source: hub:, s3:// or an absolute path")
        check_source_shape(self.source, "hub:, s3://")
        if self.weight_name is None and len(self.checksums) != 1:
            raise ValueError("weight_name must name the file to load when checksums list several")
        if self.weight_name is not None and self.weight_name not in self.checksums:
            raise ValueError(f"weight_name {self.weight_name!r} must be one of the files in checksums")
        if self.revision in self.retired_revisions:
            raise ValueError(f"revision {self.revision!r} is pinned, so it cannot be retired too")
        return self


class LoraRegistry(BaseModel):
    """Every LoRA a deployment allows, by id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    loras: tuple[LoraEntry, ...] = ()

    @field_validator("loras")
    @classmethod
    def _unique_ids(cls, value: tuple[LoraEntry, ...]) -> tuple[LoraEntry, ...]:
        check_unique_ids([entry.id for entry in value], "LoRA")
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

    def pins(self, lora_ids: Iterable[str]) -> dict[str, str] | None:
        """The pinned revision of each of ``lora_ids``, or None when one is outside the registry."""
        pins: dict[str, str] = {}
        for lora_id in lora_ids:
            entry = self.get(lora_id)
            if entry is None:
                return None
            pins[lora_id] = entry.revision
        return pins

    def retired(self, lora_id: str, revision: str) -> bool:
        """Whether ``revision`` of ``lora_id`` is gone: listed in the entry's ``retired_revisions``. A revision this
        registry does not know is not gone: a newer registry may pin it (a rolling deployment)."""
        entry = self.get(lora_id)
        return entry is not None and revision in entry.retired_revisions


EMPTY_LORA_REGISTRY = LoraRegistry()


def parse_lora_registry(value: str | dict[str, Any] | LoraRegistry) -> LoraRegistry:
    """The registry from inline JSON (``{"loras": [...]}``), the path of a JSON file, or its parsed form.

    Raises ``ValueError`` (pydantic's ``ValidationError`` is one) naming what is wrong, or ``OSError`` when the
    file cannot be read.
    """
    if isinstance(value, LoraRegistry):
        return value
    return LoraRegistry.model_validate(read_json_or_file(value) if isinstance(value, str) else value)
