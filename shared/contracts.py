"""The job contract: the generation request, the job record, its status machine and the queue message.

Bounds come from :class:`shared.settings.RequestLimits` (validation context ``{"limits": ...}`` or the
process settings), so operators change them without code changes; the published JSON schema shows them too.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from ulid import ULID

from shared.modelregistry import Architecture
from shared.netguard import UnsafeUrl, check_callback_url
from shared.pricing import GpuPrice
from shared.settings import RequestLimits, Settings, get_settings

SEED_MAX = 2**32 - 1


def _json_int(value: Any) -> Any:
    """JSON integers: 4 and 4.0 are the same number; strings and booleans are not integers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer as JSON Schema means it: no strings, no booleans, integral floats allowed.
JsonInt = Annotated[StrictInt, BeforeValidator(_json_int)]

Scheduler = Literal["ddim", "euler", "euler_a", "dpmpp_2m", "pndm", "lms"]
OutputFormat = Literal["png", "jpeg", "webp"]
# The webhook events a request may subscribe to; ``completed`` (succeeded, failed or cancelled) is the default.
WebhookEvent = Literal["started", "progress", "completed"]
DEFAULT_WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("completed",)
# What a job does, from the inputs it names: text-to-image, image-to-image (``image``), inpainting (``mask`` too).
Mode = Literal["text", "image", "inpaint"]
# ``strength`` of a request that gives none: diffusers' defaults (StableDiffusionImg2ImgPipeline 0.8,
# StableDiffusionInpaintPipeline 1.0).
DEFAULT_STRENGTH: dict[Mode, float] = {"image": 0.8, "inpaint": 1.0}
# A stored job names each input by the digest of its normalised PNG (workflows/preprocessing.py).
INPUT_DIGEST_PREFIX = "sha256:"
INPUT_FIELDS = ("image", "mask", "strength")


def is_upload_id(value: str) -> bool:
    """Whether ``value`` has the form of an upload id (a ULID, ``POST /v1/uploads``)."""
    return is_ulid(value)


def is_ulid(value: str) -> bool:
    """Whether ``value`` is a ULID as sdq writes them (26 characters): the form of every job and upload id."""
    if len(value) != 26:
        return False
    try:
        ULID.from_str(value)
    except ValueError:
        return False
    return True


def _settings(info: ValidationInfo | None) -> Settings:
    ctx = info.context if info is not None and isinstance(info.context, dict) else {}
    settings = ctx.get("settings")
    return settings if isinstance(settings, Settings) else get_settings()


def _trusted(info: ValidationInfo) -> bool:
    """Context ``{"trusted": True}``: re-reading what sdq itself accepted earlier (queue messages), whose
    bounds may have changed since; shape is still checked, bounds are not."""
    return isinstance(info.context, dict) and bool(info.context.get("trusted"))


def _limits(info: ValidationInfo | None) -> RequestLimits:
    return _settings(info).limits


# Fields whose value, when a request leaves them out, is the deployment's (see GenerationRequest.normalised).
DEPLOYMENT_DEFAULTS = frozenset({"model", "width", "height", "num_inference_steps", "guidance_scale", "strength"})

# What shows nothing: separators, whitespace controls and format characters (a zero-width space, a byte order mark).
_BLANK_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf"})


def _check_text(value: str, max_chars: int, *, allow_empty: bool) -> str:
    if len(value) > max_chars:
        raise ValueError(f"must be at most {max_chars} characters")
    if not allow_empty and not any(unicodedata.category(ch) not in _BLANK_CATEGORIES for ch in value):
        raise ValueError("must not be blank")
    for ch in value:
        # Control and unassigned/surrogate code points break tokenizers and logs; newlines and tabs are fine.
        if ch not in "\n\r\t" and unicodedata.category(ch) in {"Cc", "Cs", "Co", "Cn"}:
            raise ValueError("must not contain control or non-character code points")
    return value


# Whitespace, controls, format characters, surrogates, private-use and unassigned code points: none belongs in
# a URL, and each makes one undeliverable (or, a lone surrogate, unstorable).
_URL_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})


def _check_url_shape(url: str) -> str:
    """Characters and port of a URL a client gives us; raises ValueError. Which hosts are allowed is
    :func:`shared.netguard.check_callback_url`'s business."""
    if any(ch.isspace() or unicodedata.category(ch) in _URL_FORBIDDEN_CATEGORIES for ch in url):
        raise ValueError("must not contain whitespace, control or non-character code points")
    try:
        port = urlsplit(url).port
    except ValueError as exc:
        raise ValueError("has an invalid port") from exc
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("port must be between 1 and 65535")
    return url


