"""Ahead-of-time compiled UNet and VAE decoder (``torch.export`` + AOTInductor): a worker start without Dynamo.

With ``compile`` and an ``aot_dir``, the UNet's and the VAE decoder's forward become an :class:`AotForward`.
For each compiled shape (a bucket at a compiled resolution) it runs a ``.pt2`` package from ``aot_dir``: loaded
when it is there, else exported and compiled once (at warm-up, or on the first batch of that shape) and saved
for the next start. A start from packages loads shared libraries; it traces nothing, where ``torch.compile``
re-traces the whole UNet with Dynamo at every start even with a warm cache (issue 8: 9.5 to 18 s).

The packages keep the large weights out (``package_constants_in_so`` off): after loading, the package is pointed
at the live module's own tensors (``load_constants(..., user_managed=True)``), so no weight is held twice. Inductor
still bakes some small constants (a bias it folds) into the code, so a package belongs to the weights it was built
from: a package's file name carries a fingerprint of everything its code depends on (torch and diffusers
versions, device, dtype, the module's config, a checksum of its weights, the levers that change the graph, the
input shapes); anything else gets a new package. Shapes that are not compiled run the eager forward.

A package is first loaded in a child process, once per package file (a ``.check`` marker beside it records the
outcome for that file's size and modification time), because torch's package loader can crash the whole
process: on the H200 test machine (torch 2.11.0+cu130) every CUDA package load segfaulted inside the loader, a
two-layer model's too (``benchmarks/scripts/aot-minimal-h200.sh``, summary in
``benchmarks/results/2026-11-29-h200/``). A loader crash like that one leaves the shape eager, reported under
``aot_packages.failed``, instead of taking the worker down. (The child loads the package only: a crash that needs
the parent's state, or happens in ``load_constants`` or the first call, is not caught.)

CUDA graphs are not used on this path (the package launches its kernels from C++; at batch 1 graphs saved about
40 ms a call). Feature reuse keeps its own two ``torch.compile`` graphs (the accelerator reports the choice).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal

import torch

logger = logging.getLogger(__name__)

Kind = Literal["unet", "decoder"]
# Bump when this module's export wrappers or call convention change: old packages then stop matching.
PACKAGE_FORMAT = 1
_SDXL_ADDED = ("text_embeds", "time_ids")  # the UNet's added conditioning in SDXL pipelines, in package order
# What the child process runs to see whether a package loads at all (argv: the package, the device index): the
# loader ``load_runner`` uses.
_LOADER_CHECK = (
    "import sys, torch; torch._C._aoti.AOTIModelPackageLoader(sys.argv[1], 'model', False, 1, int(sys.argv[2]))"
)
LOADER_CHECK_TIMEOUT_S = 600.0


class PackageLoaderError(RuntimeError):
    """torch's loader failed on a package in a child process (or crashed it): the package is not loaded here."""

    @classmethod
    def from_child(cls, path: Path, returncode: int | None, stderr: str | bytes | None) -> PackageLoaderError:
        if returncode is None:
            how = f"did not finish in {LOADER_CHECK_TIMEOUT_S:.0f} s"
        elif returncode < 0:
            try:
                how = f"crashed ({signal.Signals(-returncode).name})"
            except ValueError:
                how = f"crashed (signal {-returncode})"
        else:
            how = f"exited with status {returncode}"
        text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr or ""
        tail = " | ".join(line.strip() for line in text.strip().splitlines()[-3:])
        return cls(f"loading {path.name} in a child process {how}: {tail[-600:]}".rstrip(": "))

    @classmethod
    def recorded(cls, path: Path, message: str) -> PackageLoaderError:
        """The failure a marker recorded for this very file at an earlier start (no child process this time)."""
        return cls(f"{message} (recorded at an earlier start; delete {path.name}.check to try again)")


