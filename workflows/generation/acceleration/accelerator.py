"""The accelerator: applies ``AccelerationOptions`` to one pipeline and decides each batch's size and path."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workflows.generation import featurereuse
from workflows.generation.acceleration import cfgtruncation
from workflows.generation.acceleration.cachefiles import load_compile_cache, save_compile_cache
from workflows.generation.acceleration.options import DEFAULT_BUCKETS, AccelerationOptions
from workflows.generation.acceleration.promptcache import PromptEmbeddingCache
from workflows.generation.acceleration.torchcompile import compile_forward, configure_inductor, hook_forward
from workflows.generation.acceleration.vae import decode_vae_in_bf16, device_has_bf16, upcasts_vae_per_call
from workflows.generation.featurereuse import FeatureReuse

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass
class AccelerationReport:
    """What was asked, what was applied, what was skipped and why, and what it cost."""

    options: dict[str, Any]
    device: str
    applied: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    apply_s: float = 0.0
    mega_cache_loaded_bytes: int | None = None
    mega_cache_saved_bytes: int | None = None
    warmup_s: dict[str, float] = field(default_factory=dict)
    fp8_linears: int = 0
    # AOTInductor packages: loaded, built, and their seconds (None: the lever is off).
    aot_packages: dict[str, Any] | None = None
    # Precompiled (AOT-compiled) forwards: loaded, built, their seconds, failures (None: the lever is off).
    precompile: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Accelerator:
    """Applies ``AccelerationOptions`` to one pipeline and decides, per batch, its padded size and its path."""

    def __init__(self, pipe: Any, device: torch.device, options: AccelerationOptions | None, native_size: int):
        self.options = options or AccelerationOptions()
        self._pipe = pipe
        self._device = device
        self._native = (native_size, native_size)
        self.report = AccelerationReport(options=self.options.to_dict(), device=device.type)
        self.compiled = False
        self.cuda_graphs = False
        self.prompt_cache: PromptEmbeddingCache | None = None
        self.feature_reuse: FeatureReuse | None = None
        self.cfg_truncation = 0.0  # the share of steps run without guidance's unconditional pass (0: exact)
        self.buckets: tuple[int, ...] = ()
        self.resolutions: tuple[tuple[int, int], ...] = ()
        self._warm: set[tuple[int, int, int]] = set()  # compiled (images, width, height) shapes a call has run
        self._warmup_noted = False  # the warm-up's end was logged (and the mega-cache file written)
        self._compiled_call = False  # inside call_context: whether this call's shape is a compiled one
        started = time.perf_counter()
        self._apply()
        self.report.apply_s = time.perf_counter() - started

    @property
    def static_decoder(self) -> bool:
        """Whether the VAE decoder runs a compiled graph or package made for one image (it decodes one at a time)."""
        return "compile_vae" in self.report.applied

    @property
    def active(self) -> bool:
        """Whether any lever changed the model (compile, layout, fused projections, feature reuse, FP8, bf16 VAE)."""
        return any(
            lever in self.report.applied
            for lever in ("compile", "aot_packages", "channels_last", "fuse_qkv", "feature_reuse", "fp8", "vae_bf16")
        )

    # -- applying ------------------------------------------------------------------------------------------

    def _apply(self) -> None:
        opts, pipe = self.options, self._pipe
        if opts.prompt_cache_size > 0:
            if PromptEmbeddingCache.supports(pipe):
                self.prompt_cache = PromptEmbeddingCache(pipe, self._device, opts.prompt_cache_size)
                self.report.applied.append("prompt_cache")
            else:
                self.report.skipped["prompt_cache"] = f"not an SD/SDXL pipeline ({type(pipe).__name__})"
        if opts.feature_reuse:
            # Not a GPU lever: it skips work on any device (and CPU tests exercise it).
            reason = featurereuse.supports(pipe.unet)
            if reason is None:
                self.feature_reuse = FeatureReuse(pipe.unet, opts.feature_reuse)
                self.report.applied.append("feature_reuse")
            else:
                self.report.skipped["feature_reuse"] = reason
        if opts.cfg_truncation:
            reason = cfgtruncation.supports(pipe)  # any device: it skips work anywhere
            if reason is None:
                self.cfg_truncation = opts.cfg_truncation
                self.report.applied.append("cfg_truncation")
            else:
                self.report.skipped["cfg_truncation"] = reason
        if opts.vae_bf16:
            # Any device (CPUs have bf16 convolutions; the tests use them). Before compile: the decoder then no
            # longer upcasts per call, so it compiles like SD 1.5's.
            if not upcasts_vae_per_call(pipe):
                self.report.skipped["vae_bf16"] = "the pipeline does not decode its VAE in fp32 per call"
            elif not device_has_bf16(self._device):
                self.report.skipped["vae_bf16"] = "this GPU has no bf16 arithmetic"
            else:
                decode_vae_in_bf16(pipe.vae)
                self.report.applied.append("vae_bf16")

        gpu_levers = {
            "compile": opts.compile,
            "cuda_graphs": opts.compile and opts.wants_cuda_graphs,
            "channels_last": opts.wants_channels_last,
            "fuse_qkv": opts.wants_fuse_qkv,
        }
        # Explicit buckets pad without a compiled model too (tests of the padding on CPU); auto buckets come
        # with compile (see _compile).
        self.buckets = tuple(sorted(set(opts.buckets or ())))
        if self._device.type != "cuda":
            for name, wanted in gpu_levers.items():
                if wanted:
                    self.report.skipped[name] = f"not on CUDA ({self._device.type})"
            self._apply_fp8()
            if opts.compile and opts.aot_dir:
                self._try_aot()  # AOTInductor compiles for CPUs too
            elif opts.compile and opts.precompile_dir:
                self._compiled_shapes()
                self._try_precompile()  # so do torch.compile and its AOT-compiled modules
            return
        if opts.cuda_graphs and not opts.compile:
            self.report.skipped["cuda_graphs"] = "needs compile"

        if opts.cache_dir:
            Path(opts.cache_dir).mkdir(parents=True, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(opts.cache_dir).resolve())
            self.report.applied.append("cache_dir")
        if opts.mega_cache and opts.compile:
            self.report.mega_cache_loaded_bytes = load_compile_cache(Path(opts.mega_cache))
            if self.report.mega_cache_loaded_bytes is not None:
                self.report.applied.append("mega_cache")

        if opts.wants_fuse_qkv:
            try:
                pipe.unet.fuse_qkv_projections()
                if hasattr(pipe.vae, "fuse_qkv_projections"):
                    pipe.vae.fuse_qkv_projections()
                self.report.applied.append("fuse_qkv")
            except (ValueError, AttributeError) as exc:
                self.report.skipped["fuse_qkv"] = str(exc)
        self._apply_fp8()  # after fusing: the fused QKV projection becomes one FP8 product
        if opts.wants_channels_last:
            import torch

            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
            self.report.applied.append("channels_last")

        if opts.compile:
            self._compile()

    def _apply_fp8(self) -> None:
        if not self.options.fp8:
            return
        from workflows.generation import fp8

        reason = fp8.supports(self._device)
        if reason is None:
            self.report.fp8_linears = fp8.convert_attention_linears(self._pipe.unet)
            self.report.applied.append("fp8")
        else:
            self.report.skipped["fp8"] = reason

    def _compiled_shapes(self) -> None:
        opts = self.options
        self.buckets = tuple(sorted(set(DEFAULT_BUCKETS if opts.buckets is None else opts.buckets)))
        self.resolutions = opts.compile_resolutions or (self._native,)

    def _compile(self) -> None:
        opts, pipe = self.options, self._pipe
        if opts.aot_dir and self._try_aot():
            return
        self._compiled_shapes()
        self.cuda_graphs = opts.wants_cuda_graphs
        configure_inductor(opts.autotune, shapes=max(1, len(self.buckets)) * len(self.resolutions))
        if opts.precompile_dir and self._try_precompile():
            return
        kwargs: dict[str, Any] = {"mode": opts.compile_mode, "dynamic": False}
        if self.feature_reuse is not None:
            # The full and the shallow forward are compiled (and graphed) separately; the hooks stay on the UNet.
            import torch

            self.feature_reuse.compile_with(lambda fn: torch.compile(fn, **kwargs), graphs=self.cuda_graphs)
            hook_forward(pipe.unet, cuda_graphs=self.cuda_graphs, timestep_arg=True)
        else:
            compile_forward(pipe.unet, kwargs, cuda_graphs=self.cuda_graphs, timestep_arg=True)
        self.report.applied.append("compile")
        if self.cuda_graphs:
            self.report.applied.append("cuda_graphs")
        if self._decoder_compilable():
            compile_forward(pipe.vae.decoder, kwargs, cuda_graphs=self.cuda_graphs, timestep_arg=False)
            self.report.applied.append("compile_vae")
        self.compiled = True

    def _decoder_compilable(self) -> bool:
        """Whether the VAE decoder takes the compiled path too; records why not in the report."""
        if not self.options.compile_vae:
            self.report.skipped["compile_vae"] = "off"
            return False
        if upcasts_vae_per_call(self._pipe):
            # SDXL-type pipelines cast an fp16 VAE to fp32 and back on every call: a recompile each time.
            self.report.skipped["compile_vae"] = "the pipeline upcasts the fp16 VAE to fp32 per call (force_upcast)"
            return False
        return True

    def _try_precompile(self) -> bool:
        """Precompiled forwards instead of plain ``torch.compile``, where they can be; whether applied."""
        from workflows.generation.acceleration import precompile

        if self.feature_reuse is not None:
            self.report.skipped["precompile"] = "feature reuse compiles its own two graphs with torch.compile"
            return False
        if self.options.autotune:
            self.report.skipped["precompile"] = "not with max-autotune (its mode is not kept in the artefacts)"
            return False
        reason = precompile.supported()
        if reason is not None:
            self.report.skipped["precompile"] = reason
            return False
        self._compile_precompiled()
        return True

    def _compile_precompiled(self) -> None:
        """The UNet and VAE decoder run AOT-compiled forwards from ``precompile_dir`` (``precompile``)."""
        from workflows.generation import aotpackage
        from workflows.generation.acceleration.precompile import PRECOMPILE_FORMAT, PrecompiledForward, new_stats

        opts, pipe = self.options, self._pipe
        assert opts.precompile_dir is not None
        folder = Path(opts.precompile_dir)
        stats = new_stats()
        levers = {
            "fuse_qkv": "fuse_qkv" in self.report.applied,
            "fp8": "fp8" in self.report.applied,
            "cuda_graphs": self.cuda_graphs,
            "precompile_format": PRECOMPILE_FORMAT,
        }

        def active() -> bool:
            return self._compiled_call

        def precompiled(module: Any, kind: aotpackage.Kind) -> PrecompiledForward:
            eager = module.forward
            core = aotpackage._UNetCore(module, eager) if kind == "unet" else aotpackage._DecoderCore(module, eager)
            return PrecompiledForward(
                kind=kind,
                eager=eager,
                core=core,
                fingerprint=aotpackage.fingerprint(module, kind, levers),
                folder=folder,
                cuda_graphs=self.cuda_graphs,
                inputs=lambda sample, args, kwargs: aotpackage.core_inputs(kind, sample, args, kwargs),
                wrap=aotpackage.unet_output if kind == "unet" else lambda out, _kwargs: out,
                active=active,
                stats=stats,
            )

        pipe.unet.forward = precompiled(pipe.unet, "unet")
        hook_forward(pipe.unet, cuda_graphs=self.cuda_graphs, timestep_arg=True)
        if "compile" not in self.report.skipped:
            self.report.applied.append("compile")
        self.report.applied.append("precompile")
        if self.cuda_graphs:
            self.report.applied.append("cuda_graphs")
        if self._decoder_compilable():
            pipe.vae.decoder.forward = precompiled(pipe.vae.decoder, "decoder")
            hook_forward(pipe.vae.decoder, cuda_graphs=self.cuda_graphs, timestep_arg=False)
            self.report.applied.append("compile_vae")
        self.report.precompile = stats
        self.compiled = True

    def _try_aot(self) -> bool:
        """AOT packages instead of ``torch.compile``, unless feature reuse needs the latter; whether applied."""
        if self.feature_reuse is not None:
            self.report.skipped["aot_packages"] = "feature reuse compiles its own two graphs with torch.compile"
            return False
        self._compile_aot()
        return True

    def _compile_aot(self) -> None:
        """The UNet and VAE decoder run AOTInductor packages from ``aot_dir`` (``aotpackage``), not Dynamo."""
        from workflows.generation.aotpackage import AotForward, new_stats

        opts, pipe = self.options, self._pipe
        assert opts.aot_dir is not None
        self._compiled_shapes()
        folder = Path(opts.aot_dir)
        stats = new_stats()
        levers = {"fuse_qkv": "fuse_qkv" in self.report.applied, "fp8": "fp8" in self.report.applied}

        def active() -> bool:
            return self._compiled_call

        pipe.unet.forward = AotForward(pipe.unet, "unet", folder, levers, active, stats)
        hook_forward(pipe.unet, cuda_graphs=False, timestep_arg=True)
        self.report.applied.append("aot_packages")
        if self._decoder_compilable():
            pipe.vae.decoder.forward = AotForward(pipe.vae.decoder, "decoder", folder, levers, active, stats)
            self.report.applied.append("compile_vae")
        if self._device.type == "cuda" and opts.wants_cuda_graphs:
            self.report.skipped["cuda_graphs"] = "not with AOT packages (they launch their kernels from C++)"
        if opts.autotune:
            self.report.skipped["autotune"] = "not with AOT packages (built with inductor's defaults)"
        self.report.aot_packages = stats
        self.compiled = True

    # -- per batch -----------------------------------------------------------------------------------------

    def uses_compiled_path(self, width: int, height: int, images: int) -> bool:
        """Whether a call of ``images`` (already padded) images at this size runs the compiled model."""
        in_buckets = not self.buckets or images in self.buckets
        return self.compiled and (width, height) in self.resolutions and in_buckets

    def padded_size(self, images: int, width: int, height: int) -> int:
        """How many images the pipeline call takes for ``images`` real ones (padding to a bucket)."""
        if not self.buckets:
            return images
        if self.compiled and (width, height) not in self.resolutions:
            return images  # eager anyway: padding would only waste work
        return self.batch_size_for(images)

    def batch_size_for(self, images: int) -> int:
        return next((b for b in self.buckets if b >= images), images)

    def cap_batch_limit(self, limit: int) -> int:
        """The largest bucket within ``limit`` (a batch limit that pads to nothing larger), or ``limit``."""
        if not self.buckets:
            return limit
        return max((b for b in self.buckets if b <= limit), default=limit)

    @contextmanager
    def call_context(self, width: int, height: int, images: int) -> Iterator[None]:
        """Around one pipeline call of ``images`` (padded) images: eager unless that shape is compiled."""
        if self.feature_reuse is not None:
            self.feature_reuse.reset()  # every call starts with a full step
        compiled_call = self.compiled and self.uses_compiled_path(width, height, images)
        self._compiled_call = compiled_call
        try:
            if not self.compiled or compiled_call or self.report.aot_packages is not None:
                yield
                if compiled_call:
                    self._warm.add((images, width, height))  # compiled (or loaded) and recorded from now on
                return
            import torch

            with torch.compiler.set_stance("force_eager"):
                yield
        finally:
            self._compiled_call = False

    # -- warm-up and caches --------------------------------------------------------------------------------

    def cold_shapes(self) -> list[tuple[int, int, int]]:
        """The compiled ``(images, width, height)`` shapes no call has run yet, smallest batch first."""
        if not self.compiled:
            return []
        shapes = [(size, w, h) for size in self.buckets or (1,) for (w, h) in self.resolutions]
        return [shape for shape in shapes if shape not in self._warm]

    def warm_next(self, generate: Callable[[int, int, int], None]) -> bool:
        """Compile (and record) the first of ``cold_shapes`` by calling ``generate(n, w, h)``; False when none is
        left (the first such call logs the warm-up and writes the mega-cache file). The worker warms its smallest
        bucket this way before its first job, and the others while it holds no job."""
        cold = self.cold_shapes()
        if cold:
            self._warm_shape(generate, *cold[0])
            return True
        if self.compiled and not self._warmup_noted:
            self._after_warmup()
        return False

    def warmup(self, generate: Callable[[int, int, int], None], sizes: Sequence[int] | None = None) -> None:
        """Compile (and record) each bucket (or each of ``sizes``) at each compiled resolution, warm or not."""
        if not self.compiled:
            return
        for width, height in self.resolutions:
            for size in sizes or self.buckets or (1,):
                self._warm_shape(generate, size, width, height)
        self._after_warmup()

    def _warm_shape(self, generate: Callable[[int, int, int], None], size: int, width: int, height: int) -> None:
        started = time.perf_counter()
        generate(size, width, height)
        self.report.warmup_s[f"{size}@{width}x{height}"] = time.perf_counter() - started

    def _after_warmup(self) -> None:
        """The warm-up's end: logged once, and the mega-cache file written when the start found none."""
        self._warmup_noted = True
        logger.info("compile warm-up done: %s", self.report.warmup_s)
        loaded, saved = self.report.mega_cache_loaded_bytes, self.report.mega_cache_saved_bytes
        if self.options.mega_cache and loaded is None and saved is None:
            # First start without the file: write it, for the next start (or the next machine image).
            self.report.mega_cache_saved_bytes = save_compile_cache(Path(self.options.mega_cache))
