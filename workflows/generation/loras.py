"""LoRA adapters per job: the registry's LoRAs fetched, verified, loaded into a pipeline and kept while used.

A batch applies one LoRA set (the batch key holds its ids and scales: ``GenerationRequest.lora_set``), so before
each pipeline call the runner asks :class:`LoraAdapters` to make exactly that set active: each LoRA is loaded
once through diffusers' PEFT integration (``load_lora_weights(..., adapter_name=...)``), weighted with
``set_adapters``, and a batch without LoRAs runs with the adapters disabled (the model's own weights, to the
pixel). Loaded adapters stay for later batches, least recently used first out once their memory passes the bound
(``SDQ_LORA_CACHE_MB``); the adapters of the batch at hand are never evicted for it.

Files come from the entry's source at its pinned revision (a local folder, the hub snapshot of the revision, or
the S3 prefix's copy in the model cache) and are checked against the entry's sha256 before loading: a mismatch
raises :class:`LoraChecksumMismatch` and the batch's jobs fail; so do those naming a LoRA this worker's registry
no longer has (:class:`LoraNotServed`) and those whose files are not at their source (:class:`LoraNotFound`). A
fetch that may succeed later (S3 or the hub throttling, erroring or out of reach) raises :class:`LoraUnavailable`,
and the batch goes back to the queue.

Not thread-safe: used from the runner's thread only.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boto3.exceptions import Boto3Error
from botocore.exceptions import BotoCoreError, ClientError
from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import HFValidationError
from safetensors import safe_open

from shared.aws import AwsClients
from shared.contracts import LoraSet
from shared.errors import PermanentError, RetryableError
from shared.loraregistry import LoraEntry, LoraRegistry
from shared.modelregistry import checksum_problems, weight_checksums
from shared.settings import get_settings
from workflows.generation.models import _hub_offline, model_cache_root, quiet_logger

try:  # the transport errors of huggingface_hub's HTTP client: httpx2 from huggingface_hub 2, httpx before
    from httpx2 import TransportError as HubTransportError
except ImportError:  # pragma: no cover - an older huggingface_hub (the device benchmarks' wheels)
    from httpx import TransportError as HubTransportError  # type: ignore[assignment]

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

# diffusers logs a warning for each pipeline component a LoRA file has no weights for (most have none for the
# text encoder); nothing to act on in a worker's log.
_LOADER_LOGGERS = ("diffusers.loaders.lora_base", "diffusers.loaders.peft", "diffusers.loaders.lora_pipeline")


# Speed levers that rewrite the UNet's modules or its forward pass. With fused projections an adapter's to_q, to_k
# and to_v weights are skipped without an error (measured on the tiny model: the LoRA changed nothing); FP8 replaces
# the Linear layers PEFT wraps; compiled graphs, AOTInductor packages and feature reuse were not tried with adapters.
# A LoRA batch on such a model fails rather than being generated without its LoRA and labelled with it.
LEVERS_WITHOUT_LORAS = ("fuse_qkv", "fp8", "compile", "aot_packages", "feature_reuse")


class LorasNotSupported(PermanentError):
    """The model runs with speed levers that LoRA adapters do not work under (``LEVERS_WITHOUT_LORAS``)."""

    def __init__(self, levers: list[str]) -> None:
        super().__init__(f"this worker's speed levers {levers} do not run LoRAs; serve LoRA jobs from workers without")
        self.levers = levers


class LoraNotServed(PermanentError):
    """A batch names a LoRA this worker's registry does not have, or one made for another model."""

    def __init__(self, lora_id: str, model: str, reason: str) -> None:
        super().__init__(f"LoRA {lora_id!r} is not served for model {model!r}: {reason}")
        self.lora_id = lora_id
        self.model = model


class LoraNotFound(PermanentError):
    """A registered LoRA's files could not be fetched from its source."""

    def __init__(self, lora_id: str, reason: str) -> None:
        super().__init__(f"LoRA {lora_id!r} could not be fetched: {reason}")
        self.lora_id = lora_id


