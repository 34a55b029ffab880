"""Speed levers for the pipeline runner, each behind an option (issue 8).

- ``compile``: ``torch.compile`` of the UNet and the VAE decoder with static shapes (``dynamic=False``). Batches
  are padded up to the next *bucket* size (1, 2, 4, 8, 16 by default) and the padded images dropped, so a worker
  compiles a handful of shapes instead of one per batch size. Only the compiled resolutions (default: the model's
  native square) take the compiled path; any other size runs eager (``torch.compiler.set_stance``), so an odd
  request never stalls the worker for a fresh compile.
- ``autotune``: inductor's ``max-autotune`` GEMM/convolution search (minutes more compile per shape).
- ``cuda_graphs``: record each compiled shape as a CUDA graph (``reduce-overhead`` / ``max-autotune``): the
  batch-1 lever, where eager SD 1.5 is bound by kernel launches. Outputs are cloned out of the graph pool.
- ``channels_last`` and ``fuse_qkv``: memory layout and fused attention projections (on with ``compile``; eager
  they were measured slower).
- ``cache_dir`` / ``mega_cache``: a persistent inductor/FX-graph/autotune cache folder, and a single portable
  file of compile artifacts (``torch.compiler.save_cache_artifacts``) to ship with the worker image.
- ``prompt_cache_size``: an LRU of text embeddings per prompt string (positive and negative alike).
- ``feature_reuse``: DeepCache-style reuse of the UNet's deep features between full steps (``featurereuse.py``);
  it changes the images, so it is off by default and reported beside its pixel difference from the exact path.
- ``fp8``: the UNet's attention-block linears as FP8 products with per-row scales (``fp8.py``); quality-trading
  too, off by default. It runs on CPU as well (slowly), so the tests check its arithmetic.
- ``aot_dir``: with ``compile``, the UNet and VAE decoder run ``torch.export`` + AOTInductor packages from this
  folder instead of ``torch.compile`` (``aotpackage.py``): built once, loaded at later starts without a Dynamo
  trace. No CUDA graphs on that path. AOTInductor compiles for CPUs as well, so the tests run it.

The GPU levers are skipped on CPU (recorded in ``Accelerator.report``), so tests stay fast. Batch buckets set
explicitly apply on CPU too, which lets tests check that padding leaves each image unchanged.

Seed equivalence: padding adds images with their own generators, so a real image's latents do not change; the
compiled kernels for another bucket may round differently, like eager kernels for another batch size do.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # torch is imported where it is used: the options and the command-line flags load without it (the ``sdq``
    # command builds its parser at every start).
    import torch

from workflows.generation import featurereuse
from workflows.generation.featurereuse import FeatureReuse

logger = logging.getLogger(__name__)

DEFAULT_BUCKETS = (1, 2, 4, 8, 16)
# torch.compile modes by (autotune, cuda_graphs).
_MODES = {
    (False, False): "default",
    (False, True): "reduce-overhead",
    (True, False): "max-autotune-no-cudagraphs",
    (True, True): "max-autotune",
}


@dataclass(frozen=True)
class AccelerationOptions:
    """Which levers to pull. ``None`` means auto: on when ``compile`` is on (and the device is CUDA)."""

    compile: bool = False
    autotune: bool = False
    cuda_graphs: bool | None = None
    channels_last: bool | None = None
    fuse_qkv: bool | None = None
    compile_vae: bool = True
    # Batch sizes to pad up to. None: DEFAULT_BUCKETS when compiling on CUDA, else no padding. (): no padding.
    buckets: tuple[int, ...] | None = None
    # (width, height) pairs that take the compiled path. None: the model's native square.
    compile_resolutions: tuple[tuple[int, int], ...] | None = None
    # TORCHINDUCTOR_CACHE_DIR for this process (FX graph, AOTAutograd, autotune and Triton caches).
    cache_dir: str | None = None
    # A file of torch.compiler cache artifacts: loaded before the first compile, written by save_compile_cache.
    mega_cache: str | None = None
    # Compile (and record) every bucket at the native size at load time, not on the first matching batch.
    warmup: bool = False
    prompt_cache_size: int = 256
    # Quality-trading: run the whole UNet every N-th step only, the outer level in between (0: off, exact).
    feature_reuse: int = 0
    # Quality-trading: FP8 (e4m3) matrix products in the UNet's attention blocks (Hopper/Ada tensor cores).
    fp8: bool = False
    # With compile: a folder of AOTInductor packages (torch.export), used instead of torch.compile for the UNet
    # and VAE decoder; built on the first start, loaded (no Dynamo trace) on later ones. CPU too.
    aot_dir: str | None = None
    # CUDA, eager decoder: decode a call's images in one VAE call when the free memory holds it (else one at a
    # time). False: always one at a time (the lower peak memory).
    vae_one_call: bool = True
    # Quality-trading, SDXL-type pipelines whose fp16 VAE asks for fp32 (force_upcast): decode in bf16 instead.
    vae_bf16: bool = False

    def __post_init__(self) -> None:
        if self.buckets is not None and any(b < 1 for b in self.buckets):
            raise ValueError(f"bucket sizes must be positive, got {self.buckets}")
        if self.prompt_cache_size < 0:
            raise ValueError("prompt_cache_size must be >= 0")
        if self.feature_reuse == 1 or self.feature_reuse < 0:
            raise ValueError(f"feature_reuse is 0 (off) or an interval of at least 2, got {self.feature_reuse}")

    @property
    def wants_cuda_graphs(self) -> bool:
        return self.compile if self.cuda_graphs is None else self.cuda_graphs

    @property
    def wants_channels_last(self) -> bool:
        return self.compile if self.channels_last is None else self.channels_last

    @property
    def wants_fuse_qkv(self) -> bool:
        return self.compile if self.fuse_qkv is None else self.fuse_qkv

    @property
    def compile_mode(self) -> str:
        return _MODES[(self.autotune, self.wants_cuda_graphs)]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["buckets"] = list(self.buckets) if self.buckets is not None else None
        data["compile_resolutions"] = (
            [list(r) for r in self.compile_resolutions] if self.compile_resolutions is not None else None
        )
        data["compile_mode"] = self.compile_mode if self.compile else None
        return data


def options_from_settings(settings: Any) -> AccelerationOptions:
    """The worker's levers from its settings object (fields in shared/settings.py; a missing field: default).

    ``batch_buckets`` and ``compile_resolutions`` may be strings (``"1,2,4,8,16"``, ``"512x512"``) or sequences.
    """

    def get(name: str, default: Any) -> Any:
        return getattr(settings, name, default)

    buckets = get("batch_buckets", None)
    resolutions = get("compile_resolutions", None)
    return AccelerationOptions(
        compile=bool(get("compile", False)),
        autotune=bool(get("compile_autotune", False)),
        cuda_graphs=get("cuda_graphs", None),
        channels_last=get("channels_last", None),
        fuse_qkv=get("fuse_qkv", None),
        compile_vae=bool(get("compile_vae", True)),
        buckets=parse_buckets(buckets) if isinstance(buckets, str) else None if buckets is None else tuple(buckets),
        compile_resolutions=(
            parse_resolutions(resolutions)
            if isinstance(resolutions, str)
            else None
            if not resolutions
            else tuple((int(w), int(h)) for w, h in resolutions)
        ),
        cache_dir=get("compile_cache_dir", None),
        mega_cache=get("compile_mega_cache", None),
        warmup=bool(get("compile_warmup", True)),
        prompt_cache_size=int(get("prompt_cache_size", 256)),
        feature_reuse=int(get("feature_reuse", 0)),
        fp8=bool(get("fp8", False)),
        aot_dir=get("aot_dir", None),
        vae_one_call=bool(get("vae_one_call", True)),
        vae_bf16=bool(get("vae_bf16", False)),
    )


def parse_buckets(text: str) -> tuple[int, ...]:
    """``"1,2,4,8"`` -> ``(1, 2, 4, 8)``; ``""`` or ``"none"`` -> ``()`` (no padding)."""
    text = text.strip().lower()
    if text in {"", "none", "off"}:
        return ()
    sizes = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    if any(size < 1 for size in sizes):
        raise ValueError(f"bucket sizes must be positive, got {text!r}")
    return sizes


def parse_resolutions(text: str) -> tuple[tuple[int, int], ...]:
    """``"512x512,768x512"`` -> ``((512, 512), (768, 512))``."""
    out: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        width, _, height = part.partition("x")
        out.append((int(width), int(height or width)))
    return tuple(out)


# --- the prompt-embedding cache ----------------------------------------------------------------------------


class PromptEmbeddingCache:
    """Text embeddings per prompt string for SD 1.x/2.x and SDXL pipelines, least recently used first out.

    Every text (prompt or negative prompt) is encoded through the pipeline's own ``encode_prompt`` positive
    path, which for these pipelines computes the same function as its negative path. Missing texts of a batch
    are encoded in one call. Entries live on the device in the text encoder's dtype (SD 1.5: 118 KB each).
    """

    def __init__(self, pipe: Any, device: torch.device, size: int) -> None:
        self._pipe = pipe
        self._device = device
        self._size = size
        self._xl = _is_sdxl(pipe)
        self._entries: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def supports(pipe: Any) -> bool:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        return isinstance(pipe, StableDiffusionPipeline | StableDiffusionXLPipeline)

    def __len__(self) -> int:
        return len(self._entries)

    def pipeline_kwargs(self, prompts: Sequence[str], negatives: Sequence[str]) -> dict[str, torch.Tensor]:
        """The ``prompt_embeds``/``negative_prompt_embeds`` (and SDXL pooled) arguments for one call."""
        import torch

        wanted = list(dict.fromkeys([*prompts, *negatives]))
        missing = [text for text in wanted if text not in self._entries]
        self.hits += len(wanted) - len(missing)
        self.misses += len(missing)
        fresh = dict(zip(missing, self._encode(missing), strict=True)) if missing else {}
        rows = {text: fresh[text] if text in fresh else self._entries[text] for text in wanted}
        for text, row in fresh.items():
            self._entries[text] = row
        for text in wanted:
            self._entries.move_to_end(text)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

        kwargs = {
            "prompt_embeds": torch.stack([rows[p][0] for p in prompts]),
            "negative_prompt_embeds": torch.stack([rows[n][0] for n in negatives]),
        }
        if self._xl:
            kwargs["pooled_prompt_embeds"] = torch.stack([_pooled(rows[p]) for p in prompts])
            kwargs["negative_pooled_prompt_embeds"] = torch.stack([_pooled(rows[n]) for n in negatives])
        return kwargs

    def _encode(self, texts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        import torch

        pipe = self._pipe
        with torch.no_grad():
            if self._xl:
                embeds, _neg, pooled, _neg_pooled = pipe.encode_prompt(
                    prompt=texts, device=self._device, num_images_per_prompt=1, do_classifier_free_guidance=False
                )
                return [(embeds[i].clone(), pooled[i].clone()) for i in range(len(texts))]
            embeds, _neg = pipe.encode_prompt(texts, self._device, 1, False)
            return [(embeds[i].clone(), None) for i in range(len(texts))]


def _pooled(row: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
    assert row[1] is not None
    return row[1]


def _is_sdxl(pipe: Any) -> bool:
    from diffusers import StableDiffusionXLPipeline

    return isinstance(pipe, StableDiffusionXLPipeline)


# --- the accelerator ---------------------------------------------------------------------------------------


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
        self.buckets: tuple[int, ...] = ()
        self.resolutions: tuple[tuple[int, int], ...] = ()
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
        if opts.vae_bf16:
            # Any device (CPUs have bf16 convolutions; the tests use them). Before compile: the decoder then no
            # longer upcasts per call, so it compiles like SD 1.5's.
            if not upcasts_vae_per_call(pipe):
                self.report.skipped["vae_bf16"] = "the pipeline does not decode its VAE in fp32 per call"
            elif not _device_has_bf16(self._device):
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
        _configure_inductor(opts.autotune, shapes=max(1, len(self.buckets)) * len(self.resolutions))
        kwargs: dict[str, Any] = {"mode": opts.compile_mode, "dynamic": False}
        if self.feature_reuse is not None:
            # The full and the shallow forward are compiled (and graphed) separately; the hooks stay on the UNet.
            import torch

            self.feature_reuse.compile_with(lambda fn: torch.compile(fn, **kwargs), graphs=self.cuda_graphs)
            _hook_forward(pipe.unet, cuda_graphs=self.cuda_graphs, timestep_arg=True)
        else:
            _compile_forward(pipe.unet, kwargs, cuda_graphs=self.cuda_graphs, timestep_arg=True)
        self.report.applied.append("compile")
        if self.cuda_graphs:
            self.report.applied.append("cuda_graphs")
        if not opts.compile_vae:
            self.report.skipped["compile_vae"] = "off"
        elif upcasts_vae_per_call(pipe):
            # SDXL-type pipelines cast an fp16 VAE to fp32 and back on every call: a recompile each time.
            self.report.skipped["compile_vae"] = "the pipeline upcasts the fp16 VAE to fp32 per call (force_upcast)"
        else:
            _compile_forward(pipe.vae.decoder, kwargs, cuda_graphs=self.cuda_graphs, timestep_arg=False)
            self.report.applied.append("compile_vae")
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
        _hook_forward(pipe.unet, cuda_graphs=False, timestep_arg=True)
        self.report.applied.append("aot_packages")
        if opts.compile_vae and not upcasts_vae_per_call(pipe):
            pipe.vae.decoder.forward = AotForward(pipe.vae.decoder, "decoder", folder, levers, active, stats)
            self.report.applied.append("compile_vae")
        elif opts.compile_vae:
            self.report.skipped["compile_vae"] = "the pipeline upcasts the fp16 VAE to fp32 per call (force_upcast)"
        else:
            self.report.skipped["compile_vae"] = "off"
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
                return
            import torch

            with torch.compiler.set_stance("force_eager"):
                yield
        finally:
            self._compiled_call = False

    # -- warm-up and caches --------------------------------------------------------------------------------

    def warmup(self, generate: Callable[[int, int, int], None], sizes: Sequence[int] | None = None) -> None:
        """Compile (and record) each bucket at each compiled resolution by calling ``generate(n, w, h)``."""
        if not self.compiled:
            return
        for width, height in self.resolutions:
            for size in sizes or self.buckets or (1,):
                started = time.perf_counter()
                generate(size, width, height)
                self.report.warmup_s[f"{size}@{width}x{height}"] = time.perf_counter() - started
        logger.info("compile warm-up done: %s", self.report.warmup_s)
        if self.options.mega_cache and self.report.mega_cache_loaded_bytes is None:
            # First start without the file: write it, for the next start (or the next machine image).
            self.report.mega_cache_saved_bytes = save_compile_cache(Path(self.options.mega_cache))


def decode_vae_in_bf16(vae: Any) -> None:
    """Keep ``vae`` in bf16 and cast what reaches its decoder (the pipeline's fp16 latents) to bf16.

    SDXL's VAE overflows fp16, so diffusers casts it to fp32 and back around every decode. bf16 has fp32's
    exponent range with fewer mantissa bits: no overflow, half the memory traffic, and one dtype for the whole
    call, so the decoder can be compiled. The images change slightly (the benchmark reports by how much).
    """
    import torch

    from workflows.generation.models import quiet_logger

    with quiet_logger("diffusers.models.modeling_utils"):  # "modules that should be kept in float32: []"
        vae.to(dtype=torch.bfloat16)

    def to_bf16(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(a.to(torch.bfloat16) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    first = vae.post_quant_conv if getattr(vae, "post_quant_conv", None) is not None else vae.decoder
    first.register_forward_pre_hook(to_bf16)


def _device_has_bf16(device: Any) -> bool:
    import torch

    return device.type != "cuda" or bool(torch.cuda.is_bf16_supported())


def upcasts_vae_per_call(pipe: Any) -> bool:
    """SDXL-type pipelines (they have ``upcast_vae``) decode an fp16 ``force_upcast`` VAE in fp32 per call."""
    import torch

    vae = pipe.vae
    return bool(
        hasattr(pipe, "upcast_vae") and getattr(vae.config, "force_upcast", False) and vae.dtype == torch.float16
    )


def _configure_inductor(autotune: bool, shapes: int) -> None:
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    # 1x1 convolutions (SD's attention proj_in/out, ResNet shortcuts) as matrix products: cuBLAS/Triton GEMMs
    # in channels_last, fusable with their neighbours.
    inductor_config.conv_1x1_as_mm = True
    if autotune:
        # The PyTorch team's settings for SD-type UNets under max-autotune ("Accelerating Generative AI III").
        inductor_config.coordinate_descent_tuning = True
        inductor_config.coordinate_descent_check_all_directions = True
        inductor_config.epilogue_fusion = False
    # Each bucket x resolution x CFG on/off is one static entry; the default limit (8) would fall back to eager.
    limit = max(8, 2 * shapes + 4)
    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, name, max(int(getattr(dynamo_config, name)), limit))
    if hasattr(dynamo_config, "accumulated_recompile_limit"):
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4 * limit)


def _compile_forward(module: Any, kwargs: dict[str, Any], *, cuda_graphs: bool, timestep_arg: bool) -> None:
    """Compile ``module.forward`` in place, keeping the module object (its config, dtype, hooks) as it was.

    The hooks run eagerly around the compiled forward: the UNet's timestep becomes a float32 device tensor (the
    UNet casts it to float anyway; int64 timesteps of DDIM/PNDM/DPM++ would otherwise compile a second graph),
    and with CUDA graphs each call starts a new graph generation and its outputs are cloned out of the graph's
    memory pool (a scheduler may keep a model output across steps, the VAE keeps its slices).
    """
    import torch

    module.forward = torch.compile(module.forward, **kwargs)
    _hook_forward(module, cuda_graphs=cuda_graphs, timestep_arg=timestep_arg)


def _hook_forward(module: Any, *, cuda_graphs: bool, timestep_arg: bool) -> None:
    """The eager hooks around a compiled forward (see ``_compile_forward``)."""
    import torch

    def before(_module: Any, args: tuple[Any, ...], call_kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if timestep_arg:
            if len(args) > 1:
                args = (args[0], _as_timestep(args[1], args[0]), *args[2:])
            elif "timestep" in call_kwargs:
                call_kwargs["timestep"] = _as_timestep(call_kwargs["timestep"], args[0] if args else None)
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return args, call_kwargs

    module.register_forward_pre_hook(before, with_kwargs=True)
    if cuda_graphs:
        module.register_forward_hook(_clone_outputs)


def _as_timestep(value: Any, sample: Any) -> Any:
    import torch

    device = sample.device if isinstance(sample, torch.Tensor) else None
    if isinstance(value, torch.Tensor):
        return value.to(dtype=torch.float32)
    if isinstance(value, int | float):
        return torch.tensor(float(value), dtype=torch.float32, device=device)
    return value


def _clone_outputs(_module: Any, _args: Any, output: Any) -> Any:
    import torch

    if isinstance(output, torch.Tensor):
        return output.clone()
    if isinstance(output, tuple):
        return tuple(o.clone() if isinstance(o, torch.Tensor) else o for o in output)
    if hasattr(output, "sample") and isinstance(output.sample, torch.Tensor):
        output.sample = output.sample.clone()
    return output


def load_compile_cache(path: Path) -> int | None:
    """Load a ``save_compile_cache`` file into this process's compile caches; its size, or None if absent."""
    if not path.is_file():
        return None
    import torch

    data = path.read_bytes()
    torch.compiler.load_cache_artifacts(data)
    logger.info("loaded %d bytes of compile cache artifacts from %s", len(data), path)
    return len(data)


