"""Which speed levers to pull: the options model, its defaults and its parsing (no torch here).

Every default is the service's own, read from its acceleration settings (``AccelerationSettings`` in
``shared/settings.py``, fields named as the options are, one ``SDQ_*`` variable each); a runner built in code
differs only where ``RUNNER_PROFILE`` says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from shared.settings import AccelerationSettings

DEFAULT_BUCKETS = (1, 2, 4, 8, 16)
# torch.compile modes by (autotune, cuda_graphs).
_MODES = {
    (False, False): "default",
    (False, True): "reduce-overhead",
    (True, False): "max-autotune-no-cudagraphs",
    (True, True): "max-autotune",
}

# Where a runner built in code (tests, ``sdq bench worker``, which times each shape's first calls) differs from
# the service worker: it compiles a shape on its first batch instead of warming the smallest before the first job.
RUNNER_PROFILE: dict[str, Any] = {"warmup": False}


def variable_name(option: str) -> str:
    """The ``SDQ_*`` variable that sets ``option`` in the service."""
    return AccelerationSettings.variables()[option]


def service_default(option: str) -> Any:
    """The value ``option`` has in the service when its variable is unset."""
    return AccelerationSettings.model_fields[option].default


def _default(option: str) -> Any:
    return RUNNER_PROFILE[option] if option in RUNNER_PROFILE else service_default(option)


@dataclass(frozen=True)
class AccelerationOptions:
    """Which levers to pull. ``None`` means auto: on when ``compile`` is on (and the device is CUDA).

    The defaults are ``RUNNER_PROFILE`` over the service's (``service_default``); the comments say what each
    option does, ``AccelerationSettings`` describes them for operators.
    """

    compile: bool = _default("compile")
    autotune: bool = _default("autotune")
    cuda_graphs: bool | None = _default("cuda_graphs")
    channels_last: bool | None = _default("channels_last")
    fuse_qkv: bool | None = _default("fuse_qkv")
    compile_vae: bool = _default("compile_vae")
    # Batch sizes to pad up to. None: DEFAULT_BUCKETS when compiling on CUDA, else no padding. (): no padding.
    buckets: tuple[int, ...] | None = _default("buckets")
    # (width, height) pairs that take the compiled path. None: the model's native square.
    compile_resolutions: tuple[tuple[int, int], ...] | None = _default("compile_resolutions")
    # TORCHINDUCTOR_CACHE_DIR for this process (FX graph, AOTAutograd, autotune and Triton caches).
    cache_dir: str | None = _default("cache_dir")
    # A file of torch.compiler cache artifacts: loaded before the first compile, written by save_compile_cache.
    mega_cache: str | None = _default("mega_cache")
    # Compile (and record) the smallest bucket at load time; the other shapes through the runner's warm_next, which
    # the worker calls while it holds no job (not on the first matching batch).
    warmup: bool = _default("warmup")
    prompt_cache_size: int = _default("prompt_cache_size")
    # Quality-trading: run the whole UNet every N-th step only, the outer level in between (0: off, exact).
    feature_reuse: int = _default("feature_reuse")
    # Quality-trading: the last share of the steps without CFG's unconditional pass (0: off, exact; cfgtruncation.py).
    cfg_truncation: float = _default("cfg_truncation")
    # Quality-trading: FP8 (e4m3) matrix products in the UNet's attention blocks (Hopper/Ada tensor cores).
    fp8: bool = _default("fp8")
    # With compile: a folder of AOTInductor packages (torch.export), used instead of torch.compile for the UNet
    # and VAE decoder; built on the first start, loaded (no Dynamo trace) on later ones. CPU too.
    aot_dir: str | None = _default("aot_dir")
    # With compile: a folder of torch's AOT-compiled modules per compiled shape (Dynamo's trace kept on disk):
    # written on the first start, loaded instead of re-tracing at later ones; CUDA graphs kept (precompile.py).
    precompile_dir: str | None = _default("precompile_dir")
    # CUDA, eager decoder: decode a call's images in one VAE call when the free memory holds it (else one at a
    # time). False: always one at a time (the lower peak memory).
    vae_one_call: bool = _default("vae_one_call")
    # Quality-trading, SDXL-type pipelines whose fp16 VAE asks for fp32 (force_upcast): decode in bf16 instead.
    vae_bf16: bool = _default("vae_bf16")

    def __post_init__(self) -> None:
        if self.buckets is not None and any(b < 1 for b in self.buckets):
            raise ValueError(f"bucket sizes must be positive, got {self.buckets}")
        if self.prompt_cache_size < 0:
            raise ValueError("prompt_cache_size must be >= 0")
        if not 0 <= self.cfg_truncation < 1:
            raise ValueError(f"cfg_truncation is a share of the steps, 0 (off) to below 1, got {self.cfg_truncation}")
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


def option_value(option: str, value: Any) -> Any:
    """``value`` as ``option`` holds it: bucket and resolution lists may come as text or as sequences."""
    if option == "buckets":
        if value is None:
            return None
        return parse_buckets(value) if isinstance(value, str) else tuple(int(b) for b in value)
    if option == "compile_resolutions":
        if not value:
            return None
        return parse_resolutions(value) if isinstance(value, str) else tuple((int(w), int(h)) for w, h in value)
    return value


# Options given as text (an ``SDQ_*`` variable, a command-line flag) that ``option_value`` parses.
TEXT_OPTIONS = frozenset({"buckets", "compile_resolutions"})


def options_from_settings(settings: AccelerationSettings) -> AccelerationOptions:
    """The service worker's levers from its acceleration settings (``Settings.acceleration``)."""
    values = {f.name: option_value(f.name, getattr(settings, f.name)) for f in fields(AccelerationOptions)}
    return AccelerationOptions(**values)


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
