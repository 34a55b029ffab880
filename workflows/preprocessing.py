"""Input images of image-to-image and inpainting jobs: uploads offered, and what arrives checked at submit.

A job's ``image`` and ``mask`` (an upload id of the caller's or a data URL) are read (bounded bytes), checked
and normalised here before any GPU time is spent, then stored as PNGs beside the job's outputs for the worker
(:func:`shared.media.input_key`). The rules, in order, each a 422 with its own code naming the field:

1. the bytes: an upload of the caller's (``upload_not_found``) or a base64 data URL (``invalid_data_url``), at
   most ``limits.max_input_bytes`` (``input_too_large``);
2. a PNG, JPEG or WebP as Pillow reads it, whatever the name or content type said (``not_an_image``);
3. each side within ``limits.min_input_side``..``max_input_side`` and at most ``limits.max_input_pixels``
   pixels, read from the header before anything is decoded (``input_dimensions``);
4. EXIF orientation applied; a mask must then be the image's size (``mask_size_mismatch``);
5. resized to the job's width x height when its aspect ratio is within ``ASPECT_TOLERANCE`` of the job's,
   refused otherwise (``input_aspect_ratio``): sdq never crops or stretches a picture more than that.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import struct
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from PIL import Image, ImageOps
from ulid import ULID

from shared.contracts import INPUT_DIGEST_PREFIX, GenerationRequest, Upload, utcnow
from shared.errors import ValidationFailed
from shared.media import InputName, MediaStore, ObjectTooLarge, input_key, upload_key

if TYPE_CHECKING:
    from shared.settings import RequestLimits, Settings

# The formats an input may be in; Pillow tries no other decoder.
INPUT_FORMATS = ("PNG", "JPEG", "WEBP")
# What an upload's Content-Type must start with (S3 checks it; Pillow decides what the bytes are).
UPLOAD_CONTENT_TYPE = "image/"
# How far an input's aspect ratio may be from the job's and still be resized to it (relative).
ASPECT_TOLERANCE = 0.02
# What Pillow's parsers raise on hostile or damaged bytes (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, ValueError, TypeError, SyntaxError, EOFError, IndexError, struct.error)


class InvalidInput(ValidationFailed):
    """An input image or mask that a job cannot use: a 422 whose ``code`` names the rule and whose ``details`` name
    the field the way every other validation error does (``details[].loc``)."""

    def __init__(self, field: InputName, code: str, message: str) -> None:
        super().__init__(f"{field}: {message}", details=[{"loc": ["body", field], "msg": message, "type": code}])
        self.code = code
        self.field = field


@dataclass(frozen=True)
class NormalisedInput:
    """One input as the worker gets it: a PNG of the job's size (RGB for the image, L for the mask)."""

    name: InputName
    png: bytes

    @property
    def digest(self) -> str:
        """How the stored job names it: ``sha256:<hex>`` of the PNG."""
        return INPUT_DIGEST_PREFIX + hashlib.sha256(self.png).hexdigest()


@dataclass(frozen=True)
class PreparedInputs:
    """A request's normalised inputs (none for text-to-image)."""

    inputs: tuple[NormalisedInput, ...] = ()

    def named(self, request: GenerationRequest) -> GenerationRequest:
        """``request`` with each input named by its digest, as the job stores it."""
        return request.model_copy(update={i.name: i.digest for i in self.inputs})


def decode(data: bytes, field: InputName, limits: RequestLimits) -> Image.Image:
    """The image in ``data``, checked (rules 1 to 3) and turned upright by its EXIF orientation; InvalidInput."""
    if len(data) > limits.max_input_bytes:
        raise InvalidInput(field, "input_too_large", f"larger than {limits.max_input_bytes} bytes")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb guard warns past its limit; here it is an answer, never a log line.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise InvalidInput(field, "input_dimensions", f"more than {limits.max_input_pixels} pixels") from exc
    except DECODE_ERRORS as exc:
        raise InvalidInput(field, "not_an_image", f"not a {', '.join(INPUT_FORMATS)} image") from exc
    width, height = image.size
    if not (limits.min_input_side <= min(width, height) and max(width, height) <= limits.max_input_side):
        raise InvalidInput(
            field,
            "input_dimensions",
            f"{width}x{height}: each side must be {limits.min_input_side} to {limits.max_input_side} pixels",
        )
    if width * height > limits.max_input_pixels:
        raise InvalidInput(field, "input_dimensions", f"{width}x{height}: more than {limits.max_input_pixels} pixels")
    try:
        image.load()
        upright = ImageOps.exif_transpose(image)
    except DECODE_ERRORS as exc:  # truncated or corrupt data behind a valid header
        raise InvalidInput(field, "not_an_image", "the image data is damaged") from exc
    return upright


def fit(image: Image.Image, field: InputName, width: int, height: int) -> Image.Image:
    """``image`` resized to ``width`` x ``height`` (rule 5), or InvalidInput when its shape is too different."""
    asked, given = width / height, image.width / image.height
    if abs(given - asked) > ASPECT_TOLERANCE * asked:
        raise InvalidInput(
            field,
            "input_aspect_ratio",
            f"{image.width}x{image.height} does not have the job's aspect ratio ({width}x{height}, within"
            f" {ASPECT_TOLERANCE:.0%}); crop it or change width and height",
        )
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS)


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def normalise(
    image_data: bytes, mask_data: bytes | None, *, width: int, height: int, limits: RequestLimits
) -> PreparedInputs:
    """The image (and mask) as the worker takes them, or InvalidInput naming the field and the rule."""
    image = decode(image_data, "image", limits)
    inputs = [NormalisedInput("image", png(fit(image.convert("RGB"), "image", width, height)))]
    if mask_data is not None:
        mask = decode(mask_data, "mask", limits)
        if mask.size != image.size:
            raise InvalidInput(
                "mask",
                "mask_size_mismatch",
                f"{mask.width}x{mask.height} is not the image's size ({image.width}x{image.height})",
            )
        inputs.append(NormalisedInput("mask", png(fit(mask.convert("L"), "mask", width, height))))
    return PreparedInputs(tuple(inputs))


def data_url_bytes(value: str, field: InputName) -> bytes:
    """The bytes of a base64 data URL (its media type is not trusted: Pillow decides); InvalidInput."""
    header, sep, payload = value.partition(",")
    if not sep or not header.startswith("data:") or not header.endswith(";base64"):
        raise InvalidInput(field, "invalid_data_url", "a data URL must be data:<type>;base64,<data>")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(field, "invalid_data_url", "the data URL's base64 is invalid") from exc


class Inputs:
    """Uploads offered to a tenant, and a job's inputs read, normalised and stored (``media`` holds them all)."""

    def __init__(self, media: MediaStore, settings: Settings) -> None:
        self._media = media
        self._settings = settings

    def new_upload(self, tenant: str) -> Upload:
        """A presigned POST for one image under the tenant's own uploads folder (expiring, size-capped)."""
        upload_id = str(ULID())
        limits, expiry = self._settings.limits, self._settings.upload_expiry_s
        post = self._media.presign_post(
            upload_key(self._settings.uploads_prefix, tenant, upload_id),
            max_bytes=limits.max_input_bytes,
            content_type_prefix=UPLOAD_CONTENT_TYPE,
            expires_s=expiry,
        )
        return Upload(
            id=upload_id,
            url=post.url,
            fields={k: str(v) for k, v in post.fields.items()},
            expires_at=utcnow() + timedelta(seconds=expiry),
            max_bytes=limits.max_input_bytes,
            content_type=UPLOAD_CONTENT_TYPE,
        )

    def prepare(self, tenant: str, request: GenerationRequest) -> PreparedInputs:
        """The request's inputs, read and normalised to its size (nothing for text-to-image); InvalidInput."""
        if request.image is None:
            return PreparedInputs()
        image = self._read(tenant, request.image, "image")
        mask = self._read(tenant, request.mask, "mask") if request.mask is not None else None
        return normalise(image, mask, width=request.width, height=request.height, limits=self._settings.limits)

    def store(self, prepared: PreparedInputs, tenant: str, job_id: str) -> list[str]:
        """Write the inputs beside the job's outputs; their keys."""
        keys = []
        for item in prepared.inputs:
            key = input_key(self._settings.outputs_prefix, tenant, job_id, item.name)
            self._media.put(key, item.png, "image/png")
            keys.append(key)
        return keys

    def discard(self, keys: list[str]) -> None:
        self._media.delete(keys)

    def _read(self, tenant: str, value: str, field: InputName) -> bytes:
        if value.startswith("data:"):
            return data_url_bytes(value, field)
        key = upload_key(self._settings.uploads_prefix, tenant, value)
        limit = self._settings.limits.max_input_bytes
        try:
            return self._media.get_bounded(key, limit)
        except self._media.missing_errors() as exc:
            raise InvalidInput(field, "upload_not_found", f"no upload {value!r} of yours (or it has expired)") from exc
        except ObjectTooLarge as exc:
            raise InvalidInput(field, "input_too_large", f"larger than {limit} bytes") from exc
