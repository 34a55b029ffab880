"""Compile artefacts shared through the stack's bucket: a worker on a new instance (an empty disk) fetches what
another worker compiled instead of compiling for minutes (issue 24, "start from zero").

Two folders are shared, each under its own name: ``cache`` (the inductor cache folder, ``SDQ_COMPILE_CACHE_DIR``:
FX graphs, AOTAutograd entries, Triton kernels, the mega-cache file) and ``precompile`` (the precompiled forwards,
``SDQ_PRECOMPILE_DIR``). Their files live at ``<SDQ_COMPILE_ARTEFACTS_PREFIX><key>/<folder>/<path>``, where the key
hashes what makes them valid (:func:`environment_facts`): the Python, torch, CUDA and diffusers versions and every
installed package's, the GPU, the host CPU, the models with their pinned revisions, the precision and the levers
that change the compiled code.
Inside a key each file is still checked by what reads it (inductor's cache keys, the fingerprint in a precompiled
artefact's name), so a file that no longer fits costs a compile, never a wrong image.

- At start, before the levers are applied: :meth:`CompileArtefactStore.fetch` copies every file of the key that
  the local folders lack (several at a time; each written under a temporary name and renamed into place).
- After the model is loaded (the warm-up compiled every bucket), every :data:`UPLOAD_INTERVAL_S` (a bucket first
  compiled by a batch) and at stop: :meth:`CompileArtefactStore.upload_new` puts each local file the key lacks
  with ``If-None-Match: *``, so a file another worker wrote first is kept, never replaced.

S3 failures (a missing grant, an unreachable bucket, a refused put) are logged and counted
(:data:`FAILED_METRIC`) and never stop the worker: it compiles as it would without the store.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from botocore.exceptions import BotoCoreError, ClientError

from shared.observability import emit_metrics
from shared.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = Logger(service="sdq-worker")

# Bump when the layout under a key changes: older keys are then never read.
STORE_FORMAT = 1
# How often a running worker looks for files compiled since the last upload (a bucket's first batch).
UPLOAD_INTERVAL_S = 60.0
# Files fetched or uploaded at once: most are small (kernels, graphs), where each request's latency dominates.
TRANSFER_THREADS = 16
# Options that say where artefacts are kept or when shapes compile, not what is compiled: left out of the key so
# that workers differing only in them share one.
_NOT_IN_KEY = frozenset({"cache_dir", "mega_cache", "aot_dir", "precompile_dir", "warmup", "prompt_cache_size"})
# A put that lost the race: another worker wrote the same key first (412), or was writing it (409).
_TAKEN = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})

FETCHED_METRIC = "CompileArtefactsFetchedBytes"
UPLOADED_METRIC = "CompileArtefactsUploadedBytes"
MISSED_METRIC = "CompileArtefactsMissed"  # a start that found nothing to fetch: it compiles
FAILED_METRIC = "CompileArtefactsFailed"  # S3 refused or failed a fetch or an upload


def environment_facts(settings: Settings, models: Sequence[str]) -> dict[str, Any]:
    """What the compiled artefacts of a worker loading ``models`` with ``settings`` depend on, read before the
    models load (the precompiled artefacts' own fingerprints add the weights and the module structure)."""
    import torch

    from workflows.generation import aotpackage
    from workflows.generation.acceleration import options_from_settings
    from workflows.generation.acceleration.precompile import PRECOMPILE_FORMAT

    cuda = torch.cuda.is_available()
    levers = options_from_settings(settings.acceleration).to_dict()
    registry = settings.registry
    return {
        "format": STORE_FORMAT,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "diffusers": metadata.version("diffusers"),
        # Every installed distribution: an artefact can refer to any package present where it was built (one
        # built beside peft failed to load without it, benchmarks/results/2026-12-06-h100), so one image, one key.
        "packages": installed_packages(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "host": aotpackage.host_cpu(),  # inductor builds host code for this CPU (-march=native)
        "models": {m: getattr(registry.get(m), "revision", None) for m in sorted(models)},
        "precision": settings.acceleration.precision,
        "levers": {k: v for k, v in sorted(levers.items()) if k not in _NOT_IN_KEY},
        "artefact_formats": {"precompile": PRECOMPILE_FORMAT, "package": aotpackage.PACKAGE_FORMAT},
    }


def installed_packages() -> str:
    """A digest of every installed distribution's name and version (what a worker image holds)."""
    names = sorted({f"{d.metadata['Name']}=={d.version}".lower() for d in metadata.distributions()})
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def artefact_key(facts: Mapping[str, Any]) -> str:
    """The facts hashed: the folder of the bucket prefix that holds their artefacts (16 hex digits)."""
    text = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def shared_folders(settings: Settings) -> dict[str, Path]:
    """The local folders a worker shares, by their name in the store: the compile cache folder and the
    precompiled forwards' folder, those that are set. Empty when compile is off or the prefix is empty."""
    accel = settings.acceleration
    if not (accel.compile and settings.compile_artefacts_prefix):
        return {}
    folders = {"cache": accel.cache_dir, "precompile": accel.precompile_dir}
    return {name: Path(folder) for name, folder in folders.items() if folder}


@dataclass
class TransferReport:
    """One fetch or upload: files and bytes moved, files left as they were (already there), and the error that
    ended it early (None: it finished)."""

    files: int = 0
    bytes: int = 0
    kept: int = 0
    error: str | None = None


def _skipped(relative: PurePosixPath) -> bool:
    """Files being written (dot-named staging files, Triton's ``tmp.*`` folders) and lock files are not artefacts."""
    return any(part.startswith(".") or part.startswith("tmp.") for part in relative.parts) or (
        relative.parts[0] == "locks" or relative.suffix == ".lock"
    )


class CompileArtefactStore:
    """A worker's compile artefacts in ``s3://bucket/<prefix><key>/``; see the module docstring.

    ``folders`` maps each shared folder's name in the store (``cache``, ``precompile``) to its local path.
    """

    def __init__(self, s3: S3Client, bucket: str, prefix: str, key: str, folders: Mapping[str, Path]) -> None:
        self._s3 = s3
        self._bucket = bucket
        self.root = f"{prefix.rstrip('/')}/{key}/"
        self._folders = dict(folders)
        self._stored: set[str] = set()  # keys under root known to exist (listed, fetched, written or taken)
        self._lock = threading.Lock()  # one upload round at a time (the interval thread and the stop)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- fetching ----------------------------------------------------------------------------------------------

    def fetch(self) -> TransferReport:
        """Copy every file of the key that the local folders lack; never raises (a failure is logged, counted and
        reported, and the worker compiles what is missing)."""
        report = TransferReport()
        try:
            listed = self._list()
            wanted = [(key, path) for key, path in listed if not path.exists()]
            report.kept = len(listed) - len(wanted)
            with ThreadPoolExecutor(TRANSFER_THREADS, thread_name_prefix="sdq-artefacts") as pool:
                for size in pool.map(lambda item: self._download(*item), wanted):
                    report.files += 1
                    report.bytes += size
        except (ClientError, BotoCoreError, OSError) as exc:
            report.error = f"{type(exc).__name__}: {exc}"
        self._emit_fetch(report)
        return report

    def _list(self) -> list[tuple[str, Path]]:
        """Every stored file of the key with its local path (records them as stored)."""
        found: list[tuple[str, Path]] = []
        pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=self.root)
        for page in pages:
            for obj in page.get("Contents", []):
                key = obj["Key"]
                self._stored.add(key)
                path = self._local_path(key)
                if path is not None:
                    found.append((key, path))
        return found

    def _local_path(self, key: str) -> Path | None:
        """Where a stored file goes, or None for a key outside the shared folders or one that would leave them."""
        relative = PurePosixPath(key[len(self.root) :])
        if len(relative.parts) < 2 or relative.parts[0] not in self._folders or ".." in relative.parts:
            return None
        inner = PurePosixPath(*relative.parts[1:])
        if inner.is_absolute() or _skipped(inner):
            return None
        return self._folders[relative.parts[0]].joinpath(*inner.parts)

    def _download(self, key: str, path: Path) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{uuid.uuid4().hex}.{path.name}")
        try:
            body = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"]
            with staging.open("wb") as out:
                shutil.copyfileobj(body, out, 1 << 20)
            size = staging.stat().st_size
            staging.replace(path)  # atomic: a reader sees the whole file or none
        finally:
            staging.unlink(missing_ok=True)
        return size

    # -- uploading ---------------------------------------------------------------------------------------------

    def upload_new(self) -> TransferReport:
        """Put every local file the key lacks, each only if no worker wrote it first (``If-None-Match: *``); never
        raises. Returns what was uploaded and how many were found written by another worker meanwhile."""
        report = TransferReport()
        with self._lock:
            try:
                new = [(key, path) for key, path in self._local_files() if key not in self._stored]
                with ThreadPoolExecutor(TRANSFER_THREADS, thread_name_prefix="sdq-artefacts") as pool:
                    for key, size in pool.map(lambda item: self._upload(*item), new):
                        self._stored.add(key)
                        if size is None:
                            report.kept += 1
                        else:
                            report.files += 1
                            report.bytes += size
            except (ClientError, BotoCoreError, OSError) as exc:
                report.error = f"{type(exc).__name__}: {exc}"
        self._emit_upload(report)
        return report

    def _local_files(self) -> Iterator[tuple[str, Path]]:
        for name, folder in self._folders.items():
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                relative = PurePosixPath(path.relative_to(folder).as_posix())
                if path.is_file() and not path.is_symlink() and not _skipped(relative):
                    yield f"{self.root}{name}/{relative}", path

    def _upload(self, key: str, path: Path) -> tuple[str, int | None]:
        """Put one file unless the key exists: (key, its size), or (key, None) when another worker wrote it."""
        try:
            with path.open("rb") as body:
                size = path.stat().st_size
                self._s3.put_object(Bucket=self._bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _TAKEN:
                return key, None
            raise
        return key, size

    # -- the uploads of a running worker -----------------------------------------------------------------------

    def start_uploads(self, interval_s: float = UPLOAD_INTERVAL_S) -> None:
        """Upload what is new now (the load's warm-up), then every ``interval_s`` on a daemon thread until
        :meth:`stop`."""

        def run() -> None:
            while True:
                self.upload_new()
                if self._stop.wait(interval_s):
                    return

        self._thread = threading.Thread(target=run, name="sdq-artefact-uploads", daemon=True)
        self._thread.start()

    def stop(self) -> TransferReport:
        """Stop the interval uploads and upload what is new once more (a warm stop's last compile)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.upload_new()

    # -- what it did, for operators ----------------------------------------------------------------------------

    def _emit_fetch(self, report: TransferReport) -> None:
        metrics = EphemeralMetrics(namespace="sdq", service="worker")
        metrics.add_metric(name=FETCHED_METRIC, unit=MetricUnit.Bytes, value=report.bytes)
        if report.error is not None:
            logger.warning("compile artefacts not fetched: compiling instead", root=self.root, error=report.error)
            metrics.add_metric(name=FAILED_METRIC, unit=MetricUnit.Count, value=1)
        if report.files + report.kept == 0:
            metrics.add_metric(name=MISSED_METRIC, unit=MetricUnit.Count, value=1)
            if report.error is None:
                logger.info("no compile artefacts stored for this key yet: compiling", root=self.root)
        else:
            logger.info("compile artefacts fetched", root=self.root, files=report.files, bytes=report.bytes)
        emit_metrics(metrics)

    def _emit_upload(self, report: TransferReport) -> None:
        if report.files == 0 and report.error is None:
            return  # nothing new: no line every interval of an idle worker
        metrics = EphemeralMetrics(namespace="sdq", service="worker")
        metrics.add_metric(name=UPLOADED_METRIC, unit=MetricUnit.Bytes, value=report.bytes)
        if report.error is not None:
            logger.warning("compile artefacts not uploaded", root=self.root, error=report.error)
            metrics.add_metric(name=FAILED_METRIC, unit=MetricUnit.Count, value=1)
        else:
            logger.info("compile artefacts uploaded", root=self.root, files=report.files, bytes=report.bytes)
        emit_metrics(metrics)


def store_for(settings: Settings, s3: S3Client, models: Sequence[str]) -> CompileArtefactStore | None:
    """The store of a worker loading ``models``, or None when it shares nothing (compile off, no folder set, or
    an empty ``compile_artefacts_prefix``)."""
    folders = shared_folders(settings)
    if not folders:
        return None
    key = artefact_key(environment_facts(settings, models))
    return CompileArtefactStore(s3, settings.bucket, settings.compile_artefacts_prefix, key, folders)
