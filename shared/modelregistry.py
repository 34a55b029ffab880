"""The model registry: the models an operator serves, each pinned to a revision, with its weights' checksums.

A job's ``model`` is an entry's ``id``; the job is pinned at submit to the entry's revision (``Job.model_revision``),
only a worker that loaded that revision generates it, and a revision the entry lists as retired fails its queued
jobs. The registry comes from the ``model_registry`` setting (a JSON file path or inline JSON, read once with the
settings); unset, it holds only the built-in ``tiny`` model. A worker loading an entry verifies every weight file
against its checksum before serving it (``workflows/generation/models.py``); docs/models.md says how an operator
adds, updates and retires a model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from shared.shapesmodel import SHAPES_MODEL, SHAPES_MODEL_CHECKSUMS, SHAPES_MODEL_NOTE, SHAPES_MODEL_REVISION
from shared.tinymodel import TINY_MODEL, TINY_MODEL_NOTE, TINY_MODEL_REVISION

Architecture = Literal["tiny", "sd15", "sd2", "sdxl"]
SourceKind = Literal["builtin", "hub", "s3", "local"]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]

# Files whose bytes are weights: each one in a model folder must have a checksum in the model's entry.
WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".onnx", ".gguf", ".msgpack", ".h5"})
DEFAULT_FLEET = "default"
BUILTIN_PREFIX = "builtin:"
HUB_PREFIX = "hub:"
S3_PREFIX = "s3://"
# The models that come with sdq: tiny is built from a seed, shapes is shipped in the repository (models/shapes).
BUILTIN_MODELS = (TINY_MODEL, SHAPES_MODEL)
# What each built-in model's images are, said wherever they are shown: only tiny's are noise.
BUILTIN_NOTES = {TINY_MODEL: TINY_MODEL_NOTE, SHAPES_MODEL: SHAPES_MODEL_NOTE}


# -- what a model entry and a LoRA entry (shared/loraregistry.py) share: a pinned, checksummed source -----------


def source_kind(source: str) -> SourceKind:
    """Which kind of source ``source`` names, by its scheme (no scheme: a local path)."""
    if source.startswith(BUILTIN_PREFIX):
        return "builtin"
    if source.startswith(HUB_PREFIX):
        return "hub"
    if source.startswith(S3_PREFIX):
        return "s3"
    return "local"


def source_location(source: str) -> str:
    """The source without its scheme: the builtin's name, the hub repository, ``bucket/prefix`` or the path."""
    for prefix in (BUILTIN_PREFIX, HUB_PREFIX, S3_PREFIX):
        if source.startswith(prefix):
            return source.removeprefix(prefix)
    return source


def check_source_shape(source: str, schemes: str) -> None:
    """ValueError unless a hub, S3 or local ``source`` is well formed (``schemes``: those allowed, for the text)."""
    kind, location = source_kind(source), source_location(source)
    if kind == "hub" and location.count("/") != 1:
        raise ValueError("a hub source is hub:<org>/<name>")
    if kind == "s3" and "/" not in location.strip("/"):
        raise ValueError("an S3 source is s3://<bucket>/<prefix>")
    if kind == "local" and not Path(source).is_absolute():
        raise ValueError(f"a local source is an absolute path (or {schemes})")


def check_relative_paths(paths: Iterable[str], folder: str) -> None:
    """ValueError unless every checksum path is relative to ``folder`` and stays inside it."""
    for name in paths:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise ValueError(f"checksum paths are relative to {folder}, not {name!r}")


def check_unique_ids(ids: list[str], what: str) -> None:
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"{what} ids must be unique: {repeated}")


def read_json_or_file(value: str) -> Any:
    """Inline JSON (it starts with ``{``), else the JSON file that ``value`` names."""
    text = value.strip()
    return json.loads(text if text.startswith("{") else Path(text).expanduser().read_text(encoding="utf-8"))