def _request_schema_bounds(schema: dict[str, Any]) -> None:
    """Publish the configured bounds in the OpenAPI/JSON schema (pydantic hook)."""
    lim = get_settings().limits
    settings = get_settings()
    props = schema.get("properties", {})
    bounds: dict[str, dict[str, Any]] = {
        "prompt": {"minLength": 1, "maxLength": lim.prompt_max_chars},
        "negative_prompt": {"maxLength": lim.negative_prompt_max_chars},
        "width": {"minimum": lim.min_side, "maximum": lim.max_side, "multipleOf": lim.side_multiple},
        "height": {"minimum": lim.min_side, "maximum": lim.max_side, "multipleOf": lim.side_multiple},
        "num_inference_steps": {"minimum": 1, "maximum": lim.max_steps},
        "guidance_scale": {"minimum": 0, "maximum": lim.max_guidance},
        "num_images": {"minimum": 1, "maximum": lim.max_images},
        "quality": {"minimum": 1, "maximum": 100},
        "metadata": {
            "maxProperties": lim.max_metadata_entries,
            "propertyNames": {"minLength": 1, "maxLength": lim.max_metadata_key_chars},
            "additionalProperties": {"type": "string", "maxLength": lim.max_metadata_value_chars},
        },
        "seed": {"minimum": 0, "maximum": SEED_MAX},
        "webhook_events": {"minItems": 1, "uniqueItems": True},
        "callback_url": {"maxLength": lim.max_callback_url_chars},
        "image": {"maxLength": lim.max_data_url_chars},
        "mask": {"maxLength": lim.max_data_url_chars},
        "strength": {"exclusiveMinimum": 0, "maximum": 1},
        "loras": {"maxItems": lim.max_loras},
    }
    defaults: dict[str, Any] = {"num_inference_steps": lim.default_steps, "guidance_scale": lim.default_guidance}
    entry = settings.registry.get(settings.default_model)
    if entry is not None:  # the default model's size: what a request that names no model and no size gets
        defaults |= {"width": entry.default_width, "height": entry.default_height}
    for name, default in defaults.items():
        if name in props:
            props[name]["default"] = default
    for name, extra in bounds.items():
        if name in props:
            _bound(props[name], extra)
    if "model" in props:
        props["model"]["description"] = f"One of: {', '.join(settings.models)} (default {settings.default_model})"


def _bound(prop: dict[str, Any], extra: dict[str, Any]) -> None:
    """``extra`` on a property, or on each of its options but null (a float's `number` and `integer` alike)."""
    options = [option for option in prop.get("anyOf", []) if option.get("type") != "null"]
    for target in options or [prop]:
        for keyword in ("ge", "le"):  # pydantic's names for the bounds of a custom type, not JSON Schema's
            target.pop(keyword, None)
        target.update(extra)


def _lora_schema_bounds(schema: dict[str, Any]) -> None:
    """Publish the configured LoRA scale bound (pydantic hook)."""
    limit = get_settings().limits.max_lora_scale
    _bound(schema["properties"]["scale"], {"minimum": -limit, "maximum": limit})


class Priority(StrEnum):
    """A job's priority: which queued work a worker takes first. A tenant's plan caps it (``shared.tenants``)."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"

    @property
    def rank(self) -> int:
        """0 for low, 1 for normal, 2 for high."""
        return list(Priority).index(self)


class LoraRef(BaseModel):
    """One LoRA a job applies: an id of the LoRA registry and how strongly."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_lora_schema_bounds)

    id: StrictStr = Field(description="An id of the deployment's LoRA registry.")
    scale: StrictFloat = Field(default=1.0, description="How strongly it applies; 0 turns it off.")

    @field_validator("id")
    @classmethod
    def _registered(cls, v: str, info: ValidationInfo) -> str:
        if _trusted(info):
            return v
        registry = _settings(info).loras
        if registry.get(v) is None:
            raise ValueError(f"unknown LoRA; this deployment allows: {', '.join(registry.ids) or 'none'}")
        return v

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: float, info: ValidationInfo) -> float:
        # Compared before the conversion: an integer too large for a float is out of range, not an OverflowError.
        limit = _limits(info).max_lora_scale
        if not _trusted(info) and not -limit <= v <= limit:
            raise ValueError(f"must be between {-limit:g} and {limit:g}")
        return float(v)


# A batch's LoRA set: (id, scale) pairs sorted by id, so that the same set in any order is one set.
LoraSet = tuple[tuple[str, float], ...]


def _invalid(field: str, message: str) -> PydanticCustomError:
    """The refusal of a check across fields, naming the field to change: the API puts it at the end of the
    error's path (``details[].loc``), as a field's own check would be."""
    return PydanticCustomError("value_error", message, {"field": field})