def save_compile_cache(path: Path) -> int | None:
    """Write every compile artifact of this process to ``path`` (atomically); its size, or None if none."""
    import torch

    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return None
    data, _info = saved
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_bytes(data)
    staging.replace(path)
    logger.info("saved %d bytes of compile cache artifacts to %s", len(data), path)
    return len(data)


# --- command-line flags (``sdq bench worker``, ``python -m benchmarks.worker_bench``) ---------------------------------


def add_acceleration_arguments(parser: argparse.ArgumentParser) -> None:
    """The speed-lever options of ``sdq bench worker`` (and ``python -m benchmarks.worker_bench``)."""
    group = parser.add_argument_group("speed levers (issue 8); none given: the plain eager benchmark")
    group.add_argument("--precision", choices=["fp16", "bf16", "fp32"], help="default: fp16 on CUDA, fp32 on CPU")
    group.add_argument("--compile", action="store_true", help="torch.compile the UNet and VAE decoder")
    group.add_argument("--autotune", action="store_true", help="max-autotune GEMM/conv search (slow compile)")
    bool_flag = argparse.BooleanOptionalAction
    group.add_argument("--cuda-graphs", action=bool_flag, default=None, help="default: on with --compile")
    group.add_argument("--channels-last", action=bool_flag, default=None, help="default: on with --compile")
    group.add_argument("--fuse-qkv", action=bool_flag, default=None, help="default: on with --compile")
    group.add_argument("--compile-vae", action=bool_flag, default=True, help="default: on")
    group.add_argument("--buckets", help="batch sizes to pad to, e.g. 1,2,4,8,16 (default with --compile)")
    group.add_argument("--compile-resolutions", help="e.g. 512x512,768x512 (default: the native square)")
    group.add_argument("--compile-cache-dir", help="persistent inductor cache folder (TORCHINDUCTOR_CACHE_DIR)")
    group.add_argument("--mega-cache", help="compile-artifacts file: loaded before compiling, saved after")
    group.add_argument("--warmup", action="store_true", help="compile every bucket at load (the worker's start)")
    group.add_argument(
        "--aot-dir", help="with --compile: AOTInductor packages folder (built once, loaded at later starts)"
    )
    group.add_argument("--prompt-cache", type=int, default=256, help="prompt-embedding LRU entries (0: off)")
    group.add_argument(
        "--feature-reuse",
        type=int,
        default=0,
        metavar="N",
        help="DeepCache-style: the full UNet every N-th step only (changes the images; default 0: off)",
    )
    group.add_argument(
        "--fp8", action="store_true", help="FP8 products in the UNet's attention blocks (changes images)"
    )
    group.add_argument(
        "--vae-one-call",
        action=bool_flag,
        default=True,
        help="decode a call's images in one VAE call when memory allows (default: on; CUDA, eager decoder)",
    )
    group.add_argument(
        "--vae-bf16", action="store_true", help="SDXL-type: decode the fp32-upcast VAE in bf16 (changes images)"
    )
    group.add_argument("--levers", action="store_true", help="measure eager, then levers, even with defaults")


def acceleration_from_args(args: argparse.Namespace) -> AccelerationOptions | None:
    """The options the flags ask for; None when no lever flag is given (the plain eager benchmark)."""
    options = AccelerationOptions(
        compile=args.compile,
        autotune=args.autotune,
        cuda_graphs=args.cuda_graphs,
        channels_last=args.channels_last,
        fuse_qkv=args.fuse_qkv,
        compile_vae=args.compile_vae,
        buckets=parse_buckets(args.buckets) if args.buckets is not None else None,
        compile_resolutions=parse_resolutions(args.compile_resolutions) if args.compile_resolutions else None,
        cache_dir=args.compile_cache_dir,
        mega_cache=args.mega_cache,
        warmup=args.warmup,
        prompt_cache_size=args.prompt_cache,
        feature_reuse=args.feature_reuse,
        fp8=args.fp8,
        aot_dir=args.aot_dir,
        vae_one_call=args.vae_one_call,
        vae_bf16=args.vae_bf16,
    )
    if options == AccelerationOptions() and not args.levers:
        return None
    return options
