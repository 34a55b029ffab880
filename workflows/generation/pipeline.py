"""The pipeline runner: one loaded model, one diffusers call per batch of compatible jobs; ``ModelRunners`` holds
several models on one device and runs each batch on its model's runner.

Reproducibility: image ``i`` of a job is drawn from its own ``torch.Generator`` seeded ``seed + i``, and the
pipeline gets the list of generators, so the initial latents (and any scheduler noise) of an image do not
depend on which other jobs shared its batch. Pixels then match within one level of rounding (measured on CPU
and on an H100 with the tiny model; a kernel picked for another batch size may round differently). A seed
gives different images on CPU and CUDA: each device has its own random number generator.

Speed levers (``acceleration/``: torch.compile, CUDA graphs, channels_last, fused QKV, batch buckets, compile
caches, prompt-embedding cache) come in through ``AccelerationOptions``; a batch padded up to a bucket size gets
extra images from their own generators, and they are dropped before the result is returned.

The runner is not thread-safe (diffusers schedulers keep per-call state): use it from one thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)
from PIL import Image

from shared.contracts import DEFAULT_STRENGTH, LoraSet, Mode
from shared.errors import PermanentError, RetryableError
from shared.loraregistry import LoraRegistry
from shared.settings import get_settings
from workflows.generation.acceleration import AccelerationOptions, Accelerator, cfgtruncation, upcasts_vae_per_call
from workflows.generation.loras import LoraAdapters
from workflows.generation.models import LoadedModel, Precision, Text2ImagePipeline, load_model, quiet_logger
from workflows.generation.previews import Captured, LatentFormat, capture, latent_format_for

logger = logging.getLogger(__name__)

# The closed set of scheduler names a request may ask for. dpmpp_2m is DPMSolverMultistep's default
# (dpmsolver++, order 2); lms needs scipy.
SCHEDULERS: dict[str, type] = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "pndm": PNDMScheduler,
    "lms": LMSDiscreteScheduler,
}

SEED_MODULUS = 2**32

# CUDA batch sizing (max_batch_images), from H100 measurements with `sdq bench worker` (fp16, SDPA):
# - UNet memory per image of a CFG batch, per latent pixel and UNet first-block channel, in units of the
#   dtype's size: SD 1.5 at 512 px grew 131 MiB per image (52 units); 64 leaves a margin.
_UNET_BYTES_PER_LATENT_PIXEL_CHANNEL = 64
# - One sliced VAE decode, per image pixel and VAE first-block channel, in units of the VAE's dtype size:
#   SDXL's fp32 decode at 1024 px peaked about 5 GiB above the weights (~10 units). A batch decoded in one
#   call costs about that per image: SD 1.5's fp16 decode of 16 images at 512 px peaked at 7.8 GB (7.2 units
#   each), and took 0.235 s against 0.419 s one image at a time (eager, one H200; compiled: 0.097 against
#   0.119 s; benchmarks/scripts/vae_decode.py; summary in benchmarks/results/2026-11-29-h200/).
_VAE_BYTES_PER_PIXEL_CHANNEL = 10
# - Throughput stops growing near this many latent pixels per call: SD 1.5 512 px gained 10% from 8 to 16
#   images, SDXL 1024 px 3% from 4 to 8, while each call's latency doubled.
_SATURATING_LATENT_PIXELS = 64 * 64 * 16
# - Left free for allocator fragmentation and cuDNN/cuBLAS workspaces.
_CUDA_HEADROOM_BYTES = 2 * 2**30


class GenerationCancelled(Exception):
    """Raised by an ``on_step`` callback to stop a running batch; the runner re-raises it."""


class GenerationOOM(RetryableError):
    """The device ran out of memory for this batch; a smaller batch may fit."""

    def __init__(self, images: int, width: int, height: int, detail: str) -> None:
        super().__init__(f"out of memory generating {images} image(s) at {width}x{height}: {detail}")
        self.images = images
        self.width = width
        self.height = height


class ModelNotServed(PermanentError):
    """A batch names a model this runner has not loaded: generating it with another model would mislabel it."""

    def __init__(self, model: str | None, served: frozenset[str]) -> None:
        super().__init__(f"model {model!r} is not loaded here; this worker serves {sorted(served)}")
        self.model = model
        self.served = served


class UnknownScheduler(ValueError):
    """A scheduler name outside ``SCHEDULERS``."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown scheduler {name!r}; expected one of {sorted(SCHEDULERS)}")
        self.name = name