class _UNetCore(torch.nn.Module):
    """The UNet as the SD pipelines call it: (sample, float timestep, text states[, SDXL's pooled text embeddings
    and time ids]) -> noise prediction."""

    def __init__(self, unet: Any, forward: Callable[..., Any]) -> None:
        super().__init__()
        self.unet = unet
        self._forward = forward

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, hidden: torch.Tensor, *added: torch.Tensor
    ) -> torch.Tensor:
        added_cond = dict(zip(_SDXL_ADDED, added, strict=True)) if added else None
        out: torch.Tensor = self._forward(
            sample, timestep, encoder_hidden_states=hidden, added_cond_kwargs=added_cond, return_dict=False
        )[0]
        return out


class _DecoderCore(torch.nn.Module):
    def __init__(self, decoder: Any, forward: Callable[..., Any]) -> None:
        super().__init__()
        self.decoder = decoder
        self._forward = forward

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self._forward(sample)
        return out


def fingerprint(module: Any, kind: Kind, levers: dict[str, Any]) -> str:
    """What a package's code depends on besides its input shapes, hashed (16 hex digits)."""
    import diffusers

    from workflows.generation import fp8

    param = next(module.parameters())
    device = param.device
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    config = getattr(module, "config", None)
    data = {
        "format": PACKAGE_FORMAT,
        "kind": kind,
        # Inductor builds the package's C++ for this host's CPU (-march=native): another CPU needs its own.
        "host": host_cpu(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "device": device_name,
        "dtype": str(param.dtype),
        "config": {k: v for k, v in dict(config or {}).items() if not k.startswith("_")},
        # Every submodule's class and settings (layer sizes, norm groups, eps, ...), and the attention
        # processors, which are not modules.
        "structure": hashlib.sha256(repr(module).encode()).hexdigest(),
        "processors": sorted({type(p).__qualname__ for p in getattr(module, "attn_processors", {}).values()}),
        # Our own code traced into the package: the FP8 products.
        "fp8_code": hashlib.sha256(inspect.getsource(fp8).encode()).hexdigest()[:16],
        "channels_last": param.dim() == 4 and param.is_contiguous(memory_format=torch.channels_last),
        "levers": levers,
    }
    data["weights"] = weights_checksum(module)
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.cache
def host_cpu() -> list[str]:
    """This host's architecture and CPU feature flags, what ``-march=native`` builds for. Read from
    ``/proc/cpuinfo`` rather than inductor's ``pick_vec_isa``, which compiles and runs a test program per vector
    ISA: 28 s of a warm start on one H100 machine (2026-12-06), for a fingerprint computed at every start."""
    import platform

    flags = ""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(("flags", "Features")):  # x86 / Arm
                flags = " ".join(sorted(line.split(":", 1)[-1].split()))
                break
    return [platform.machine(), hashlib.sha256(flags.encode()).hexdigest()[:16] if flags else platform.processor()]


def weights_checksum(module: Any) -> str:
    """A cheap checksum of every parameter and buffer (sum and absolute sum, reduced on their own device)."""
    tensors = [t for _, t in sorted({**dict(module.named_parameters()), **dict(module.named_buffers())}.items())]
    with torch.no_grad():
        sums = torch.stack([torch.stack([t.double().sum(), t.double().abs().sum()]) for t in tensors])
    return hashlib.sha256(sums.cpu().numpy().tobytes()).hexdigest()[:16]


def core_inputs(
    kind: Kind, sample: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[torch.Tensor, ...] | None:
    """The core module's tensors for one UNet or decoder call (``_UNetCore``/``_DecoderCore`` order), or None
    when the call needs more than the core takes."""
    if kind == "decoder":
        extra = {k: v for k, v in kwargs.items() if v is not None}
        return (sample.contiguous(),) if not args and not extra else None
    timestep = args[0] if args else kwargs.get("timestep")
    hidden = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
    added_cond = kwargs.get("added_cond_kwargs") or {}
    taken = ("timestep", "encoder_hidden_states", "added_cond_kwargs", "return_dict")
    others = {k: v for k, v in kwargs.items() if k not in taken}
    if len(args) > 2 or any(v is not None for v in others.values()) or not isinstance(hidden, torch.Tensor):
        return None
    if not isinstance(timestep, torch.Tensor) or timestep.dim() != 0:
        return None
    added: tuple[torch.Tensor, ...] = ()
    if added_cond:
        if set(added_cond) != set(_SDXL_ADDED) or not all(isinstance(v, torch.Tensor) for v in added_cond.values()):
            return None
        added = tuple(added_cond[name] for name in _SDXL_ADDED)
    inputs = (sample, timestep.to(device=sample.device, dtype=torch.float32), hidden, *added)
    # The package's kernels assume the strides they were built with (it does not check them): contiguous.
    return tuple(t.contiguous() for t in inputs)


def unet_output(out: torch.Tensor, kwargs: dict[str, Any]) -> Any:
    """The core's noise prediction as the UNet returns it (``return_dict`` or a tuple)."""
    if kwargs.get("return_dict", True):
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)
    return (out,)


class AotForward:
    """A module's ``forward`` that runs AOTInductor packages for the compiled shapes and the eager forward else.

    ``active()`` says whether the current call takes the compiled path (the accelerator's bucket and
    resolution decision); ``stats`` counts packages loaded and built, with their seconds.
    """

    def __init__(
        self,
        module: Any,
        kind: Kind,
        folder: Path,
        levers: dict[str, Any],
        active: Callable[[], bool],
        stats: dict[str, Any],
    ) -> None:
        self.kind = kind
        self._eager = module.forward
        self._core: torch.nn.Module = (
            _UNetCore(module, self._eager) if kind == "unet" else _DecoderCore(module, self._eager)
        )
        self._folder = folder
        self._fingerprint = fingerprint(module, kind, levers)
        self._active = active
        self._runners: dict[tuple[tuple[int, ...], ...], Any] = {}
        self.stats = stats

    def __call__(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        inputs = self._package_inputs(sample, args, kwargs)
        if inputs is None or not self._active() or torch.is_grad_enabled():
            return self._eager(sample, *args, **kwargs)
        runner = self._runner(inputs)
        if runner is None:  # that shape's package could not be built or loaded: eager, as uncompiled sizes
            return self._eager(sample, *args, **kwargs)
        out = runner(*inputs)
        return out if self.kind == "decoder" else unet_output(out, kwargs)

    def _package_inputs(
        self, sample: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, ...] | None:
        return core_inputs(self.kind, sample, args, kwargs)

    def package_path(self, inputs: tuple[torch.Tensor, ...]) -> Path:
        shapes = "-".join("x".join(str(d) for d in t.shape) or "scalar" for t in inputs)
        return self._folder / f"{self.kind}-{self._fingerprint}-{shapes}.pt2"

    def _runner(self, inputs: tuple[torch.Tensor, ...]) -> Any:
        """The loaded package for these inputs' shapes (built first if absent); None if that failed, once."""
        key = tuple(tuple(t.shape) for t in inputs)
        if key not in self._runners:
            path = self.package_path(inputs)
            try:
                if not path.is_file():
                    self._build(inputs, path)
                self._runners[key] = self._load(path, inputs[0].device)
            except Exception as exc:  # any export/compile/load failure: this shape runs eager from now on
                logger.exception("AOTInductor package %s failed; that shape runs eager", path.name)
                self.stats["failed"][path.name] = f"{type(exc).__name__}: {exc}"[:500]
                self._runners[key] = None
        return self._runners[key]

    def _build(self, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
        started = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{uuid.uuid4().hex}.{path.name}")  # ends in .pt2, as the packager requires
        with _torch_notices_quiet():
            program = torch.export.export(self._core, inputs, strict=False)
            torch._inductor.aoti_compile_and_package(
                program,
                package_path=str(staging),
                inductor_configs={"aot_inductor.package_constants_in_so": False},
            )
        staging.replace(path)  # atomic: a concurrent start sees the whole package or none
        seconds = time.perf_counter() - started
        self.stats["built"] += 1
        self.stats["build_s"] += seconds
        logger.info("built AOTInductor package %s in %.1f s", path.name, seconds)

    def _load(self, path: Path, device: torch.device) -> Any:
        index = device.index if device.type == "cuda" and device.index is not None else -1
        self._check_loads_in_child(path, index)
        started = time.perf_counter()
        with _torch_notices_quiet():
            runner = load_runner(path, index)
        state = {**dict(self._core.named_parameters()), **dict(self._core.named_buffers())}
        missing = [name for name in runner.get_constant_fqns() if name not in state]
        if missing:
            raise LookupError(f"the package wants constants the module does not have: {missing[:5]}")
        # Shares the live tensors' storage: nothing may replace them (``.to``, fusing) after this.
        runner.load_constants(
            {name: state[name] for name in runner.get_constant_fqns()}, check_full_update=True, user_managed=True
        )
        self.stats["loaded"] += 1
        self.stats["load_s"] += time.perf_counter() - started
        return runner

    def _check_loads_in_child(self, path: Path, index: int) -> None:
        """Load the package once in a child process first, unless a marker records the outcome for this very
        file (size and modification time): a loader crash then costs that shape its package, not the worker
        its life, and a failure is not retried at every start."""
        marker = path.with_name(f"{path.name}.check")
        stat = path.stat()
        identity = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        try:
            recorded = json.loads(marker.read_text())
        except (OSError, ValueError):
            recorded = None
        if isinstance(recorded, dict) and recorded.get("file") == identity:
            if recorded.get("loads"):
                return
            raise PackageLoaderError.recorded(path, str(recorded.get("error")))
        started = time.perf_counter()
        command = [sys.executable, "-c", _LOADER_CHECK, str(path), str(index)]
        error: PackageLoaderError | None = None
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=LOADER_CHECK_TIMEOUT_S, check=False)
            if done.returncode != 0:
                error = PackageLoaderError.from_child(path, done.returncode, done.stderr)
        except subprocess.TimeoutExpired as exc:
            error = PackageLoaderError.from_child(path, None, exc.stderr)
        finally:
            self.stats["checked"] += 1
            self.stats["check_s"] += time.perf_counter() - started
        outcome = {"file": identity, "loads": error is None, "error": None if error is None else str(error)}
        try:
            staging = marker.with_name(f".{uuid.uuid4().hex}.{marker.name}")
            staging.write_text(json.dumps(outcome))
            staging.replace(marker)
        except OSError as exc:  # a read-only package folder: the check runs again at the next start
            logger.warning("could not record the load check of %s: %s", path.name, exc)
        if error is not None:
            raise error


class PackageRunner:
    """A loaded package, called with the core module's input tensors in order; returns its one output tensor.

    Loaded by torch's C++ loader itself. ``torch._inductor.aoti_load_package`` first compares the CPU the package
    was built for with this host's through inductor's vector-ISA probe, which compiles and runs a test program per
    ISA (28 s of a warm start on one H100 machine, 2026-12-06); the package's fingerprint names the host's CPU
    already (:func:`host_cpu`). A call passes the tensors straight to the loader, without the pytree round trip
    (the call spec parsed anew at every call) of torch's own ``AOTICompiledModel``.
    """

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        (out,) = self._loader.boxed_run(list(inputs))
        return out

    def get_constant_fqns(self) -> list[str]:
        return list(self._loader.get_constant_fqns())

    def load_constants(
        self, constants: dict[str, torch.Tensor], *, check_full_update: bool, user_managed: bool
    ) -> None:
        # The loader's arguments: the map, whether to load them into the inactive buffer, the full-update check, and
        # whether the caller keeps the tensors alive (no copy).
        self._loader.load_constants(constants, False, check_full_update, user_managed)


def load_runner(path: Path, device_index: int) -> PackageRunner:
    """The package at ``path`` loaded for ``device_index`` (-1: the default device)."""
    return PackageRunner(torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, device_index))


@contextmanager
def _torch_notices_quiet() -> Iterator[None]:
    """torch's own deprecation notices from inside export and inductor (its pytree ``LeafSpec``, the
    ``torch.jit.script_method`` of ``torch.utils.mkldnn`` that importing inductor defines): not ours to act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def new_stats() -> dict[str, Any]:
    """Packages loaded and built, loads checked in a child process, their seconds, and the shapes that failed."""
    return {"loaded": 0, "built": 0, "checked": 0, "load_s": 0.0, "build_s": 0.0, "check_s": 0.0, "failed": {}}
