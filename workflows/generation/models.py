"""Model loading: the model registry's entries, the built-in ``tiny`` model, random-weight ``sd15``/``sdxl``
architectures, hub ids and paths.

Every model ends up as a diffusers text-to-image pipeline on one device:

- an id of the model registry (``shared/modelregistry.py``): its source at its pinned revision, every weight file
  checked against the entry's sha256 before the pipeline is built (a mismatch raises ``ChecksumMismatch``);

- ``tiny``: real Stable Diffusion classes with small random weights from a fixed seed, saved once as a normal
  diffusers folder in the model cache and loaded with ``from_pretrained`` like any downloaded model. Offline.
- ``shapes``: a small Stable Diffusion pipeline trained by ``training/train_shapes.py``, shipped as a diffusers
  folder in the repository (``models/shapes``) and checked against its registry entry's checksums. Offline.
- ``sd15`` / ``sdxl``: the real architectures with random weights, built from config in memory (benchmarks:
  the compute of a random-weight network equals that of the trained one).
- anything else: a hub id or a local folder, loaded with ``AutoPipelineForText2Image.from_pretrained``.

Nothing here downloads weights unless a hub id is asked for and ``HF_HUB_OFFLINE`` is unset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import diffusers
import torch
import transformers
from botocore.exceptions import BotoCoreError, ClientError
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from huggingface_hub import constants as hub_constants
from huggingface_hub import snapshot_download
from huggingface_hub.utils import HFValidationError
from packaging.version import Version
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from shared.aws import AwsClients
from shared.errors import PermanentError
from shared.modelregistry import ModelEntry, ModelRegistry, checksum_problems, weight_checksums
from shared.settings import get_settings
from shared.shapesmodel import SHAPES_MODEL
from shared.tinymodel import TINY_MODEL_REVISION

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS_NOTE = "sdq random-weight '{arch}' architecture (benchmarks only): its images are noise"
TINY_SEED = 20240601
RANDOM_ARCHITECTURES = ("sd15", "sdxl")
_BUILD_LOCK = threading.Lock()
# The shipped shapes model: a data folder at the repository root, beside the service packages and out of their
# Lambda bundles (15 MB of weights only a worker reads).
SHAPES_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / SHAPES_MODEL

Precision = Literal["fp16", "bf16", "fp32"]
_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

# A diffusers text-to-image pipeline. Typed as Any on purpose: diffusers registers components at run time
# (pipe.unet, pipe.scheduler, ...), and under mypy its public names resolve to dummy stand-in classes.
Text2ImagePipeline: TypeAlias = Any


class ModelNotFoundError(PermanentError):
    """The model name is neither built in, nor a local diffusers folder, nor a reachable hub repository."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"Model {name!r} could not be loaded: {reason}")
        self.name = name
        self.reason = reason


class ChecksumMismatch(PermanentError):
    """A registered model's weight files are not the ones its registry entry lists: the model is not served."""

    def __init__(self, model_id: str, revision: str, problems: dict[str, str]) -> None:
        listed = "; ".join(f"{path}: {problem}" for path, problem in sorted(problems.items()))
        super().__init__(f"Model {model_id!r} revision {revision!r} failed its checksums: {listed}")
        self.model_id = model_id
        self.revision = revision
        self.problems = problems


class WrongArchitecture(PermanentError):
    """A registered model's folder holds another pipeline than its entry's ``architecture``: it is not served."""

    def __init__(self, model_id: str, architecture: str, pipeline_class: str) -> None:
        super().__init__(
            f"Model {model_id!r} is registered as {architecture!r} but its folder holds a {pipeline_class}"
        )
        self.model_id = model_id
        self.architecture = architecture
        self.pipeline_class = pipeline_class


# The diffusers pipeline class (model_index.json's ``_class_name``) of each registry architecture.
ARCHITECTURE_PIPELINES: dict[str, str] = {
    "tiny": "StableDiffusionPipeline",
    "sd15": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
}


@dataclass(frozen=True)
class LoadedModel:
    """A text-to-image pipeline placed on its device, with what the worker needs to know about it."""

    name: str
    pipeline: Text2ImagePipeline
    device: torch.device
    dtype: torch.dtype
    # Random weights (tiny, sd15, sdxl): outputs are noise and must say so.
    is_noise_model: bool
    note: str | None
    # Where the weights came from: a folder, a hub id, or "random:<arch>".
    source: str
    # The registry entry's pinned revision; None for a model loaded outside the registry (a path or hub id).
    revision: str | None = None