class LoraUnavailable(RetryableError):
    """A registered LoRA's files could not be fetched for a passing reason (S3 throttling, a 5xx, a dropped
    connection): its jobs go back to the queue instead of failing (``workflows.generation.batchrun``)."""

    def __init__(self, lora_id: str, reason: str) -> None:
        super().__init__(f"LoRA {lora_id!r} could not be fetched now: {reason}")
        self.lora_id = lora_id


# S3's answers for a key, bucket or permission that is not there: retrying does not help.
_MISSING_STATUSES = frozenset({403, 404})

# The hub's answers that may pass: a timeout, throttling and its own errors.
_HUB_PASSING_STATUSES = frozenset({408, 429})


def _hub_failure_passes(exc: BaseException) -> bool:
    """Whether a hub fetch failed for a reason that may pass: the hub unreachable (a connection, a timeout) or
    answering 408, 429 or 5xx. A missing repository, revision or file, a refused token, an invalid id and
    ``HF_HUB_OFFLINE`` without a cached copy do not pass.

    huggingface_hub turns an unreachable or failing hub into ``LocalEntryNotFoundError`` (no cached copy to fall
    back on) raised from the hub's own error; with no such cause the fetch was offline by configuration."""
    reason = exc.__cause__ if isinstance(exc, LocalEntryNotFoundError) else exc
    if reason is None or isinstance(
        reason, (OfflineModeIsEnabled, EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
    ):
        return False
    if isinstance(reason, HfHubHTTPError):
        status = reason.response.status_code if reason.response is not None else None
        return status is None or status in _HUB_PASSING_STATUSES or status >= 500
    return isinstance(reason, HubTransportError)


class LoraChecksumMismatch(PermanentError):
    """A registered LoRA's files are not those its entry lists: it is not loaded."""

    def __init__(self, lora_id: str, revision: str, problems: dict[str, str]) -> None:
        listed = "; ".join(f"{path}: {problem}" for path, problem in sorted(problems.items()))
        super().__init__(f"LoRA {lora_id!r} revision {revision!r} failed its checksums: {listed}")
        self.lora_id = lora_id
        self.revision = revision
        self.problems = problems


@dataclass(frozen=True)
class LoadedLora:
    """One adapter inside the pipeline: its registry id and revision, its PEFT adapter name and its bytes."""

    id: str
    revision: str
    adapter_name: str
    bytes: int


def _revision_key(entry: LoraEntry) -> str:
    """A short name of an entry's id and revision: its S3 copy's folder, and (prefixed) its adapter's name."""
    return hashlib.sha256(f"{entry.id}\0{entry.revision}".encode()).hexdigest()[:16]


def adapter_name(entry: LoraEntry) -> str:
    """The PEFT adapter name of an entry's revision: a new revision is another adapter, never the old one's."""
    return "sdq_" + _revision_key(entry)


def lora_folder(entry: LoraEntry, cache_root: Path | None = None, *, s3: S3Client | None = None) -> Path:
    """The local folder holding an entry's files: the local path, the hub snapshot of the pinned revision (only
    the listed files), or the S3 copy in the model cache (fetched once per revision). Raises ``LoraNotFound``."""
    kind = entry.source_kind
    if kind == "local":
        folder = Path(entry.location)
        if not folder.is_dir():
            raise LoraNotFound(entry.id, f"no such folder: {folder}")
        return folder
    if kind == "hub":
        try:
            return Path(
                snapshot_download(
                    entry.location,
                    revision=entry.revision,
                    allow_patterns=list(entry.checksums),
                    local_files_only=_hub_offline(),
                )
            )
        except (HFValidationError, OSError, HubTransportError) as exc:  # the hub's errors are OSErrors
            if _hub_failure_passes(exc):
                raise LoraUnavailable(entry.id, f"the hub did not serve revision {entry.revision} now: {exc}") from exc
            raise LoraNotFound(entry.id, f"revision {entry.revision} not fetched from the hub: {exc}") from exc
    # Built here, when an S3 LoRA is first used, unless the caller brought one.
    return _fetch_s3(entry, s3 or AwsClients(get_settings()).s3(), cache_root)


def _fetch_s3(entry: LoraEntry, s3: S3Client, cache_root: Path | None) -> Path:
    """Copy the entry's listed files from its S3 prefix into the model cache, under a temporary name renamed into
    place (a half copy is never used)."""
    key = _revision_key(entry)
    target = (cache_root or model_cache_root()) / "loras" / key
    if all((target / name).is_file() for name in entry.checksums):
        return target
    bucket, _, prefix = entry.location.partition("/")
    prefix = prefix.strip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.fetching-", dir=target.parent))
    try:
        for name in entry.checksums:
            destination = staging / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                s3.download_file(bucket, f"{prefix}/{name}", str(destination))
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status in _MISSING_STATUSES:
                    raise LoraNotFound(entry.id, f"could not fetch {entry.source}/{name}: {exc}") from exc
                raise LoraUnavailable(entry.id, f"{entry.source}/{name}: {exc}") from exc
            except (BotoCoreError, Boto3Error) as exc:  # a connection, or a body read that kept failing (s3transfer)
                raise LoraUnavailable(entry.id, f"{entry.source}/{name}: {exc}") from exc
        # A complete copy is never removed: another worker sharing the cache may be loading it. Renaming onto a
        # folder fails unless it is empty, so only a leftover partial one (no longer made, but perhaps on an old
        # volume) is cleared first.
        try:
            staging.rename(target)
        except OSError:
            if not all((target / name).is_file() for name in entry.checksums):
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def verify_lora(entry: LoraEntry, folder: Path) -> None:
    """Check each file ``entry.checksums`` lists against its sha256; raises ``LoraChecksumMismatch`` (logged)."""
    problems = checksum_problems(entry.checksums, weight_checksums(folder))
    if problems:
        error = LoraChecksumMismatch(entry.id, entry.revision, problems)
        logger.error("refusing to load LoRA %s: %s", entry.id, error)
        raise error


class LoraAdapters:
    """The LoRAs loaded into one pipeline (of the model ``model_id``), least recently used first out past
    ``max_bytes``."""

    def __init__(
        self,
        pipeline: Any,
        model_id: str,
        registry: LoraRegistry,
        *,
        max_bytes: int,
        cache_root: Path | None = None,
        s3: S3Client | None = None,
    ) -> None:
        self._pipe = pipeline
        self._model = model_id
        self._registry = registry
        self._max_bytes = max_bytes
        self._cache_root = cache_root
        self._s3 = s3
        self._loaded: OrderedDict[str, LoadedLora] = OrderedDict()  # by LoRA id, least recently used first
        self.loads = 0
        self.evictions = 0

    @property
    def registry(self) -> LoraRegistry:
        """The LoRAs this pipeline may apply, each at its pinned revision."""
        return self._registry

    @property
    def loaded(self) -> list[LoadedLora]:
        """The adapters in the pipeline, least recently used first."""
        return list(self._loaded.values())

    @property
    def bytes(self) -> int:
        return sum(lora.bytes for lora in self._loaded.values())

    def activate(self, loras: LoraSet, levers: Sequence[str] = ()) -> None:
        """Make exactly ``loras`` (id, scale) active for the next pipeline call; none: the model's own weights.
        ``levers``: the speed levers applied to the model.

        Loads what is missing and evicts least recently used adapters outside ``loras`` past the memory bound.
        Raises ``LorasNotSupported`` (a lever of ``LEVERS_WITHOUT_LORAS``), ``LoraNotServed``, ``LoraNotFound`` or
        ``LoraChecksumMismatch``; the pipeline is then left with its adapters disabled.
        """
        if not loras:
            self._disable()
            return
        blocking = [lever for lever in levers if lever in LEVERS_WITHOUT_LORAS]
        if blocking:
            self._disable()
            raise LorasNotSupported(blocking)
        try:
            active = [self._ensure(lora_id) for lora_id, _scale in loras]
        except Exception:
            self._disable()
            raise
        self._evict(keep={lora.id for lora in active})
        # set_adapters alone does not undo an earlier disable_lora.
        self._pipe.enable_lora()
        self._pipe.set_adapters([lora.adapter_name for lora in active], [scale for _id, scale in loras])

    def _disable(self) -> None:
        if self._loaded:
            self._pipe.disable_lora()

    def _ensure(self, lora_id: str) -> LoadedLora:
        entry = self._registry.get(lora_id)
        if entry is None:
            raise LoraNotServed(lora_id, self._model, "not in this worker's LoRA registry (retired?)")
        if self._model not in entry.base_models:
            raise LoraNotServed(lora_id, self._model, f"it applies to {', '.join(entry.base_models)}")
        loaded = self._loaded.get(lora_id)
        if loaded is not None and loaded.revision == entry.revision:
            self._loaded.move_to_end(lora_id)
            return loaded
        if loaded is not None:
            self._unload(loaded)
        folder = lora_folder(entry, self._cache_root, s3=self._s3)
        verify_lora(entry, folder)
        name = adapter_name(entry)
        with (
            quiet_logger(_LOADER_LOGGERS[0]),
            quiet_logger(_LOADER_LOGGERS[1]),
            quiet_logger(_LOADER_LOGGERS[2]),
            warnings.catch_warnings(),
        ):
            # peft warns on every adapter after the first that a model holding several is unusual: here it is the
            # design (one adapter per LoRA, the batch's set chosen with set_adapters).
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
            self._pipe.load_lora_weights(str(folder), weight_name=entry.weight_file, adapter_name=name)
        elements, size = _adapter_size(self._pipe, name)
        expected = _file_elements(folder / entry.weight_file)
        if elements < expected:
            # diffusers loads the weights that match a layer and only logs the rest: the LoRA would run in part.
            self._pipe.delete_adapters(name)
            raise LoraNotServed(lora_id, self._model, f"only {elements} of its {expected} weights match its layers")
        loaded = LoadedLora(entry.id, entry.revision, name, size)
        self._loaded[lora_id] = loaded
        self.loads += 1
        logger.info(
            "loaded LoRA %s (revision %s, %d bytes) into %s", entry.id, entry.revision, loaded.bytes, self._model
        )
        return loaded

    def _evict(self, keep: set[str]) -> None:
        for lora_id in list(self._loaded):
            if self.bytes <= self._max_bytes:
                return
            if lora_id not in keep:
                self._unload(self._loaded[lora_id])
                self.evictions += 1

    def _unload(self, lora: LoadedLora) -> None:
        self._pipe.delete_adapters(lora.adapter_name)
        del self._loaded[lora.id]
        logger.info("unloaded LoRA %s (revision %s) from %s", lora.id, lora.revision, self._model)


def _adapter_size(pipeline: Any, name: str) -> tuple[int, int]:
    """One adapter's weights across the pipeline's components (PEFT names them ``.<name>.``): elements, bytes."""
    marker = f".{name}."
    elements = size = 0
    for component in pipeline.components.values():
        named = getattr(component, "named_parameters", None)
        if named is None:
            continue
        for n, p in named():
            if marker in n:
                elements += p.numel()
                size += p.numel() * p.element_size()
    return elements, size


def _file_elements(path: Path) -> int:
    """The weights a LoRA file holds, in elements; scalars (alphas, ranks) become settings, not weights."""
    with safe_open(str(path), framework="pt") as f:
        shapes = [f.get_slice(key).get_shape() for key in f.keys()]  # noqa: SIM118 (a safetensors handle)
    return sum(n for n in (math.prod(shape) for shape in shapes) if n > 1)