class ModelEntry(BaseModel):
    """One servable model.

    ``source``: ``builtin:tiny``, ``hub:<org>/<name>`` (the hub repository, fetched at ``revision``, a commit),
    ``s3://<bucket>/<prefix>`` (a diffusers folder copied there) or a local diffusers folder (an absolute path).
    ``checksums``: the sha256 of every weight file, by its path inside the folder (``unet/...safetensors``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^\S+$")] = Field(
        description="What a job's `model` names."
    )
    source: str = Field(description="`builtin:tiny`, `hub:<org>/<name>`, `s3://<bucket>/<prefix>` or an absolute path")
    revision: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^\S+$")] = Field(
        description="The pinned weights: a hub commit, or the operator's label of an S3 or local copy"
    )
    checksums: dict[str, Sha256] = Field(default_factory=dict, description="sha256 of each weight file, by path")
    architecture: Architecture
    default_width: int = Field(default=512, ge=8, multiple_of=8)
    default_height: int = Field(default=512, ge=8, multiple_of=8)
    schedulers: tuple[str, ...] | None = Field(
        default=None, min_length=1, description="The schedulers a job for it may name (unset: all of them)"
    )
    fleet: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] = Field(
        default=DEFAULT_FLEET, description="The workers that load it (`SDQ_FLEET`)"
    )
    retired_revisions: tuple[str, ...] = Field(
        default=(),
        description=(
            "Earlier revisions no worker serves any more: a queued job pinned to one fails `MODEL_REVISION_GONE`."
            " A revision neither pinned here nor listed may be newer than this registry (a rolling deployment):"
            " its jobs are left for the workers that have it"
        ),
    )

    @property
    def source_kind(self) -> SourceKind:
        return source_kind(self.source)

    @property
    def location(self) -> str:
        """The source without its scheme: the builtin's name, the hub repository, ``bucket/prefix`` or the path."""
        return source_location(self.source)

    @property
    def note(self) -> str | None:
        """What a built-in model's images are (noise, or the shapes it draws); None for weights of your own."""
        return BUILTIN_NOTES[self.location] if self.source_kind == "builtin" else None

    @property
    def makes_noise(self) -> bool:
        """The built-in tiny model's random weights: its images are noise, and every job of it says so."""
        return self.source_kind == "builtin" and self.location == TINY_MODEL

    @field_validator("schedulers")
    @classmethod
    def _known_schedulers(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return value
        # Imported here: the contracts import the settings, which import this module.
        from shared.contracts import Scheduler

        known = get_args(Scheduler)
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"unknown schedulers {unknown}; expected some of {list(known)}")
        return value

    @field_validator("checksums")
    @classmethod
    def _relative_paths(cls, value: dict[str, str]) -> dict[str, str]:
        check_relative_paths(value, "the model folder")
        return value

    @model_validator(mode="after")
    def _source_shape(self) -> ModelEntry:
        kind = self.source_kind
        if kind == "builtin" and self.location not in BUILTIN_MODELS:
            raise ValueError(f"the only built-in models are {', '.join(BUILTIN_PREFIX + m for m in BUILTIN_MODELS)}")
        check_source_shape(self.source, "builtin:, hub:, s3://")
        # The tiny model's weights are built here from a seed; every other model's are checked before use.
        if kind != "builtin" and not self.checksums:
            raise ValueError("checksums must give the sha256 of every weight file of the model")
        if self.revision in self.retired_revisions:
            raise ValueError(f"revision {self.revision!r} is pinned, so it cannot be retired too")
        return self


class ModelRegistry(BaseModel):
    """Every model a deployment may serve, by id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[ModelEntry, ...] = Field(min_length=1)

    @field_validator("models")
    @classmethod
    def _unique_ids(cls, value: tuple[ModelEntry, ...]) -> tuple[ModelEntry, ...]:
        check_unique_ids([entry.id for entry in value], "model")
        return value

    @property
    def ids(self) -> list[str]:
        return [entry.id for entry in self.models]

    def get(self, model_id: str) -> ModelEntry | None:
        return next((entry for entry in self.models if entry.id == model_id), None)

    def revision(self, model_id: str | None) -> str | None:
        """The pinned revision of ``model_id``, or None for a model outside the registry."""
        entry = self.get(model_id) if model_id is not None else None
        return entry.revision if entry is not None else None

    def retired(self, model_id: str, revision: str | None) -> bool:
        """Whether ``revision`` of ``model_id`` is gone: listed in the entry's ``retired_revisions``. A revision this
        registry does not know is not gone: a newer registry may pin it (a rolling deployment)."""
        entry = self.get(model_id)
        return entry is not None and revision is not None and revision in entry.retired_revisions

    def fleet(self, fleet: str) -> list[ModelEntry]:
        """The entries the workers of ``fleet`` load."""
        return [entry for entry in self.models if entry.fleet == fleet]


BUILTIN_REGISTRY = ModelRegistry(
    models=(
        ModelEntry(
            id=TINY_MODEL,
            source=f"{BUILTIN_PREFIX}{TINY_MODEL}",
            revision=TINY_MODEL_REVISION,
            architecture="tiny",
        ),
        ModelEntry(
            id=SHAPES_MODEL,
            source=f"{BUILTIN_PREFIX}{SHAPES_MODEL}",
            revision=SHAPES_MODEL_REVISION,
            checksums=SHAPES_MODEL_CHECKSUMS,
            architecture="tiny",
            default_width=256,
            default_height=256,
        ),
    )
)


def parse_registry(value: str | dict[str, Any] | ModelRegistry) -> ModelRegistry:
    """The registry from inline JSON (``{"models": [...]}``), the path of a JSON file, or its parsed form.

    Raises ``ValueError`` (pydantic's ``ValidationError`` is one) naming what is wrong, or ``OSError`` when the
    file cannot be read.
    """
    if isinstance(value, ModelRegistry):
        return value
    return ModelRegistry.model_validate(read_json_or_file(value) if isinstance(value, str) else value)


def weight_files(folder: Path) -> Iterable[Path]:
    """The weight files under ``folder`` (by suffix), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def checksum_problems(
    expected: Mapping[str, str], found: Mapping[str, str], *, unlisted: str | None = None
) -> dict[str, str]:
    """What is wrong with the files ``found`` (sha256 by path) against an entry's ``expected`` checksums: each
    listed file missing or with another digest, and, given ``unlisted`` (the text to say), each file found that the
    entry does not list. Empty when they agree."""
    problems: dict[str, str] = {}
    for path, digest in expected.items():
        actual = found.get(path)
        if actual is None:
            problems[path] = "missing"
        elif actual != digest:
            problems[path] = f"sha256 {actual}, the registry says {digest}"
    if unlisted is not None:
        for path in sorted(found.keys() - expected.keys()):
            problems[path] = unlisted
    return problems


def weight_checksums(folder: Path) -> dict[str, str]:
    """sha256 of every weight file under ``folder``, by its path inside it: an entry's ``checksums``."""
    sums: dict[str, str] = {}
    for path in weight_files(folder):
        with path.open("rb") as f:
            sums[path.relative_to(folder).as_posix()] = hashlib.file_digest(f, "sha256").hexdigest()
    return sums