@dataclass(frozen=True)
class ImageJob:
    """One job's share of a batch: ``num_images`` images of one prompt, image ``i`` seeded ``seed + i``; ``image``
    (RGB) and ``mask`` (L, white repainted) at the batch's size for the image and inpaint modes."""

    key: str
    prompt: str
    negative_prompt: str
    seed: int
    num_images: int
    image: Image.Image | None = None
    mask: Image.Image | None = None


@dataclass(frozen=True)
class BatchShape:
    """What every job of a batch has in common (the batcher's grouping key). ``model`` is the id every job
    names; None (benchmarks, warm-up) means the runner's own model. ``loras``: the LoRA set every job applies
    (``GenerationRequest.lora_set``)."""

    width: int
    height: int
    steps: int
    guidance_scale: float
    scheduler: str
    model: str | None = None
    mode: Mode = "text"
    strength: float | None = None  # image and inpaint (None: the mode's default)
    loras: LoraSet = ()


StepCallback = Callable[[int, int], None]


@runtime_checkable
class LatentTap(Protocol):
    """An ``on_step`` callback that also takes previews: asked after each step whether it wants the latents, it
    gets them as a :class:`~workflows.generation.previews.Captured` (a device-side shrink and an asynchronous copy
    to the host, one row per job: its first image) to finish off the GPU thread."""

    def __call__(self, step: int, total: int) -> None: ...

    def wants_latents(self, step: int, total: int) -> bool: ...

    def take_latents(self, step: int, total: int, latents: Captured) -> None: ...