class GenerationRequest(BaseModel):
    """What a client asks for. Unknown fields are rejected; absent seed and model are filled at submit."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_request_schema_bounds, frozen=True)

    prompt: StrictStr = Field(description="What to draw.")
    negative_prompt: StrictStr = Field(default="", description="What to steer away from.")
    width: JsonInt = Field(
        default=512, description="Pixels; a multiple of 8. Absent: the model's default (its registry entry's)."
    )
    height: JsonInt = Field(
        default=512, description="Pixels; a multiple of 8. Absent: the model's default (its registry entry's)."
    )
    num_inference_steps: JsonInt = Field(default=30)
    guidance_scale: StrictFloat = Field(default=7.5)
    seed: JsonInt | None = Field(default=None, ge=0, le=SEED_MAX, description="Drawn and stored when absent.")
    num_images: JsonInt = Field(default=1)
    scheduler: Scheduler = "euler_a"
    output_format: OutputFormat = "png"
    quality: JsonInt = Field(default=90, description="JPEG/WebP quality; ignored for PNG.")
    model: StrictStr | None = Field(default=None)
    callback_url: StrictStr | None = Field(default=None, description="https URL that receives signed webhooks.")
    metadata: dict[StrictStr, StrictStr] = Field(default_factory=dict, description="Echoed back; small.")
    cache: StrictBool = Field(
        default=True,
        description=(
            "Answer from an earlier identical job's images (only when the request names its seed); false forces"
            " a fresh generation."
        ),
    )
    priority: Priority = Field(
        default=Priority.NORMAL,
        description="low, normal or high: which queued work workers take first; capped by the tenant's plan.",
    )
    webhook_events: list[WebhookEvent] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS),
        description=(
            "Which events are sent to callback_url (needs it): started, progress, completed (the default); without"
            " completed the job sends no terminal webhook."
        ),
    )
    image: StrictStr | None = Field(
        default=None,
        description=(
            "Image-to-image or inpainting input: the id of one of your uploads (POST /v1/uploads) or a data URL"
            " (data:image/png;base64,...). A stored job names it by the sha256 of its normalised PNG."
        ),
    )
    mask: StrictStr | None = Field(
        default=None,
        description="Inpainting mask (white is repainted), as image, of the same size as it; needs image.",
    )
    strength: StrictFloat | None = Field(
        default=None,
        description="How far to move from image: 0 < strength <= 1; default 0.8, or 1.0 with a mask. Needs image.",
    )
    loras: list[LoraRef] = Field(
        default_factory=list,
        description="LoRAs applied to the model, each an id of the deployment's LoRA registry made for the model.",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str, info: ValidationInfo) -> str:
        if _trusted(info):
            return v
        return _check_text(v, _limits(info).prompt_max_chars, allow_empty=False)

    @field_validator("negative_prompt")
    @classmethod
    def _negative(cls, v: str, info: ValidationInfo) -> str:
        if _trusted(info):
            return v
        return _check_text(v, _limits(info).negative_prompt_max_chars, allow_empty=True)

    @field_validator("width", "height")
    @classmethod
    def _side(cls, v: int, info: ValidationInfo) -> int:
        if _trusted(info):
            return v
        lim = _limits(info)
        if not lim.min_side <= v <= lim.max_side:
            raise ValueError(f"must be between {lim.min_side} and {lim.max_side}")
        if v % lim.side_multiple:
            raise ValueError(f"must be a multiple of {lim.side_multiple}")
        return v

    @field_validator("num_inference_steps")
    @classmethod
    def _steps(cls, v: int, info: ValidationInfo) -> int:
        if _trusted(info):
            return v
        lim = _limits(info)
        if not 1 <= v <= lim.max_steps:
            raise ValueError(f"must be between 1 and {lim.max_steps}")
        return v

    @field_validator("guidance_scale")
    @classmethod
    def _guidance(cls, v: float, info: ValidationInfo) -> float:
        if _trusted(info):
            return float(v)
        lim = _limits(info)
        # Compared before the conversion: an integer too large for a float is out of range, not an OverflowError.
        if not 0 <= v <= lim.max_guidance:
            raise ValueError(f"must be between 0 and {lim.max_guidance:g}")
        return float(v)

    @field_validator("num_images")
    @classmethod
    def _images(cls, v: int, info: ValidationInfo) -> int:
        if _trusted(info):
            return v
        lim = _limits(info)
        if not 1 <= v <= lim.max_images:
            raise ValueError(f"must be between 1 and {lim.max_images}")
        return v

    @field_validator("quality")
    @classmethod
    def _quality(cls, v: int) -> int:
        if not 1 <= v <= 100:
            raise ValueError("must be between 1 and 100")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None, info: ValidationInfo) -> str | None:
        if _trusted(info):
            return v
        allowed = _settings(info).models
        if v is not None and v not in allowed:
            raise ValueError(f"must be one of: {', '.join(allowed)}")
        return v

    @field_validator("callback_url")
    @classmethod
    def _callback(cls, v: str | None, info: ValidationInfo) -> str | None:
        if _trusted(info):
            return v
        if v is None:
            return v
        settings = _settings(info)
        if len(v) > settings.limits.max_callback_url_chars:
            raise ValueError(f"must be at most {settings.limits.max_callback_url_chars} characters")
        _check_url_shape(v)
        try:
            return check_callback_url(v, allow_loopback=settings.allow_loopback_callbacks)
        except UnsafeUrl as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if _trusted(info):
            return v
        lim = _limits(info)
        if len(v) > lim.max_metadata_entries:
            raise ValueError(f"must have at most {lim.max_metadata_entries} entries")
        for key, value in v.items():
            if not key or len(key) > lim.max_metadata_key_chars:
                raise ValueError(f"keys must be 1-{lim.max_metadata_key_chars} characters")
            if len(value) > lim.max_metadata_value_chars:
                raise ValueError(f"values must be at most {lim.max_metadata_value_chars} characters")
            _check_text(key, lim.max_metadata_key_chars, allow_empty=False)
            _check_text(value, lim.max_metadata_value_chars, allow_empty=True)
        return v

    @field_validator("image", "mask")
    @classmethod
    def _input(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None or _trusted(info):
            return v
        if v.startswith("data:"):
            limit = _limits(info).max_data_url_chars
            if len(v) > limit:
                raise ValueError(f"a data URL must be at most {limit} characters; send larger images by upload")
            return v
        if not is_upload_id(v):
            raise ValueError("must be an upload id (POST /v1/uploads) or a data URL")
        return v

    @field_validator("strength")
    @classmethod
    def _strength(cls, v: float | None) -> float | None:
        if v is None:
            return v
        if not 0 < v <= 1:
            raise ValueError("must be greater than 0 and at most 1")
        return float(v)

    @field_validator("loras")
    @classmethod
    def _loras(cls, v: list[LoraRef], info: ValidationInfo) -> list[LoraRef]:
        if _trusted(info):
            return v
        settings = _settings(info)
        if len(v) > settings.limits.max_loras:
            raise ValueError(f"must have at most {settings.limits.max_loras} entries")
        ids = [lora.id for lora in v]
        if len(set(ids)) != len(ids):
            raise ValueError("must not repeat a LoRA")
        # ``model`` is validated before ``loras`` (field order); a job that names none gets the default.
        model = info.data.get("model") or settings.default_model
        for lora in v:
            entry = settings.loras.get(lora.id)
            if entry is not None and model not in entry.base_models:
                raise ValueError(f"LoRA {lora.id!r} applies to {', '.join(entry.base_models)}, not model {model!r}")
        return v

    @field_validator("webhook_events")
    @classmethod
    def _webhook_events(cls, v: list[WebhookEvent]) -> list[WebhookEvent]:
        if not v:
            raise ValueError("must name at least one event")
        if len(set(v)) != len(v):
            raise ValueError("must not repeat an event")
        return v

    @model_validator(mode="before")
    @classmethod
    def _events_need_a_callback(cls, data: Any, info: ValidationInfo) -> Any:
        # On the body as sent (a stored request, re-read as a model, holds every field with its default).
        if (
            isinstance(data, dict)
            and not _trusted(info)
            and "webhook_events" in data
            and data.get("callback_url") is None
        ):
            raise _invalid("webhook_events", "webhook_events needs a callback_url to send the events to")
        return data

    def wants_webhook(self, subscription: WebhookEvent) -> bool:
        """Whether this request has webhooks of ``subscription`` sent (a callback URL, and the subscription named in
        ``webhook_events``): ``completed`` is the terminal webhook's."""
        return bool(self.callback_url) and subscription in self.webhook_events

    @model_validator(mode="after")
    def _area(self, info: ValidationInfo) -> GenerationRequest:
        # The size as it will run: a side the request leaves out is its model's (``normalised``).
        if _trusted(info):
            return self
        lim = _limits(info)
        defaults = self._deployment_defaults(_settings(info))
        width, height = defaults.get("width", self.width), defaults.get("height", self.height)
        if width * height > lim.max_pixels:
            raise _invalid("width", f"width*height must be at most {lim.max_pixels} pixels (here {width}x{height})")
        return self

    @model_validator(mode="after")
    def _inputs_need_image(self) -> GenerationRequest:
        if self.image is None and (self.mask is not None or self.strength is not None):
            raise _invalid("mask" if self.mask is not None else "strength", "mask and strength need an image")
        return self

    @model_validator(mode="after")
    def _strength_leaves_a_step(self, info: ValidationInfo) -> GenerationRequest:
        # diffusers runs int(num_inference_steps x strength) steps from the input: none would fail on the GPU.
        # With the steps it will run: the operator's default where the request leaves them out (``normalised``).
        if _trusted(info) or self.image is None:
            return self
        steps = self._deployment_defaults(_settings(info)).get("num_inference_steps", self.num_inference_steps)
        if int(steps * self._input_strength) < 1:
            raise _invalid(
                "strength",
                f"num_inference_steps x strength must be at least 1 ({steps} x {self._input_strength:g})",
            )
        return self

    @property
    def _input_strength(self) -> float:
        """The strength an image-to-image or inpainting request runs at: its own, else its mode's default."""
        return DEFAULT_STRENGTH[self.mode] if self.strength is None else float(self.strength)

    @property
    def denoising_steps(self) -> int:
        """The UNet steps the request runs: every one of ``num_inference_steps`` from noise; from an input image,
        diffusers' ``int(num_inference_steps x strength)`` (strength defaulted for the mode), the rest of the
        schedule being skipped."""
        if self.image is None:
            return self.num_inference_steps
        return int(self.num_inference_steps * self._input_strength)

    @property
    def mode(self) -> Mode:
        """text, image (image-to-image) or inpaint, from the inputs the request names."""
        if self.image is None:
            return "text"
        return "inpaint" if self.mask is not None else "image"

    @model_validator(mode="after")
    def _scheduler_of_model(self, info: ValidationInfo) -> GenerationRequest:
        if _trusted(info):
            return self
        settings = _settings(info)
        entry = settings.registry.get(self.model or settings.default_model)
        if entry is not None and entry.schedulers is not None and self.scheduler not in entry.schedulers:
            raise _invalid("scheduler", f"model {entry.id!r} takes the schedulers {', '.join(entry.schedulers)}")
        return self

    def normalised(self, settings: Settings | None = None) -> GenerationRequest:
        """The request as it will run: seed drawn when absent, model defaulted, size defaulted to the model's,
        strength defaulted for its mode.
        Its inputs stay as given: submission names them by their normalised PNG's digest."""
        settings = settings or get_settings()
        mode = self.mode
        strength = self.strength if self.strength is not None or mode == "text" else DEFAULT_STRENGTH[mode]
        model = self.model or settings.default_model
        update: dict[str, Any] = {
            "seed": self.seed if self.seed is not None else secrets.randbelow(SEED_MAX + 1),
            "model": model,
            "guidance_scale": float(self.guidance_scale),
            "strength": strength,
        }
        return self.model_copy(update=update | self._deployment_defaults(settings))

    def _deployment_defaults(self, settings: Settings) -> dict[str, Any]:
        """The values the deployment gives the fields this request leaves out: steps and guidance are the
        operator's (SDQ_LIMITS__DEFAULT_STEPS, ..._GUIDANCE), a side is its model's (the settings check each
        entry's against the limits). The validators check the request with them, as it will run."""
        defaults: dict[str, Any] = {}
        if "num_inference_steps" not in self.model_fields_set:
            defaults["num_inference_steps"] = settings.limits.default_steps
        if "guidance_scale" not in self.model_fields_set:
            defaults["guidance_scale"] = float(settings.limits.default_guidance)
        entry = settings.registry.get(self.model or settings.default_model)
        if entry is not None:
            if "width" not in self.model_fields_set:
                defaults["width"] = entry.default_width
            if "height" not in self.model_fields_set:
                defaults["height"] = entry.default_height
        return defaults

    def _canonical(self, data: dict[str, Any]) -> str:
        # A text-to-image request leaves the input fields out, one without LoRAs its loras: its keys stay those it
        # had before they existed.
        for name in INPUT_FIELDS:
            if data.get(name, "absent") is None:
                del data[name]
        if data.get("loras", "absent") == []:
            del data["loras"]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the request (idempotency body check). A field whose default the
        deployment decides (the model's size, the operator's steps and guidance, the default model) counts as
        sent or left out, not as its value: `{"prompt": "x"}` and `{"prompt": "x", "width": 512}` may run
        different jobs, so the one key cannot name both."""
        data = self.model_dump(mode="json")
        for name in DEPLOYMENT_DEFAULTS - self.model_fields_set:
            data.pop(name, None)
        return hashlib.sha256(self._canonical(data).encode()).hexdigest()

    @property
    def lora_set(self) -> LoraSet:
        """The LoRAs it applies, as (id, scale) sorted by id: what its batch must share."""
        return tuple(sorted((lora.id, float(lora.scale)) for lora in self.loras))

    def cache_key(self, model_revision: str = "", lora_revisions: Mapping[str, str] | None = None) -> str:
        """Identifies the stored images: same key, same files. The normalised request's model and the revision
        of its weights, prompt, negative prompt, size, steps, guidance, scheduler, seed, number of images,
        output format and quality (quality only where the format uses it), its inputs and strength, and its LoRAs
        with their scales and revisions (``lora_revisions``, by id). Call it on :meth:`normalised` with its inputs
        named by digest (submission does)."""
        fields = self.model_dump(
            mode="json",
            include={
                "model",
                "prompt",
                "negative_prompt",
                "width",
                "height",
                "num_inference_steps",
                "guidance_scale",
                "seed",
                "num_images",
                "scheduler",
                "output_format",
                *INPUT_FIELDS,
            },
        )
        fields["guidance_scale"] = float(self.guidance_scale)
        fields["quality"] = None if self.output_format == "png" else self.quality
        fields["model_revision"] = model_revision
        revisions = lora_revisions or {}
        fields["loras"] = [{"id": i, "scale": scale, "revision": revisions.get(i, "")} for i, scale in self.lora_set]
        return hashlib.sha256(self._canonical(fields).encode()).hexdigest()

    def cacheable(self) -> bool:
        """Whether the result cache may answer it: it names its seed (a drawn one never repeats) and allows it."""
        return self.cache and self.seed is not None

    def batch_key(self) -> tuple[str, int, int, int, float, str, Mode, float, LoraSet]:
        """Jobs with equal batch keys can share one pipeline call: same model, size, steps, guidance, scheduler,
        mode, strength and LoRA set (ids and scales)."""
        return (
            self.model or "",
            self.width,
            self.height,
            self.num_inference_steps,
            float(self.guidance_scale),
            self.scheduler,
            self.mode,
            float(self.strength or 0.0),
            self.lora_set,
        )


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    POSTPROCESSING = "POSTPROCESSING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

# The only legal moves. QUEUED -> FAILED covers jobs that never reach a worker (enqueue failure, poison
# message); RUNNING -> SUCCEEDED lets the state machine finish a job whose worker skipped POSTPROCESSING.
# Two moves belong to the worker's claims alone (shared/jobs.py): RUNNING -> QUEUED hands a claimed job back to the
# queue (``release_claim``: a batch claimed ahead that a warm stop never started), and RUNNING -> RUNNING is a
# takeover (``claim`` of a job whose worker's lease lapsed: a new attempt, another worker).
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.QUEUED,
            JobStatus.RUNNING,
            JobStatus.POSTPROCESSING,
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
        }
    ),
    JobStatus.POSTPROCESSING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def allowed_sources(target: JobStatus) -> frozenset[JobStatus]:
    """Statuses from which ``target`` may be reached."""
    return frozenset(src for src, targets in TRANSITIONS.items() if target in targets)


# A job workflow execution (statemachine.asl.json's MarkSucceeded and MarkFailed, and the failed-execution
# handler) finishes its job from fewer statuses than allowed_sources: success only from the POSTPROCESSING its
# own Postprocess entered, and a failure never from QUEUED, since every execution was started by a worker
# holding a claim and a QUEUED job at its attempt was handed back after that worker's lease lapsed.
WORKFLOW_SOURCES: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.SUCCEEDED: frozenset({JobStatus.POSTPROCESSING}),
    JobStatus.FAILED: frozenset({JobStatus.RUNNING, JobStatus.POSTPROCESSING}),
}


class Progress(BaseModel):
    step: int = 0
    total: int = 0


class ProgressView(Progress):
    preview_url: str | None = Field(
        default=None, description="A small JPEG of the image as it forms (while RUNNING), presigned like outputs."
    )


class Usage(BaseModel):
    """What a job used of the GPU: its share of each batch it ran in, by images and steps."""

    gpu_s: float = Field(description="GPU seconds this job's share of its batches took (0 for a cache hit).")
    batch_jobs: int = Field(description="Jobs in the batch it shared (0 for a cache hit).")
    batch_images: int = Field(description="Images in the batch it shared (0 for a cache hit).")
    pixel_steps: int = Field(
        description="width x height x steps run x images this job asked for (from an input image: steps x strength)."
    )
    estimated_cost_usd: float = Field(description="gpu_s at the price in price_basis.")
    price_basis: str = Field(description="The instance and hourly price the estimate uses.")

    @classmethod
    def measured(
        cls, request: GenerationRequest, *, gpu_s: float, batch_jobs: int, batch_images: int, price: GpuPrice
    ) -> Usage:
        """A generated job's usage: ``gpu_s`` is its share of the pipeline calls it ran in."""
        return cls(
            gpu_s=round(gpu_s, 4),
            batch_jobs=batch_jobs,
            batch_images=batch_images,
            pixel_steps=pixel_steps(request),
            estimated_cost_usd=price.cost(gpu_s),
            price_basis=price.basis,
        )

    @classmethod
    def cache_hit(cls, request: GenerationRequest, price: GpuPrice) -> Usage:
        """A job answered from another job's images: no GPU time, no batch."""
        return cls.measured(request, gpu_s=0.0, batch_jobs=0, batch_images=0, price=price)