# --- device and precision -------------------------------------------------------------------------------


class GpuUnavailable(PermanentError):
    """A worker that must run on a GPU finds none CUDA can use (no GPU, or a driver older than the image's CUDA)."""


def require_gpu() -> None:
    """Raise GpuUnavailable unless CUDA can use a GPU here."""
    if not torch.cuda.is_available():
        raise GpuUnavailable(
            f"no CUDA GPU is usable (torch {torch.__version__}, built for CUDA {torch.version.cuda}): the host's driver"
            " may be older than this CUDA needs, or the task was given no GPU"
        )


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(device: torch.device, precision: Precision | None = None) -> torch.dtype:
    """fp16 on CUDA and fp32 on CPU unless ``precision`` says otherwise (bf16 is the CUDA alternative)."""
    if precision is not None:
        if precision not in _DTYPES:
            raise ValueError(f"precision must be one of {sorted(_DTYPES)}, not {precision!r}")
        return _DTYPES[precision]
    return torch.float16 if device.type == "cuda" else torch.float32


def precision_name(dtype: torch.dtype) -> str:
    """``fp16`` / ``bf16`` / ``fp32`` for a torch dtype (for reports)."""
    return next((name for name, d in _DTYPES.items() if d == dtype), str(dtype))


# --- the model cache and the tiny model -----------------------------------------------------------------


def model_cache_root() -> Path:
    """The ``model_cache`` setting (``SDQ_MODEL_CACHE``), else ``~/.cache/sdq/models`` (``$XDG_CACHE_HOME``)."""
    explicit = get_settings().worker.model_cache
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "sdq" / "models"


def tiny_model_dir(cache_root: Path | None = None) -> Path:
    """Where the tiny model's diffusers folder lives (it may not exist yet)."""
    return (cache_root or model_cache_root()) / f"tiny-{TINY_MODEL_REVISION}"


def ensure_tiny_model(cache_root: Path | None = None) -> Path:
    """Build and save the tiny model unless its folder exists; return the folder.

    The folder is written under a temporary name and renamed into place, so a reader never sees half a
    model and two processes racing both end up with one complete folder (the loser drops its copy).
    """
    target = tiny_model_dir(cache_root)
    if (target / "model_index.json").is_file():
        return target
    # The lock covers threads of this process (the seeded build uses the global RNG); the rename covers
    # other processes.
    with _BUILD_LOCK:
        if (target / "model_index.json").is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
        try:
            logger.info("building the tiny model in %s", target)
            pipe = build_tiny_pipeline()
            with _quiet_progress_bars():
                pipe.save_pretrained(staging, safe_serialization=True)
            try:
                staging.rename(target)
            except OSError:
                # Another process renamed its copy first; both were built from the same seed.
                if not (target / "model_index.json").is_file():
                    raise
                logger.info("another process built the tiny model first; using %s", target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tiny_pipeline(seed: int = TINY_SEED) -> Text2ImagePipeline:
    """The tiny model in memory: SD 1.x classes, ~1.3 M parameters, deterministic random weights (another
    ``seed`` gives another model of the same shape).

    Latents are 1/8 of the image side like real SD (the VAE has four blocks), so request sizes map to the
    same latent shapes and code paths as a real model.
    """
    with torch.random.fork_rng(devices=[]):
        # Fixed seed in a forked RNG: the same weights on every machine, the caller's RNG untouched.
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 32, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=256,
        )
        tokenizer = build_byte_level_clip_tokenizer()
        text_encoder = CLIPTextModel(tiny_text_encoder_config(tokenizer))
    return _sd_pipeline(vae, text_encoder, tokenizer, unet)