class PipelineRunner:
    """Holds one loaded pipeline and runs one pipeline call per batch."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        cpu_max_batch_images: int = 4,
        max_batch_cap: int = 16,
        acceleration: AccelerationOptions | None = None,
        lora_registry: LoraRegistry | None = None,
    ) -> None:
        """``lora_registry``: the LoRAs its batches may apply (default: the configured registry)."""
        self._model = model
        self._pipe: Text2ImagePipeline = model.pipeline
        self._mode_pipes: dict[Mode, Any] = {"text": self._pipe}
        self._base_scheduler_config = self._pipe.scheduler.config
        self._schedulers: dict[str, Any] = {}
        settings = get_settings()
        self._loras = LoraAdapters(
            self._pipe,
            model.name,
            lora_registry or settings.loras,
            max_bytes=settings.worker.lora_cache_mb * 2**20,
        )
        self._cpu_max_batch_images = cpu_max_batch_images
        self._max_batch_cap = max_batch_cap
        self._accel = Accelerator(self._pipe, model.device, acceleration, self.native_size)
        self._latent_format = latent_format_for(self._pipe)
        if hasattr(self._pipe.vae, "use_slicing"):
            _fall_back_to_one_image_decodes(self._pipe.vae)
        if self._accel.options.warmup:
            self.warm_next()  # the smallest bucket now; the worker warms the others while it holds no job

    @classmethod
    def load(
        cls,
        model_name: str,
        *,
        device: str | torch.device | None = None,
        precision: Precision | None = None,
        cache_root: Path | None = None,
        cpu_max_batch_images: int = 4,
        acceleration: AccelerationOptions | None = None,
    ) -> PipelineRunner:
        """Load ``model_name`` (see ``models.load_model``) and wrap it; raises ``ModelNotFoundError``.

        ``acceleration`` picks the speed levers (default: none but the prompt-embedding cache); with
        ``warmup`` set, every compiled shape is compiled here, before the first job.
        """
        model = load_model(model_name, device=device, precision=precision, cache_root=cache_root)
        return cls(model, cpu_max_batch_images=cpu_max_batch_images, acceleration=acceleration)

    def accelerate(self, options: AccelerationOptions) -> dict[str, Any]:
        """Apply ``options`` to this already loaded runner (benchmarks: eager first, then the levers).

        Returns the acceleration report. A model that was compiled or changed by a lever cannot go back.
        """
        if self._accel.active:
            raise RuntimeError("this runner's model is already accelerated; load a fresh one")
        self._accel = Accelerator(self._pipe, self.device, options, self.native_size)
        if options.warmup:
            self.warm_next()
        return self.acceleration

    @property
    def acceleration(self) -> dict[str, Any]:
        """What the levers did: options, applied, skipped (with reasons), apply and warm-up times, cache stats,
        and with feature reuse how many UNet calls ran in full and shallow."""
        report = self._accel.report.to_dict()
        cache = self._accel.prompt_cache
        report["prompt_cache"] = (
            {"entries": len(cache), "hits": cache.hits, "misses": cache.misses} if cache is not None else None
        )
        reuse = self._accel.feature_reuse
        report["feature_reuse_steps"] = (
            {"interval": reuse.interval, "full": reuse.full_steps, "shallow": reuse.shallow_steps} if reuse else None
        )
        report["buckets"] = list(self._accel.buckets)
        report["compiled_resolutions"] = [list(r) for r in self._accel.resolutions]
        return report

    def warmup(self, sizes: Sequence[int] | None = None, steps: int = 3) -> dict[str, float]:
        """Compile every bucket (or ``sizes``) at each compiled resolution, CFG on; seconds per shape.

        Nothing happens without a compiled model. Three steps: the compile, then the CUDA graph recording.
        """
        self._accel.warmup(partial(self._warm_call, steps), sizes)
        return dict(self._accel.report.warmup_s)

    def warm_next(self, steps: int = 3) -> bool:
        """Compile (and record) the smallest compiled shape no call has run yet, as :meth:`warmup` does; False
        when every one has run (or nothing is compiled)."""
        return self._accel.warm_next(partial(self._warm_call, steps))

    @property
    def cold_shapes(self) -> list[tuple[int, int, int]]:
        """The compiled ``(images, width, height)`` shapes no call has run yet (``warm_next`` warms them)."""
        return self._accel.cold_shapes()

    def _warm_call(self, steps: int, size: int, width: int, height: int) -> None:
        jobs = [ImageJob(f"warmup{i}", "warm-up", "", seed=i, num_images=1) for i in range(size)]
        self.generate(jobs, BatchShape(width, height, steps, 7.5, "euler"))

    @property
    def model_name(self) -> str:
        return self._model.name

    @property
    def revision(self) -> str | None:
        """The model's pinned revision (its registry entry's), or None for a model outside the registry."""
        return self._model.revision

    @property
    def models(self) -> frozenset[str]:
        """The model ids this runner generates for: its one model."""
        return frozenset({self._model.name})

    @property
    def loras(self) -> LoraAdapters:
        """The LoRA adapters loaded into its pipeline."""
        return self._loras

    @property
    def is_noise_model(self) -> bool:
        return self._model.is_noise_model

    @property
    def note(self) -> str | None:
        """What every output of a noise model must carry (``TINY_MODEL_NOTE`` for tiny), else None."""
        return self._model.note

    @property
    def device(self) -> torch.device:
        return self._model.device

    def device_name(self) -> str | None:
        """The GPU's name (``NVIDIA H100 80GB HBM3``), or None on CPU."""
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None

    @property
    def dtype(self) -> torch.dtype:
        return self._model.dtype

    @property
    def pipeline(self) -> Text2ImagePipeline:
        return self._pipe

    def pipeline_for(self, mode: Mode) -> Any:
        """The pipeline that runs ``mode``, built once with diffusers' ``from_pipe``: it shares every component of
        the loaded one (same weights, same compiled or patched modules; no second copy). Inpainting takes
        ``StableDiffusionInpaintPipeline`` (or SDXL's): a UNet with 9 input channels (an inpainting model) gets the
        mask and masked image as inputs, a text-to-image UNet with 4 (tiny, SD 1.5) gets diffusers' blending path:
        after each step the unmasked latents are replaced by the input's, noised to the next step's level."""
        pipe = self._mode_pipes.get(mode)
        if pipe is None:
            # Imported on a first image job: diffusers' auto pipelines import every pipeline family it has
            # (ControlNet, Kandinsky, ...), seconds of a worker's start that a text-to-image worker never needs.
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            auto: Any = AutoPipelineForInpainting if mode == "inpaint" else AutoPipelineForImage2Image
            pipe = self._mode_pipes[mode] = auto.from_pipe(self._pipe)
        return pipe

    @property
    def native_size(self) -> int:
        """The side the model was trained at (512 for SD 1.5, 1024 for SDXL, 256 for tiny)."""
        return int(self._pipe.unet.config.sample_size * self._pipe.vae_scale_factor)

    def scheduler(self, name: str) -> Any:
        """The cached scheduler instance for ``name``, built from the model's own scheduler config."""
        if name not in SCHEDULERS:
            raise UnknownScheduler(name)
        if name not in self._schedulers:
            scheduler_class: Any = SCHEDULERS[name]
            self._schedulers[name] = scheduler_class.from_config(self._base_scheduler_config)
        return self._schedulers[name]

    def max_batch_images(self, width: int | None = None, height: int | None = None) -> int:
        """How many images of ``width`` x ``height`` (default: the native size) one call should take.

        CUDA: the fewest of what fits in free memory (an estimate of the UNet's memory per image, scaled by
        latent area and UNet width, plus one sliced VAE decode), what saturates the GPU (more latent pixels
        per call add latency, not throughput) and ``max_batch_cap``. CPU: the configured default.
        """
        if self.device.type != "cuda":
            return self._cpu_max_batch_images
        side = self.native_size
        w, h = width or side, height or side
        scale = int(self._pipe.vae_scale_factor)
        latent_pixels = (w // scale) * (h // scale)
        element = self.dtype.itemsize
        unet_channels = int(self._pipe.unet.config.block_out_channels[0])
        per_image = _UNET_BYTES_PER_LATENT_PIXEL_CHANNEL * latent_pixels * unet_channels * element
        # The limit leaves room for one image's VAE decode; a whole batch decodes in one call only when the
        # memory free at call time allows it (decodes_in_one_call).
        by_memory = int((self._free_cuda_bytes() - _CUDA_HEADROOM_BYTES - self._vae_decode_bytes(w, h)) // per_image)
        by_compute = _SATURATING_LATENT_PIXELS // latent_pixels
        limit = max(1, min(self._max_batch_cap, by_memory, by_compute))
        # With batch buckets, a limit between two buckets would pad past it: stop at the bucket below.
        return self._accel.cap_batch_limit(limit)

    def decodes_in_one_call(self, images: int, width: int, height: int) -> bool:
        """Whether a call of ``images`` images decodes them in one VAE call rather than one at a time.

        One call is faster (eager SD 1.5 at 512 px, 16 images on one H200: 0.235 s against 0.419 s) but holds
        every image's full-resolution activations at once. On CUDA it is taken when that fits in the memory
        free before the call (the UNet's activations are released before the decode; with CUDA graphs only the
        device's free memory counts), the call is not at a compiled decoder's compiled shape (a graph made for
        one image), and the ``vae_one_call`` option is on; the CPU never slices.
        """
        if self.device.type != "cuda":
            return True
        if not self._accel.options.vae_one_call:
            return False
        if self._accel.static_decoder and self._accel.uses_compiled_path(width, height, images):
            return False
        # Free blocks of a CUDA-graph pool are not free to an eager decode: count only the device's free memory.
        free = self._free_cuda_bytes(include_reserved=not self._accel.cuda_graphs)
        return fits_in_one_decode(images, self._vae_decode_bytes(width, height), free)

    def _vae_decode_bytes(self, width: int, height: int) -> int:
        """Estimated peak memory of one image's VAE decode (in fp32 when the pipeline upcasts its VAE per call)."""
        vae = self._pipe.vae
        element = 4 if upcasts_vae_per_call(self._pipe) else self.dtype.itemsize
        return _VAE_BYTES_PER_PIXEL_CHANNEL * width * height * int(vae.config.block_out_channels[0]) * element

    def _free_cuda_bytes(self, include_reserved: bool = True) -> int:
        free, _total = torch.cuda.mem_get_info(self.device)
        if include_reserved:
            # Memory this process's allocator holds but has not handed out is free for the next batch too.
            free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return int(free)

    def generate(
        self,
        jobs: Sequence[ImageJob],
        shape: BatchShape,
        on_step: StepCallback | None = None,
    ) -> dict[str, list[Image.Image]]:
        """Run one pipeline call for all ``jobs``; return each job's images by key, in seed order.

        ``on_step(step, total)`` is called after every denoising step (1-based). If it raises
        ``GenerationCancelled`` the call stops at once (no VAE decode) and the exception propagates. An
        ``on_step`` that is a :class:`LatentTap` also gets each job's first latent row at the steps it asks for.
        ``shape.mode`` picks the pipeline (:meth:`pipeline_for`); inpainting's results keep the input's pixels
        where the mask is black (:func:`_keep_unmasked`).
        ``shape.loras`` is made the active LoRA set first (:meth:`LoraAdapters.activate`, whose errors propagate).
        Raises ``ModelNotServed`` when ``shape.model`` names another model than this runner's, ``GenerationOOM``
        when the device runs out of memory, ``UnknownScheduler`` for a name outside ``SCHEDULERS``,
        ``ValueError`` for an empty or inconsistent batch (a job without its mode's inputs too); other errors
        propagate.
        """
        if shape.model is not None and shape.model != self.model_name:
            raise ModelNotServed(shape.model, self.models)
        if not jobs:
            raise ValueError("a batch needs at least one job")
        keys = [job.key for job in jobs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"job keys must be unique within a batch: {keys}")
        if any(job.num_images < 1 for job in jobs):
            raise ValueError("every job needs num_images >= 1")

        prompts: list[str] = []
        negatives: list[str] = []
        generators: list[torch.Generator] = []
        for job in jobs:
            for i in range(job.num_images):
                prompts.append(job.prompt)
                negatives.append(job.negative_prompt)
                generators.append(torch.Generator(self.device).manual_seed((job.seed + i) % SEED_MODULUS))

        real = len(prompts)
        # Pad to the bucket size (static shapes for a compiled model) with copies of the last prompt, each
        # padded image on its own generator: the real images' latents do not change; the extras are dropped.
        padded = self._accel.padded_size(real, shape.width, shape.height)
        for i in range(padded - real):
            prompts.append(prompts[-1])
            negatives.append(negatives[-1])
            generators.append(torch.Generator(self.device).manual_seed(i))

        inputs = _mode_kwargs(shape, jobs, padded)
        pipe = self.pipeline_for(shape.mode)
        # Assigning the attribute is diffusers' documented way to swap schedulers; the weights stay put.
        pipe.scheduler = self.scheduler(shape.scheduler)
        vae = pipe.vae
        if hasattr(vae, "use_slicing"):  # VAEs without slicing (VQ, asymmetric) decode whole batches anyway
            vae.use_slicing = not self.decodes_in_one_call(padded, shape.width, shape.height)
        vae_dtype = vae.dtype
        kwargs: dict[str, Any] = {
            **inputs,
            "num_inference_steps": shape.steps,
            "guidance_scale": shape.guidance_scale,
            "generator": generators,
            "output_type": "pil",
        }
        step_callback = None
        if on_step is not None:
            first_rows = [sum(j.num_images for j in jobs[:n]) for n in range(len(jobs))]
            step_callback = _step_callback(on_step, first_rows, keys, self._latent_format)
        share = self._accel.cfg_truncation if shape.mode == "text" and shape.guidance_scale > 1 else 0.0
        if share:
            kwargs["callback_on_step_end"] = _cutting_guidance(share, step_callback)
            kwargs["callback_on_step_end_tensor_inputs"] = ["latents", *cfgtruncation.tensor_inputs(pipe)]
        elif step_callback is not None:
            kwargs["callback_on_step_end"] = step_callback

        self._loras.activate(shape.loras, self._accel.report.applied)
        # A LoRA may change the text encoder too: its batches encode their own prompts.
        cache = self._accel.prompt_cache if not shape.loras else None
        try:
            # Text embeddings from the prompt cache when there is one (inside the try: encoding can run out of
            # memory too), else the pipeline encodes the prompts itself.
            if cache is not None:
                kwargs.update(cache.pipeline_kwargs(prompts, negatives))
            else:
                kwargs.update(prompt=prompts, negative_prompt=negatives)
            # SDXL-type pipelines cast an upcasting VAE to fp32 and back on every call, and diffusers logs a
            # warning for each cast; in a worker that is two log lines per batch with nothing to act on.
            with (
                quiet_logger("diffusers.models.modeling_utils"),
                self._accel.call_context(shape.width, shape.height, padded),
            ):
                images: list[Image.Image] = pipe(**kwargs).images[:real]
        except torch.cuda.OutOfMemoryError as exc:
            # Give the cached blocks back so a smaller retry starts from a clean allocator.
            torch.cuda.empty_cache()
            logger.warning("out of memory: %d images at %dx%d", padded, shape.width, shape.height)
            raise GenerationOOM(real, shape.width, shape.height, str(exc).splitlines()[0]) from exc
        finally:
            # SDXL-type pipelines cast an upcasting VAE to fp32 before the decode and back after it; a decode
            # that raised leaves it in fp32, and every later call would fail on mixed dtypes.
            if vae.dtype != vae_dtype:
                vae.to(dtype=vae_dtype)
        if shape.mode == "inpaint":
            images = _keep_unmasked(pipe, images, inputs)

        result: dict[str, list[Image.Image]] = {}
        start = 0
        for job in jobs:
            result[job.key] = images[start : start + job.num_images]
            start += job.num_images
        return result


class ModelRunners:
    """Several models loaded on one device, one :class:`PipelineRunner` each: a batch (always of one model) runs
    on the runner of ``shape.model``. Memory is the sum of the models' (an SD 1.5 fp16 pipeline is about 2 GiB)."""

    def __init__(self, runners: Sequence[PipelineRunner]) -> None:
        if not runners:
            raise ValueError("ModelRunners needs at least one runner")
        self._runners = {runner.model_name: runner for runner in runners}
        if len(self._runners) != len(runners):
            raise ValueError(f"each model once: {[r.model_name for r in runners]}")
        devices = {str(runner.device) for runner in runners}
        if len(devices) != 1:
            raise ValueError(f"every model on one device, not {sorted(devices)}")

    @classmethod
    def load(
        cls,
        model_names: Sequence[str],
        *,
        device: str | torch.device | None = None,
        precision: Precision | None = None,
        cache_root: Path | None = None,
        cpu_max_batch_images: int = 4,
        acceleration: AccelerationOptions | None = None,
    ) -> ModelRunners:
        """Load each of ``model_names`` (see :meth:`PipelineRunner.load`); raises what a load raises."""
        return cls(
            [
                PipelineRunner.load(
                    name,
                    device=device,
                    precision=precision,
                    cache_root=cache_root,
                    cpu_max_batch_images=cpu_max_batch_images,
                    acceleration=acceleration,
                )
                for name in model_names
            ]
        )

    @property
    def models(self) -> frozenset[str]:
        return frozenset(self._runners)

    @property
    def model_name(self) -> str:
        """The loaded models' ids, comma-separated (for logs)."""
        return ",".join(sorted(self._runners))

    def runner(self, model: str | None) -> PipelineRunner:
        """The runner of ``model`` (None: the only one); raises ``ModelNotServed`` for a model not loaded here."""
        if model is None and len(self._runners) == 1:
            return next(iter(self._runners.values()))
        runner = self._runners.get(model) if model is not None else None
        if runner is None:
            raise ModelNotServed(model, self.models)
        return runner

    @property
    def device(self) -> torch.device:
        return next(iter(self._runners.values())).device

    def device_name(self) -> str | None:
        return next(iter(self._runners.values())).device_name()

    @property
    def note(self) -> str | None:
        """The notes of the noise models among them, one per line, else None."""
        notes = [f"{name}: {r.note}" for name, r in sorted(self._runners.items()) if r.note]
        return "\n".join(notes) or None

    def max_batch_images(self, width: int | None = None, height: int | None = None) -> int:
        """The smallest of the models' limits: each batch runs on one of them."""
        return min(runner.max_batch_images(width, height) for runner in self._runners.values())

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: StepCallback | None = None
    ) -> dict[str, list[Image.Image]]:
        """:meth:`PipelineRunner.generate` on the runner of ``shape.model``; ``ModelNotServed`` if none."""
        return self.runner(shape.model).generate(jobs, shape, on_step)

    def warm_next(self) -> bool:
        """Warm the next cold shape of the first model that has one (:meth:`PipelineRunner.warm_next`)."""
        return any(runner.warm_next() for runner in self._runners.values())


def _mode_kwargs(shape: BatchShape, jobs: Sequence[ImageJob], rows: int) -> dict[str, Any]:
    """The size and input arguments of a call of ``rows`` images (padding included) in ``shape.mode``: text-to-image
    takes the size; image-to-image each row's input and the strength (the size is the inputs'); inpainting the
    masks and the size too. A job's input goes to each of its images, padding rows repeat the last row's.
    ValueError for a job without an input its mode needs, or an input not of the batch's size."""
    if shape.mode == "text":
        return {"width": shape.width, "height": shape.height}
    images: list[Image.Image] = []
    masks: list[Image.Image] = []
    for job in jobs:
        if job.image is None or (shape.mode == "inpaint" and job.mask is None):
            raise ValueError(f"job {job.key!r} lacks the inputs of a {shape.mode} batch")
        for given in (job.image, job.mask):
            if given is not None and given.size != (shape.width, shape.height):
                raise ValueError(f"job {job.key!r}: an input of {given.size}, not the batch's size")
        images += [job.image] * job.num_images
        masks += [job.mask] * job.num_images if job.mask is not None else []
    images += images[-1:] * (rows - len(images))
    kwargs: dict[str, Any] = {
        "image": images,
        "strength": DEFAULT_STRENGTH[shape.mode] if shape.strength is None else shape.strength,
    }
    if shape.mode == "inpaint":
        masks += masks[-1:] * (rows - len(masks))
        kwargs.update(mask_image=masks, width=shape.width, height=shape.height)
    return kwargs


def _keep_unmasked(pipe: Any, images: list[Image.Image], inputs: dict[str, Any]) -> list[Image.Image]:
    """Inpainted ``images`` with each row's input laid back over them through its mask (diffusers'
    ``apply_overlay``): pixels the mask leaves black are the input's exactly, not its trip through the VAE."""
    return [
        pipe.image_processor.apply_overlay(mask, original, image)
        for image, original, mask in zip(images, inputs["image"], inputs["mask_image"], strict=False)
    ]


def _fall_back_to_one_image_decodes(vae: Any) -> None:
    """Make ``vae.decode`` retry one image at a time when decoding the whole batch runs out of memory.

    The choice to decode a call in one VAE call rests on an estimate made before the call; when it is wrong,
    the denoising already done is kept and the decode goes one image at a time (the peak it had before).
    """
    if getattr(vae, "_sdq_decode_falls_back", False):
        return  # a second runner on the same pipeline
    decode = vae.decode

    def decode_or_slice(*args: Any, **kwargs: Any) -> Any:
        latents = args[0] if args else kwargs.get("z")
        if vae.use_slicing or latents is None or latents.shape[0] == 1:
            return decode(*args, **kwargs)  # already one image at a time: an OOM here propagates
        try:
            return decode(*args, **kwargs)
        except torch.OutOfMemoryError:
            pass  # leave the except block first: its traceback holds the failed decode's tensors
        torch.cuda.empty_cache()
        logger.warning("the one-call VAE decode ran out of memory: decoding one image at a time")
        vae.use_slicing = True
        return decode(*args, **kwargs)

    vae.decode = decode_or_slice
    vae._sdq_decode_falls_back = True


def fits_in_one_decode(images: int, bytes_per_image: int, free_bytes: int) -> bool:
    """Whether ``images`` VAE decodes of ``bytes_per_image`` each fit at once in ``free_bytes`` (less headroom)."""
    return images * bytes_per_image <= free_bytes - _CUDA_HEADROOM_BYTES


def _cutting_guidance(share: float, then: Callable[..., dict[str, Any]] | None) -> Callable[..., dict[str, Any]]:
    """A ``callback_on_step_end`` that runs ``then`` (if any) and drops guidance for the last ``share`` of the
    steps (:mod:`~workflows.generation.acceleration.cfgtruncation`)."""

    def callback(pipe: Any, i: int, t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        if then is not None:
            callback_kwargs = then(pipe, i, t, callback_kwargs)
        return cfgtruncation.stop_guidance_after(pipe, i, share, callback_kwargs)

    return callback


def _step_callback(
    on_step: StepCallback,
    first_rows: list[int] | None = None,
    keys: list[str] | None = None,
    latent_format: LatentFormat | None = None,
) -> Callable[..., dict[str, Any]]:
    """Adapt ``on_step(step, total)`` to diffusers' ``callback_on_step_end(pipe, i, t, kwargs)``; a
    :class:`LatentTap` also gets the rows ``first_rows`` of the latents (named ``keys``) when it wants them."""
    tap = on_step if isinstance(on_step, LatentTap) else None
    rows, names, fmt = first_rows or [], keys or [], latent_format

    def callback(pipe: Text2ImagePipeline, i: int, _t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        # num_timesteps is the loop's real length (a scheduler may add a step to the requested count).
        step, total = i + 1, int(pipe.num_timesteps)
        latents = callback_kwargs.get("latents")
        if tap is not None and fmt is not None and rows and latents is not None and tap.wants_latents(step, total):
            tap.take_latents(step, total, capture(latents, rows, names, fmt))
        on_step(step, total)
        return callback_kwargs

    return callback