def pixel_steps(request: GenerationRequest) -> int:
    """width x height x steps run x images: the work a request asks for (an image-to-image or inpainting
    request runs ``denoising_steps`` of its ``num_inference_steps``)."""
    return request.width * request.height * request.denoising_steps * request.num_images


class CacheInfo(BaseModel):
    hit: bool = Field(description="Whether an earlier identical job's images answer this job (no GPU work).")
    source_job: str | None = Field(default=None, description="The job whose images these are, on a hit.")
    joined_job: str | None = Field(
        default=None,
        description=(
            "While QUEUED: the identical job still running that this one joined; it finishes with that job's"
            " images, or runs itself should that job fail or be cancelled."
        ),
    )


class QueueInfo(BaseModel):
    """Where a QUEUED job stands and why it waits."""

    position: int = Field(description="1 = next to be taken.")
    images_ahead: int = Field(description="Images queued ahead of this job that share its workers.")
    workers: int = Field(description="Workers running now.")
    eta_s: float | None = Field(description="Estimated seconds until it starts, from measured throughput.")
    reason: str = Field(description="What the job waits for, in words a client can show.")


class JobErrorCode(StrEnum):
    """Why a FAILED job failed: the stable ``error.code`` clients branch on. docs/api.md lists each one (a test
    holds the two together); the state machine writes ``POSTPROCESS_FAILED`` itself."""

    GENERATION_FAILED = "GENERATION_FAILED"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    INPUT_NOT_FOUND = "INPUT_NOT_FOUND"
    INPUT_CORRUPT = "INPUT_CORRUPT"
    INPUT_UNAVAILABLE = "INPUT_UNAVAILABLE"
    MODE_NOT_SERVED = "MODE_NOT_SERVED"
    POSTPROCESS_FAILED = "POSTPROCESS_FAILED"
    DEAD_LETTERED = "DEAD_LETTERED"
    ENQUEUE_FAILED = "ENQUEUE_FAILED"
    EXPIRED = "EXPIRED"
    ABANDONED = "ABANDONED"
    MODEL_REVISION_GONE = "MODEL_REVISION_GONE"
    LORA_REVISION_GONE = "LORA_REVISION_GONE"
    WORKFLOW_FAILED = "WORKFLOW_FAILED"