def tiny_text_encoder_config(tokenizer: Any) -> CLIPTextConfig:
    """The tiny model's CLIP text encoder: 2 layers of width 32, 77 positions, ``tokenizer``'s special ids."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes, strict=True)}


def _sd_pipeline(vae: Any, text_encoder: Any, tokenizer: Any, unet: Any) -> Any:
    """A Stable Diffusion (1.x/2.x layout) pipeline from its parts, without a safety checker."""
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(_SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_byte_level_clip_tokenizer() -> CLIPTokenizer:
    """A CLIPTokenizer without merges: every byte is a token (alone and with ``</w>``), plus start/end.

    Built from files because that is the one constructor CLIPTokenizer shares across transformers 4 and 5.
    """
    symbols = list(_bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory(prefix="sdq-tokenizer-") as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        tokenizer: CLIPTokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    return tokenizer


# --- random-weight real architectures (benchmarks) ------------------------------------------------------

# Configs copied from the published model_index components (runwayml SD 1.5, stabilityai SDXL base 1.0).
_SD15_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}
_SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}
_SD_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
_CLIP_L: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
_SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}
_SDXL_VAE: dict[str, Any] = {
    **_SD_VAE,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
_OPENCLIP_BIGG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}
_SDXL_SCHEDULER: dict[str, Any] = {**_SD15_SCHEDULER, "timestep_spacing": "leading", "interpolation_type": "linear"}


def build_random_pipeline(
    arch: Literal["sd15", "sdxl"], device: torch.device, dtype: torch.dtype, seed: int = 0
) -> Text2ImagePipeline:
    """The real SD 1.5 or SDXL architecture with random weights, created directly on ``device``.

    The tokenizers are the byte-level ones of the tiny model (the real vocabularies would need a download);
    prompts still pad to 77 tokens, so the text encoders do the same work.
    """
    if arch not in RANDOM_ARCHITECTURES:
        raise ValueError(f"arch must be one of {RANDOM_ARCHITECTURES}, not {arch!r}")
    tokenizer = build_byte_level_clip_tokenizer()
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    devices = [device.index or 0] if device.type == "cuda" else []
    # Creating the modules under the device context initialises weights there: seconds, not minutes, for SDXL.
    # (Schedulers and tokenizers stay outside it: they keep their tables on the CPU.)
    with torch.random.fork_rng(devices=devices), device:
        torch.manual_seed(seed)
        vae = AutoencoderKL(**(_SD_VAE if arch == "sd15" else _SDXL_VAE))
        text_encoder = CLIPTextModel(CLIPTextConfig(**_CLIP_L, **ids))
        unet = UNet2DConditionModel(**(_SD15_UNET if arch == "sd15" else _SDXL_UNET))
        text_encoder_2 = (
            CLIPTextModelWithProjection(CLIPTextConfig(**_OPENCLIP_BIGG, **ids)) if arch == "sdxl" else None
        )
    pipe: Text2ImagePipeline
    if text_encoder_2 is None:
        pipe = _sd_pipeline(vae, text_encoder, tokenizer, unet)
    else:
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=build_byte_level_clip_tokenizer(),
            unet=unet,
            scheduler=EulerDiscreteScheduler.from_config(_SDXL_SCHEDULER),
            # The invisible watermark needs an extra package and is irrelevant to random weights.
            add_watermarker=False,
        )
    # diffusers warns on every dtype cast of a freshly built model (even with nothing to keep in fp32).
    with quiet_logger("diffusers.models.modeling_utils"):
        return pipe.to(device=device, dtype=dtype)


# --- loading --------------------------------------------------------------------------------------------


def load_model(
    name: str,
    *,
    device: str | torch.device | None = None,
    precision: Precision | None = None,
    cache_root: Path | None = None,
    registry: ModelRegistry | None = None,
    s3: S3Client | None = None,
) -> LoadedModel:
    """Load ``name`` onto ``device``: an id of ``registry`` (default: the configured one, which always knows
    ``tiny``), else ``sd15``, ``sdxl``, a hub id or a local folder. ``s3`` fetches an S3-sourced entry (default: a
    client from the settings).

    Raises ``ModelNotFoundError`` when a folder does not exist or a hub id cannot be found (including when
    ``HF_HUB_OFFLINE`` is set and the model is not in the local hub cache), ``ChecksumMismatch`` when a
    registered model's weight files differ from its entry, ``WrongArchitecture`` when its folder holds another
    pipeline than its entry's architecture. Other load errors propagate.
    """
    dev = resolve_device(device)
    dtype = resolve_dtype(dev, precision)
    note: str | None = None
    noise = False
    revision: str | None = None
    entry = (registry or get_settings().registry).get(name)
    if entry is not None:
        folder = registered_folder(entry, cache_root, s3=s3)
        verify_weights(entry, folder)
        verify_architecture(entry, folder)
        source, revision = str(folder), entry.revision
        pipe = _from_pretrained(name, source, dtype, local_only=True)
        if entry.source_kind == "builtin":
            note, noise = entry.note, entry.makes_noise
    elif name in RANDOM_ARCHITECTURES:
        source = f"random:{name}"
        pipe = build_random_pipeline(name, dev, dtype)  # type: ignore[arg-type]
        note, noise = RANDOM_WEIGHTS_NOTE.format(arch=name), True
    else:
        source = _local_or_hub(name)
        pipe = _from_pretrained(name, source, dtype, local_only=_hub_offline())
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    # On CUDA, decode one image at a time unless told otherwise: the VAE's full-resolution activations, not
    # the UNet, set the peak memory of a large batch. The runner decides per call whether the free memory
    # allows one VAE call for the whole batch (PipelineRunner.decodes_in_one_call). VAEs without slicing (VQ,
    # asymmetric) have no such attribute, and their enable_slicing() raises: they are left as they are.
    if dev.type == "cuda" and hasattr(pipe.vae, "use_slicing"):
        pipe.vae.use_slicing = True
    logger.info("loaded model %s (revision %s) from %s on %s (%s)", name, revision, source, dev, precision_name(dtype))
    return LoadedModel(
        name=name,
        pipeline=pipe,
        device=dev,
        dtype=dtype,
        is_noise_model=noise,
        note=note,
        source=source,
        revision=revision,
    )


def registered_folder(entry: ModelEntry, cache_root: Path | None = None, *, s3: S3Client | None = None) -> Path:
    """The local diffusers folder of a registry entry: the built tiny model, the local path, the hub snapshot of
    the pinned revision (only the listed weight files and the configs are fetched), or the S3 prefix's copy in
    the model cache (fetched once per revision).

    Raises ``ModelNotFoundError`` when it is missing or cannot be fetched.
    """
    kind = entry.source_kind
    if kind == "builtin" and entry.location == SHAPES_MODEL:
        if not (SHAPES_MODEL_DIR / "model_index.json").is_file():
            raise ModelNotFoundError(entry.id, f"the shipped folder {SHAPES_MODEL_DIR} is missing")
        return SHAPES_MODEL_DIR
    if kind == "builtin":
        return ensure_tiny_model(cache_root)
    if kind == "local":
        folder = Path(entry.location)
        if not (folder / "model_index.json").is_file():
            raise ModelNotFoundError(entry.id, f"{folder} is not a diffusers pipeline folder (no model_index.json)")
        return folder
    if kind == "hub":
        try:
            with _quiet_progress_bars():
                snapshot = snapshot_download(
                    entry.location,
                    revision=entry.revision,
                    allow_patterns=[*entry.checksums, "*.json", "*.txt"],
                    local_files_only=_hub_offline(),
                )
        except (HFValidationError, OSError) as exc:  # hub errors are OSErrors (missing repo, revision, offline)
            raise ModelNotFoundError(entry.id, f"revision {entry.revision} not fetched from the hub: {exc}") from exc
        return Path(snapshot)
    # Built here, when an S3 model is loaded, unless the caller brought one.
    return fetch_s3_model(entry, s3 or AwsClients(get_settings()).s3(), cache_root)


def s3_model_dir(entry: ModelEntry, cache_root: Path | None = None) -> Path:
    """Where an S3-sourced entry's revision is copied: one folder per id and revision in the model cache."""
    name = f"{entry.id}\0{entry.revision}"
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{entry.id}-{entry.revision}")[:80]
    return (
        (cache_root or model_cache_root()) / "registry" / f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    )


def fetch_s3_model(entry: ModelEntry, s3: S3Client, cache_root: Path | None = None) -> Path:
    """Copy every object under an entry's S3 prefix into :func:`s3_model_dir`, unless it is there already.

    Written under a temporary name and renamed into place, like the tiny model, so a half copy is never used.
    Raises ``ModelNotFoundError`` when the prefix holds no diffusers folder or S3 refuses.
    """
    target = s3_model_dir(entry, cache_root)
    if (target / "model_index.json").is_file():
        return target
    bucket, _, prefix = entry.location.partition("/")
    prefix = prefix.strip("/") + "/"
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.fetching-", dir=target.parent))
    try:
        logger.info("fetching model %s revision %s from %s", entry.id, entry.revision, entry.source)
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    relative = Path(obj["Key"][len(prefix) :])
                    if not relative.parts or ".." in relative.parts or obj["Key"].endswith("/"):
                        continue
                    destination = staging / relative
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    s3.download_file(bucket, obj["Key"], str(destination))
        except (ClientError, BotoCoreError) as exc:
            raise ModelNotFoundError(entry.id, f"could not fetch {entry.source}: {exc}") from exc
        if not (staging / "model_index.json").is_file():
            raise ModelNotFoundError(entry.id, f"no diffusers folder (model_index.json) under {entry.source}")
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model_index.json").is_file():  # another process renamed its copy first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def verify_architecture(entry: ModelEntry, folder: Path) -> None:
    """Check that ``folder`` holds the pipeline of ``entry.architecture``; raises ``WrongArchitecture`` (logged)."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    found = str(index.get("_class_name"))
    if found != ARCHITECTURE_PIPELINES[entry.architecture]:
        error = WrongArchitecture(entry.id, entry.architecture, found)
        logger.error("refusing to serve model %s: %s", entry.id, error)
        raise error


def verify_weights(entry: ModelEntry, folder: Path) -> None:
    """Check every weight file in ``folder`` against ``entry.checksums``: each listed file present with its
    sha256, and no weight file the entry does not list. Raises ``ChecksumMismatch`` (and logs it) otherwise.

    An entry without checksums (the built-in model, built here from a seed) is not checked.
    """
    if not entry.checksums:
        return
    unlisted = "a weight file the registry entry does not list"
    problems = checksum_problems(entry.checksums, weight_checksums(folder), unlisted=unlisted)
    if problems:
        error = ChecksumMismatch(entry.id, entry.revision, problems)
        logger.error("refusing to serve model %s: %s", entry.id, error)
        raise error


def _hub_offline() -> bool:
    # Read at call time too: huggingface_hub reads HF_HUB_OFFLINE only once, at import.
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"} or bool(hub_constants.HF_HUB_OFFLINE)


def _local_or_hub(name: str) -> str:
    """``name`` as a local folder if it is one, else as a hub id; a path-like name that is missing fails."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(name, f"{path} is not a diffusers pipeline folder (no model_index.json)")
        return str(path)
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(name, f"no such folder: {path}")
    return name


# diffusers 0.42 renamed from_pretrained's ``torch_dtype`` to ``dtype`` (the old name warns); older releases
# know only ``torch_dtype``.
_DTYPE_KWARG = "dtype" if Version(diffusers.__version__).release >= (0, 42) else "torch_dtype"


def _from_pretrained(name: str, source: str, dtype: torch.dtype, *, local_only: bool) -> Text2ImagePipeline:
    from diffusers import AutoPipelineForText2Image  # every pipeline family: imported by the loads that need it

    try:
        with _quiet_progress_bars(), warnings.catch_warnings():
            # diffusers 0.42 still passes this argument to huggingface_hub 1.x, which warns on every hub load.
            warnings.filterwarnings(
                "ignore", message="The `local_dir_use_symlinks` argument is deprecated", category=UserWarning
            )
            pipe: Text2ImagePipeline = AutoPipelineForText2Image.from_pretrained(
                source, local_files_only=local_only, **{_DTYPE_KWARG: dtype}
            )
    except HFValidationError as exc:
        raise ModelNotFoundError(name, f"not a valid hub id or local folder ({exc})") from exc
    except OSError as exc:
        # diffusers reports a missing repository, a missing file and an offline miss all as OSError.
        where = "in the local hub cache (HF_HUB_OFFLINE is set)" if local_only else "on the hub"
        raise ModelNotFoundError(name, f"not found {where}: {exc}") from exc
    return pipe


@contextmanager
def quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise one library logger's level for the duration of the block."""
    log = logging.getLogger(name)
    previous = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(previous)


@contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Hide diffusers' and transformers' load/save bars (worker logs are JSON lines), then restore them."""
    diffusers_on = diffusers.utils.logging.is_progress_bar_enabled()
    transformers_on = transformers.utils.logging.is_progress_bar_enabled()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if diffusers_on:
            diffusers.utils.logging.enable_progress_bar()
        if transformers_on:
            transformers.utils.logging.enable_progress_bar()
