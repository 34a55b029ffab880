"""Postprocessing (the state machine's first task): staging PNGs -> final outputs + thumbnails in S3.

Idempotent: outputs have deterministic keys and bytes, so re-running for the same job writes the same
objects; when a previous run already removed the staging images, the outputs it wrote are described again.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

from PIL import Image, PngImagePlugin
from pydantic import BaseModel, Field

from shared.contracts import GenerationRequest, Job, JobError, JobErrorCode, JobStatus, Output
from shared.errors import InvalidTransition, PermanentError
from shared.jobs import Claim, JobsRepository
from shared.loraregistry import LoraRegistry
from shared.media import MediaStore
from shared.modelregistry import ModelRegistry
from shared.settings import get_settings
from shared.tinymodel import TINY_MODEL_NOTE

THUMBNAIL_SIDE = 256
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
EXIF_USER_COMMENT = 0x9286
EXIF_IFD = 0x8769


class PostprocessInput(BaseModel):
    """The state machine input written by the worker: S3 keys and job facts only."""

    job_id: str
    tenant: str
    attempt: int
    staging_keys: list[str] = Field(default_factory=list)


class PostprocessResult(BaseModel):
    status: str
    outputs: list[Output]
    skipped: bool = False
    # A failure the client is told about as is (the state machine fails the job with it); null on success.
    failure: JobError | None = None


@dataclass(frozen=True)
class Encoded:
    body: bytes
    content_type: str
    width: int
    height: int


def generation_parameters(
    job: Job, index: int, model_revision: str | None = None, loras: LoraRegistry | None = None
) -> dict[str, Any]:
    """What reproduces an image, embedded in the file itself; ``model_revision``: the model's pinned revision
    (its registry entry's), left out for a model outside the registry; a job's LoRAs with their scales and the
    revisions it is pinned to (a job from before pinning: those in ``loras``, None for one retired since)."""
    req = job.request
    params = {
        "job_id": job.job_id,
        "image_index": index,
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        "seed": (req.seed or 0) + index,
        "job_seed": req.seed,
        "steps": req.num_inference_steps,
        "guidance_scale": req.guidance_scale,
        "scheduler": req.scheduler,
        "width": req.width,
        "height": req.height,
        "model": req.model,
        "generator": "sdq",
    }
    if model_revision is not None:
        params["model_revision"] = model_revision
    if req.loras:
        registry = loras or LoraRegistry()
        params["loras"] = [
            {
                "id": lora.id,
                "revision": job.lora_revisions.get(lora.id) or registry.revision(lora.id),
                "scale": lora.scale,
            }
            for lora in req.loras
        ]
    if job.model_is_noise:
        params["note"] = TINY_MODEL_NOTE
    return params


def encode(image: Image.Image, request: GenerationRequest, parameters: dict[str, Any]) -> Encoded:
    """Encode deterministically in the requested format with the parameters embedded as metadata."""
    text = json.dumps(parameters, sort_keys=True)
    buf = io.BytesIO()
    fmt = request.output_format
    rgb = image.convert("RGB")
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)
        info.add_text("Software", "sdq")
        rgb.save(buf, format="PNG", pnginfo=info, optimize=False, compress_level=6)
    else:
        exif = Image.Exif()
        exif[0x0131] = "sdq"  # Software
        exif.get_ifd(EXIF_IFD)[EXIF_USER_COMMENT] = b"ASCII\x00\x00\x00" + text.encode("ascii", "backslashreplace")
        pil_format = "JPEG" if fmt == "jpeg" else "WEBP"
        rgb.save(buf, format=pil_format, quality=request.quality, exif=exif.tobytes())
    return Encoded(buf.getvalue(), CONTENT_TYPES[fmt], rgb.width, rgb.height)


def thumbnail(image: Image.Image) -> bytes:
    thumb = image.convert("RGB")
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format="WEBP", quality=80)
    return buf.getvalue()


class Postprocessor:
    def __init__(
        self,
        repo: JobsRepository,
        media: MediaStore,
        *,
        outputs_prefix: str = "outputs/",
        registry: ModelRegistry | None = None,
        loras: LoraRegistry | None = None,
    ) -> None:
        """``registry`` and ``loras`` name each model's and LoRA's revision in the images' metadata (default: the
        configured ones)."""
        self._registry = registry or get_settings().registry
        self._loras = loras or get_settings().loras
        self._repo = repo
        self._media = media
        self._prefix = outputs_prefix

    def output_key(self, job: Job, index: int) -> str:
        return f"{self._prefix}{job.tenant}/{job.job_id}/{index}.{EXTENSIONS[job.request.output_format]}"

    def thumbnail_key(self, job: Job, index: int) -> str:
        return f"{self._prefix}{job.tenant}/{job.job_id}/{index}.thumb.webp"

    def run(self, event: PostprocessInput) -> PostprocessResult:
        """Write the job's outputs. Returns ``skipped`` when the job no longer wants them from this execution
        (cancelled, finished, or its current attempt is another one), and a ``failure`` (code
        ``POSTPROCESS_FAILED``, with a message for the client) when there is nothing to postprocess: no staged
        images and no outputs. Storage errors propagate; the state machine retries them.
        """
        try:
            return self._run(event)
        except PermanentError as exc:
            return PostprocessResult(
                status=JobStatus.POSTPROCESSING.value,
                outputs=[],
                failure=JobError(code=JobErrorCode.POSTPROCESS_FAILED, message=str(exc)),
            )

    def _run(self, event: PostprocessInput) -> PostprocessResult:
        # Whatever its retention: a job that crosses it mid-execution still gets its outcome.
        job = self._repo.get(event.job_id, tenant=event.tenant, within_retention=False)
        if job.status == JobStatus.RUNNING and job.attempt == event.attempt:
            try:
                job = self._repo.transition(
                    job.job_id,
                    JobStatus.POSTPROCESSING,
                    tenant=job.tenant,
                    sources=[JobStatus.RUNNING],
                    claim=Claim(attempt=event.attempt),
                )
            except InvalidTransition:
                # Most often the worker's own hand-off mark (POSTPROCESSING, same attempt) got there first: the
                # job is still ours to finish. Read again to tell that from a cancel or a new claim (past its
                # retention too, as the first read).
                job = self._repo.get(event.job_id, tenant=event.tenant, within_retention=False)
        if job.status != JobStatus.POSTPROCESSING or job.attempt != event.attempt:
            # Cancelled, finished, handed back, or claimed again by another worker (another attempt's
            # execution finishes it): nothing here is this execution's to write.
            return PostprocessResult(status=job.status.value, outputs=[], skipped=True)

        outputs: list[Output] = []
        staged = list(event.staging_keys)
        for index, staging_key in enumerate(staged):
            outputs.append(self._one(job, index, staging_key))
        if not staged:
            raise PermanentError("The worker handed off no images to store.")
        self._media.delete(staged)
        return PostprocessResult(status=JobStatus.POSTPROCESSING.value, outputs=outputs)

    def _one(self, job: Job, index: int, staging_key: str) -> Output:
        key = self.output_key(job, index)
        thumb_key = self.thumbnail_key(job, index)
        try:
            raw = self._media.get(staging_key)
        except self._media.missing_errors() as exc:
            # A previous run finished this image and removed its staging copy: describe what it wrote.
            try:
                body = self._media.get(key)
            except self._media.missing_errors():
                raise PermanentError(f"Generated image {index} was lost before it was stored.") from exc
            with Image.open(io.BytesIO(body)) as done:
                width, height = done.size
            return self._describe(job, index, key, thumb_key, body, width, height)
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            # The revision the job is pinned to, which its worker loaded; a job from before pinning: the registry's.
            revision = job.model_revision or self._registry.revision(job.request.model)
            encoded = encode(image, job.request, generation_parameters(job, index, revision, self._loras))
            thumb = thumbnail(image)
        self._media.put(key, encoded.body, encoded.content_type)
        self._media.put(thumb_key, thumb, "image/webp")
        return self._describe(job, index, key, thumb_key, encoded.body, encoded.width, encoded.height)

    def _describe(self, job: Job, index: int, key: str, thumb_key: str, body: bytes, width: int, height: int) -> Output:
        return Output(
            index=index,
            key=key,
            content_type=CONTENT_TYPES[job.request.output_format],
            width=width,
            height=height,
            bytes=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
            thumbnail_key=thumb_key,
        )