class JobError(BaseModel):
    code: str  # a JobErrorCode's value
    message: str


class Output(BaseModel):
    """One stored image (keys are private; the API turns them into presigned URLs)."""

    index: int
    key: str
    content_type: str
    width: int
    height: int
    bytes: int
    sha256: str
    thumbnail_key: str | None = None


# The terminal webhook's event type for each final status (webhooks and the events stream send these names).
TERMINAL_EVENTS = {
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}


def webhook_id(job_id: str, event: str) -> str:
    """Stable per job and event, identical across retries and redeliveries, so receivers can dedupe."""
    return f"msg_{job_id}_{event.replace('.', '_')}"


class WebhookState(BaseModel):
    """Delivery record of the job's terminal webhook (all attempts, retries and redeliveries)."""

    event: str
    webhook_id: str
    state: Literal["pending", "retrying", "delivered", "failed", "blocked"]
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    last_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    # While ``state`` is ``retrying``: when the next attempt of the retry schedule is due.
    next_attempt_at: datetime | None = None


class Job(BaseModel):
    """The job record as stored in the jobs table."""

    job_id: str
    tenant: str
    status: JobStatus
    request: GenerationRequest
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempt: int = 0
    progress: Progress = Field(default_factory=Progress)
    outputs: list[Output] = Field(default_factory=list)
    error: JobError | None = None
    cache_key: str
    idempotency_key: str | None = None
    expires_at: int
    model_is_noise: bool = False
    # The model's registry revision at submit: only a worker that loaded it generates the job (None: unpinned).
    model_revision: str | None = None
    # Each LoRA's registry revision at submit, by id: only a worker whose registry pins the same applies them.
    lora_revisions: dict[str, str] = Field(default_factory=dict)
    webhook: WebhookState | None = None
    cache_source: str | None = None  # the job whose images answer this one (a result-cache hit or join)
    joined_to: str | None = None  # while QUEUED: the identical running job whose images will answer this one
    usage: Usage | None = None
    preview_key: str | None = None  # the newest progress preview's object key
    # The X-Ray trace header of its submit (shared/tracing.py): its message, sent again, continues that trace.
    trace_header: str | None = None


