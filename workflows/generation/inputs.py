"""A job's input image and mask as the worker reads them before its batch: the PNGs preprocessing normalised and
stored beside the job's outputs (:func:`shared.media.input_key`), checked against the digests the job names them
by, decoded at the job's size for the pipeline.

Why a job's inputs cannot be used, each the job's error code:

- ``INPUT_NOT_FOUND``: the stored PNG is gone (it expires with the job's outputs);
- ``INPUT_CORRUPT``: its bytes are not those the job names (sha256), or not a PNG of the job's size;
- ``INPUT_UNAVAILABLE``: the bucket refused the read (after the S3 client's own retries). On AWS a missing object
  reads as this too: the worker's role may not list the bucket, so S3 answers ``AccessDenied`` for it.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image

from shared.contracts import INPUT_DIGEST_PREFIX, GenerationRequest, JobErrorCode
from shared.errors import PermanentError
from shared.media import InputName, MediaStore, input_key

# Each job's inputs are read on a thread of their own, up to this many at once: a batch's reads cost one round trip.
READ_THREADS = 8
# What Pillow raises on damaged bytes (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)


class InputUnavailable(PermanentError):
    """A job's stored input that cannot be used; ``code`` is the job's error code (see the module docstring)."""

    def __init__(self, name: InputName, code: JobErrorCode, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.code = code


@dataclass(frozen=True)
class JobInputs:
    """What the pipeline takes: ``image`` (RGB) and, for inpainting, ``mask`` (L), both of the job's size."""

    image: Image.Image
    mask: Image.Image | None = None


class InputReader:
    """Reads jobs' stored inputs from the media bucket (``outputs_prefix``: where preprocessing stored them)."""

    def __init__(self, media: MediaStore, outputs_prefix: str) -> None:
        self._media = media
        self._prefix = outputs_prefix

    def read(self, tenant: str, job_id: str, request: GenerationRequest) -> JobInputs:
        """The inputs ``request`` names (it must name an image); raises :class:`InputUnavailable`."""
        if request.image is None:
            raise ValueError(f"job {job_id} is a text-to-image job: it has no inputs")
        image = self._one(tenant, job_id, request, "image", request.image)
        mask = self._one(tenant, job_id, request, "mask", request.mask) if request.mask is not None else None
        return JobInputs(image, mask)

    def read_all(self, jobs: Sequence[tuple[str, str, GenerationRequest]]) -> list[JobInputs | InputUnavailable]:
        """:meth:`read` for each ``(tenant, job_id, request)`` at once; each one's inputs or why they are unusable."""

        def attempt(job: tuple[str, str, GenerationRequest]) -> JobInputs | InputUnavailable:
            try:
                return self.read(*job)
            except InputUnavailable as exc:
                return exc

        if len(jobs) <= 1:
            return [attempt(job) for job in jobs]
        with ThreadPoolExecutor(min(READ_THREADS, len(jobs)), thread_name_prefix="sdq-inputs") as pool:
            return list(pool.map(attempt, jobs))

    def _one(self, tenant: str, job_id: str, request: GenerationRequest, name: InputName, digest: str) -> Image.Image:
        key = input_key(self._prefix, tenant, job_id, name)
        try:
            data = self._media.get(key)
        except self._media.missing_errors() as exc:
            raise InputUnavailable(
                name, JobErrorCode.INPUT_NOT_FOUND, "the stored input is gone (expired or deleted)"
            ) from exc
        except (ClientError, BotoCoreError) as exc:
            raise InputUnavailable(
                name, JobErrorCode.INPUT_UNAVAILABLE, f"the stored input could not be read: {exc}"
            ) from exc
        if INPUT_DIGEST_PREFIX + hashlib.sha256(data).hexdigest() != digest:
            raise InputUnavailable(name, JobErrorCode.INPUT_CORRUPT, "the stored input is not the one the job names")
        try:
            with Image.open(io.BytesIO(data), formats=("PNG",)) as opened:
                image = opened.convert("RGB" if name == "image" else "L")
        except _DECODE_ERRORS as exc:
            raise InputUnavailable(name, JobErrorCode.INPUT_CORRUPT, "the stored input is not a PNG") from exc
        if image.size != (request.width, request.height):
            raise InputUnavailable(
                name,
                JobErrorCode.INPUT_CORRUPT,
                f"the stored input is {image.width}x{image.height}, not the job's size",
            )
        return image
