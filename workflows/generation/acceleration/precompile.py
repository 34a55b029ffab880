"""Precompiled forwards: ``torch.compile`` without the Dynamo trace at a warm start (issue 24).

A warm start with the compile cache folder still re-traces the UNet and VAE decoder with Dynamo at every start
and for every bucket (on one H100, 2026-12-06: 9.9 s of byte-code tracing of 15.3 s compile time for buckets 1
and 16 and the decoder). torch's AOT-compiled modules (``OptimizedModule._aot_compile``, torch 2.11's form of
precompile) keep what that trace produces (the byte code, the guards, the AOTAutograd/inductor artefacts) in
one serialisable object per input shape. This module builds one per shape on the first start, writes it to
``precompile_dir`` and, at later starts, loads it instead of tracing. The inductor kernels behind it come from
the compile cache folder as before; CUDA graphs are kept (inductor's ``triton.cudagraphs`` is set while an
artefact is built and loaded: torch wraps a loaded artefact by that global value).

Guards: Dynamo's object-identity guards cannot be written to a file, so only what a new process can check is
kept (tensor shapes, dtypes and strides of the inputs, grad mode). Which shape runs which artefact is decided
here, by the inputs' shapes; a changed model gets new files through the fingerprint in their names
(``aotpackage.fingerprint``: versions, device, dtype, config, structure, a weights checksum).

A shape whose artefact cannot be built or loaded is logged and reported (``stats["failed"]``) and runs through
plain ``torch.compile`` instead, so the lever can only cost the trace it meant to save.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PRECOMPILE_FORMAT = 1


def portable_guards(entries: Any) -> list[bool]:
    """Keep the guards a new process can evaluate: global state (grad mode, ...), shape environment, and the
    metadata of input tensors that are not parameters. Object identities (``ID_MATCH``) cannot be saved."""
    import torch

    return [
        e.guard_type in ("GLOBAL_STATE", "SHAPE_ENV")
        or (e.guard_type == "TENSOR_MATCH" and not e.is_global and not isinstance(e.value, torch.nn.Parameter))
        for e in entries
    ]


def supported() -> str | None:
    """None when this torch can build and load AOT-compiled modules, else why not."""
    import torch

    optimized = getattr(torch._dynamo.eval_frame, "OptimizedModule", None)
    for name in ("_aot_compile", "_save_aot_compiled_module", "_load_aot_compiled_module"):
        if not hasattr(optimized, name):
            return f"torch {torch.__version__} has no OptimizedModule.{name}"
    return None


def _model_input(args: tuple[Any, ...]) -> Any:
    """One example input for ``_aot_compile`` (torch's ``ModelInput``: args, kwargs, contexts)."""
    import torch

    try:
        from torch._dynamo.aot_compile import ModelInput

        return ModelInput(args=args, kwargs={}, contexts=[torch.no_grad()])
    except ImportError:  # pragma: no cover - torch builds that name it otherwise take the same three fields
        return _ModelInput(args=args, kwargs={}, contexts=[torch.no_grad()])


@dataclasses.dataclass
class _ModelInput:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    contexts: list[Any]


def _enable_aot_compile() -> None:
    import torch._dynamo.config as dynamo_config

    with contextlib.suppress(AttributeError):  # torch builds without the switch do not check it
        dynamo_config.enable_aot_compile = True


class PrecompiledForward:
    """A module's ``forward`` that runs an AOT-compiled artefact per input shape when ``active()`` (the
    accelerator's decision for the call: a compiled bucket and resolution), and the eager forward else.

    ``core`` is the module as the pipeline calls it with tensors only (``aotpackage._UNetCore`` /
    ``_DecoderCore``); ``inputs(sample, args, kwargs)`` turns a call into its tensors, or None when the call
    needs more than the core takes; ``wrap(out, kwargs)`` turns the core's tensor into what the caller expects.
    """

    def __init__(
        self,
        *,
        kind: str,
        eager: Callable[..., Any],
        core: Any,
        fingerprint: str,
        folder: Path,
        cuda_graphs: bool,
        inputs: Callable[[Any, tuple[Any, ...], dict[str, Any]], tuple[Any, ...] | None],
        wrap: Callable[[Any, dict[str, Any]], Any],
        active: Callable[[], bool],
        stats: dict[str, Any],
    ) -> None:
        self.kind = kind
        self._eager = eager
        self._core = core
        self._fingerprint = fingerprint
        self._folder = folder
        self._cuda_graphs = cuda_graphs
        self._inputs = inputs
        self._wrap = wrap
        self._active = active
        self._compiled: dict[tuple[tuple[int, ...], ...], Any] = {}
        self.stats = stats

    def __call__(self, sample: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        inputs = self._inputs(sample, args, kwargs)
        if inputs is None or not self._active() or torch.is_grad_enabled():
            return self._eager(sample, *args, **kwargs)
        return self._wrap(self._forward_for(inputs)(*inputs), kwargs)

    def path(self, inputs: tuple[Any, ...]) -> Path:
        shapes = "-".join("x".join(str(d) for d in t.shape) or "scalar" for t in inputs)
        return self._folder / f"{self.kind}-{self._fingerprint}-{shapes}.dynamo"

    def _new_module(self) -> Any:
        import torch

        options: dict[str, Any] = {"triton.cudagraphs": self._cuda_graphs, "guard_filter_fn": portable_guards}
        return torch.compile(self._core, fullgraph=True, dynamic=False, options=options)

    def _forward_for(self, inputs: tuple[Any, ...]) -> Callable[..., Any]:
        key = tuple(tuple(t.shape) for t in inputs)
        if key not in self._compiled:
            from workflows.generation.aotpackage import _torch_notices_quiet

            with _torch_notices_quiet():
                self._compiled[key] = self._load_or_build(inputs)
        return self._compiled[key]

    def _load_or_build(self, inputs: tuple[Any, ...]) -> Callable[..., Any]:
        path = self.path(inputs)
        module = self._new_module()
        _enable_aot_compile()
        if path.is_file():
            started = time.perf_counter()
            try:
                with self._graph_config():
                    module._load_aot_compiled_module(path.read_bytes())
                self.stats["loaded"] += 1
                self.stats["load_s"] += time.perf_counter() - started
                return module.forward
            except Exception as exc:  # a stale or foreign file: build it again
                logger.warning("precompiled %s could not be loaded (%s): building it again", path.name, exc)
                self.stats["failed"][path.name] = f"load: {type(exc).__name__}: {exc}"[:500]
                module = self._new_module()
        started = time.perf_counter()
        try:
            with self._graph_config():
                module._aot_compile([_model_input(inputs)])
            data = module._save_aot_compiled_module()
        except Exception as exc:  # this torch cannot precompile this module: plain torch.compile
            logger.warning("precompiling %s failed (%s): plain torch.compile for that shape", path.name, exc)
            self.stats["failed"][path.name] = f"build: {type(exc).__name__}: {exc}"[:500]
            return self._new_plain()
        self.stats["built"] += 1
        self.stats["build_s"] += time.perf_counter() - started
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_name(f".{uuid.uuid4().hex}.{path.name}")
            staging.write_bytes(data)
            staging.replace(path)  # atomic: a concurrent start sees the whole file or none
        except OSError as exc:  # a read-only folder: the next start builds it again
            logger.warning("could not write %s: %s", path, exc)
        return module.forward

    def _graph_config(self) -> contextlib.AbstractContextManager[Any]:
        """Inductor's global ``triton.cudagraphs`` set to the lever while an artefact is built or loaded: torch
        wraps a loaded artefact in CUDA graphs by the global value at that moment, not by the compile's options
        (torch 2.11 and 2.13, ``deserialize_bundled_cache_entry``). Without it a loaded UNet launched every kernel
        from Python: 0.376 s a batch-1 call against 0.216 s on one H100 (2026-12-06)."""
        import torch._inductor.config as inductor_config

        return inductor_config.patch({"triton.cudagraphs": self._cuda_graphs})

    def _new_plain(self) -> Callable[..., Any]:
        import torch

        mode = "reduce-overhead" if self._cuda_graphs else "default"
        return torch.compile(self._core, fullgraph=True, dynamic=False, mode=mode)


def new_stats() -> dict[str, Any]:
    """Artefacts loaded and built, their seconds, and the shapes that failed (with why)."""
    return {"loaded": 0, "built": 0, "load_s": 0.0, "build_s": 0.0, "failed": {}}