class QueueMessage(BaseModel):
    """The SQS message body: enough to batch without a table read; the table stays the source of truth."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    job_id: str
    tenant: str
    request: GenerationRequest
    enqueued_at: datetime

    @classmethod
    def for_job(cls, job: Job) -> QueueMessage:
        """The message that sends ``job`` to the queue now (its first send, or a send again)."""
        return cls(job_id=job.job_id, tenant=job.tenant, request=job.request, enqueued_at=utcnow())


class WorkerError(BaseModel):
    """Why a worker could not generate a job's images (the state machine records it as the job's error)."""

    model_config = ConfigDict(extra="forbid")

    code: str
    message: str


class WorkflowInput(BaseModel):
    """The job workflow's execution input (``statemachine.asl.json`` reads these fields).

    Three shapes, one per writer: :meth:`generated` (the worker's images), :meth:`worker_failed` (the worker's
    error, no images) and :meth:`notice` (only the webhook of a job finished outside its execution). Fields a
    shape does not use are left out of the JSON, since the ASL's Choice states test whether they are present.
    """

    model_config = ConfigDict(extra="forbid")

    job_id: str
    tenant: str
    has_callback: bool
    attempt: int | None = None
    staging_keys: list[str] | None = None
    worker_id: str | None = None
    model: str | None = None
    worker_error: WorkerError | None = None
    notify_only: Literal[True] | None = None
    reason: str | None = None

    @classmethod
    def generated(
        cls, job: Job, *, staging_keys: list[str], worker_id: str, model: str, has_callback: bool
    ) -> WorkflowInput:
        return cls(
            job_id=job.job_id,
            tenant=job.tenant,
            attempt=job.attempt,
            staging_keys=staging_keys,
            worker_id=worker_id,
            model=model,
            has_callback=has_callback,
        )

    @classmethod
    def worker_failed(cls, job: Job, *, error: WorkerError, worker_id: str, has_callback: bool) -> WorkflowInput:
        return cls(
            job_id=job.job_id,
            tenant=job.tenant,
            attempt=job.attempt,
            staging_keys=[],
            worker_id=worker_id,
            worker_error=error,
            has_callback=has_callback,
        )

    @classmethod
    def notice(cls, job: Job, *, reason: str) -> WorkflowInput:
        return cls(job_id=job.job_id, tenant=job.tenant, notify_only=True, has_callback=True, reason=reason)

    def payload(self) -> dict[str, Any]:
        """The execution input as JSON-ready data, without the fields this shape leaves out."""
        return self.model_dump(mode="json", exclude_none=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


class OutputView(BaseModel):
    """An output as clients see it: short-lived presigned URLs instead of bucket keys."""

    index: int
    url: str
    thumbnail_url: str | None = None
    content_type: str
    width: int
    height: int
    bytes: int
    sha256: str


class Timings(BaseModel):
    queued_s: float | None = Field(default=None, description="From submit to a worker claiming the job.")
    run_s: float | None = Field(default=None, description="From claim to the terminal status.")
    total_s: float | None = Field(default=None, description="From submit to the terminal status.")


class JobView(BaseModel):
    """The job as ``GET /v1/jobs/{id}`` returns it (and as webhooks carry it)."""

    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempt: int
    progress: ProgressView
    timings: Timings
    request: GenerationRequest
    outputs: list[OutputView]
    outputs_expire_at: datetime | None = Field(description="When the URLs in outputs stop working.")
    error: JobError | None
    model_note: str | None = Field(description="Set when the model's images are noise (the built-in tiny model).")
    model_revision: str | None = Field(
        default=None,
        description="The model's revision the job is pinned to (set at submit from the model registry).",
    )
    lora_revisions: dict[str, str] = Field(
        default_factory=dict,
        description="The revision of each of its LoRAs, by id, the job is pinned to (set at submit from the LoRA"
        " registry).",
    )
    metadata: dict[str, str]
    webhook: WebhookState | None = Field(
        default=None,
        description=(
            "The terminal webhook's delivery record; null until its first attempt, and for good when none was asked"
            " for (no callback_url, or webhook_events without completed)."
        ),
    )
    cache: CacheInfo = Field(default_factory=lambda: CacheInfo(hit=False))
    queue: QueueInfo | None = Field(default=None, description="Set while QUEUED: position, ETA and why it waits.")
    usage: Usage | None = Field(default=None, description="What the job used and cost, once it ran (or hit).")


class JobList(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None


class Upload(BaseModel):
    """``POST /v1/uploads``: where to send one input image, and the id a job names it by."""

    id: str = Field(description="Name it in a job's image or mask (yours only).")
    url: str = Field(description="POST a multipart form here: every entry of fields, then the image as file.")
    fields: dict[str, str] = Field(description="Form fields to send as they are, before the file.")
    expires_at: datetime = Field(description="When the form stops being accepted.")
    max_bytes: int = Field(description="The largest file accepted.")
    content_type: str = Field(description="Send a Content-Type field starting with this (image/png, ...).")


class WebhookSecret(BaseModel):
    secret: str = Field(description="Standard Webhooks signing secret (whsec_ + base64).")


class RotatedWebhookSecret(WebhookSecret):
    previous_secret_valid_until: datetime | None = Field(
        description="Until when (UTC) webhooks are also signed with the replaced secret; null when it no longer"
        " signs at all (no overlap configured, or there was no secret before)."
    )


class ModelInfo(BaseModel):
    """``GET /v1/models``: one model a job may name, and what a job of it runs with when the request leaves a
    field out."""

    id: str = Field(description="What a job's model names.")
    default: bool = Field(description="The model of a request that names none.")
    architecture: Architecture = Field(description="Its pipeline's family.")
    revision: str = Field(description="The weights served now (a job shows it as model_revision).")
    default_width: int = Field(description="A request's width when it gives none.")
    default_height: int = Field(description="A request's height when it gives none.")
    default_num_inference_steps: int = Field(description="A request's num_inference_steps when it gives none.")
    default_guidance_scale: float = Field(description="A request's guidance_scale when it gives none.")
    schedulers: list[Scheduler] = Field(description="The schedulers a job of it may name.")
    loras: list[str] = Field(description="The LoRA ids a job of it may name in loras.")
    note: str | None = Field(description="What a built-in model's images are (the tiny model's are noise).")


class ModelList(BaseModel):
    models: list[ModelInfo] = Field(description="Every model this deployment accepts, the default first.")


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorInfo
