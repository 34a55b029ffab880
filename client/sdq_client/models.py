"""The API's bodies as typed models.

Names, fields, types and required-ness match the server's `/openapi.json` (the service's tests compare them, so
a field the server adds must be added here). Answers are read leniently (``extra="allow"``): a newer server's
extra fields reach you in ``model_extra`` instead of failing the call.

The same goes for the values of the API's enumerations (a job's ``status``, a request's ``scheduler``,
``output_format``, ``priority`` and ``webhook_events``, a webhook's ``state``, an audit entry's ``action`` and
``outcome``, a model's ``architecture`` and ``schedulers``): each is typed ``Known | str``. A value this client
knows is its enum member or Literal string (``job.status is JobStatus.SUCCEEDED``); one a newer server added
arrives as the plain string instead of failing the call. Code that branches on them keeps a default branch.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr


def _json_int(value: Any) -> Any:
    """JSON integers, as the API reads them: 4 and 4.0 are the same number; "4" and true are not integers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# The request's types are the API's own (shared/contracts.py): nothing is coerced that the API would refuse, so a
# value the API refuses ("256" for a width, "no" for a boolean) is refused before it is sent, not changed.
JsonInt = Annotated[StrictInt, BeforeValidator(_json_int)]
# A JSON number: integers too ("7" and true are not numbers); one type, so a refusal names the field alone.
JsonNumber = StrictFloat

Scheduler = Literal["ddim", "euler", "euler_a", "dpmpp_2m", "pndm", "lms"]
OutputFormat = Literal["png", "jpeg", "webp"]
WebhookEventName = Literal["started", "progress", "completed"]
WebhookDeliveryState = Literal["pending", "retrying", "delivered", "failed", "blocked"]
# Open enumerations: a known value first (its enum member, its Literal string), else any string (a newer server's).
OpenScheduler = Annotated[Scheduler | StrictStr, Field(union_mode="left_to_right")]
OpenOutputFormat = Annotated[OutputFormat | StrictStr, Field(union_mode="left_to_right")]
OpenWebhookEventName = Annotated[WebhookEventName | StrictStr, Field(union_mode="left_to_right")]
OpenWebhookDeliveryState = Annotated[WebhookDeliveryState | StrictStr, Field(union_mode="left_to_right")]


class _Answer(BaseModel):
    """A body of the API: unknown fields are kept, never refused."""

    model_config = ConfigDict(extra="allow")


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    POSTPROCESSING = "POSTPROCESSING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """Finished: a finished job never changes again."""
        return self in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}


OpenJobStatus = Annotated[JobStatus | StrictStr, Field(union_mode="left_to_right")]


class Priority(StrEnum):
    """Which queued work workers take first; your plan sets the highest you may ask for."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


OpenPriority = Annotated[Priority | StrictStr, Field(union_mode="left_to_right")]


class LoraRef(_Answer):
    """One LoRA a job applies: an id of the deployment's LoRA registry, and how strongly (0 turns it off)."""

    id: StrictStr
    scale: JsonNumber = 1.0


class GenerationRequest(_Answer):
    """What to generate. Only the fields you set are sent; the server fills the rest (and draws a seed). Fields
    this client does not know are sent as given (the server refuses those it does not know either).

    Each field takes the JSON type the API takes, without coercion (an integral float is an integer, as in JSON;
    a string is never a number or a boolean); the bounds are the API's to check."""

    prompt: StrictStr
    negative_prompt: StrictStr = ""
    width: JsonInt = 512
    height: JsonInt = 512
    num_inference_steps: JsonInt = 30
    guidance_scale: JsonNumber = 7.5
    seed: JsonInt | None = None
    num_images: JsonInt = 1
    scheduler: OpenScheduler = "euler_a"
    output_format: OpenOutputFormat = "png"
    quality: JsonInt = 90
    model: StrictStr | None = None
    callback_url: StrictStr | None = None
    metadata: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    cache: StrictBool = True
    priority: OpenPriority = Priority.NORMAL
    webhook_events: list[OpenWebhookEventName] = Field(default_factory=lambda: list[str](["completed"]))
    # Image-to-image and inpainting: an upload id (Client.upload) or a data URL; strength 0 < s <= 1.
    image: StrictStr | None = None
    mask: StrictStr | None = None
    strength: JsonNumber | None = None
    # LoRAs of the deployment's registry made for the model (GET /openapi.json lists the bounds).
    loras: list[LoraRef] = Field(default_factory=list)


class ProgressView(_Answer):
    step: int = 0
    total: int = 0
    preview_url: str | None = None


class Timings(_Answer):
    queued_s: float | None = None
    run_s: float | None = None
    total_s: float | None = None


class OutputView(_Answer):
    index: int
    url: str
    thumbnail_url: str | None = None
    content_type: str
    width: int
    height: int
    bytes: int
    sha256: str


class JobError(_Answer):
    code: str
    message: str


class WebhookState(_Answer):
    event: str
    webhook_id: str
    state: OpenWebhookDeliveryState
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    last_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    next_attempt_at: datetime | None = None


class CacheInfo(_Answer):
    hit: bool
    source_job: str | None = None
    joined_job: str | None = None


class QueueInfo(_Answer):
    position: int
    images_ahead: int
    workers: int
    eta_s: float | None
    reason: str


class Usage(_Answer):
    gpu_s: float
    batch_jobs: int
    batch_images: int
    pixel_steps: int
    estimated_cost_usd: float
    price_basis: str


class JobView(_Answer):
    """A job as ``GET /v1/jobs/{id}`` shows it; output URLs are presigned afresh on every answer."""

    id: str
    status: OpenJobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempt: int
    progress: ProgressView
    timings: Timings
    request: GenerationRequest
    outputs: list[OutputView]
    outputs_expire_at: datetime | None
    error: JobError | None
    model_note: str | None
    model_revision: str | None = None
    lora_revisions: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, str]
    webhook: WebhookState | None = None
    cache: CacheInfo = Field(default_factory=lambda: CacheInfo(hit=False))
    queue: QueueInfo | None = None
    usage: Usage | None = None

    @property
    def finished(self) -> bool:
        """SUCCEEDED, FAILED or CANCELLED; a status this client does not know counts as finished once the job has a
        ``finished_at``."""
        if isinstance(self.status, JobStatus):
            return self.status.terminal
        return self.finished_at is not None


class JobList(_Answer):
    jobs: list[JobView]
    next_cursor: str | None


class Upload(_Answer):
    """Where to send one input image (``POST /v1/uploads``); name ``id`` in a request's image or mask."""

    id: str
    url: str
    fields: dict[str, str]
    expires_at: datetime
    max_bytes: int
    content_type: str


class WebhookSecret(_Answer):
    secret: str


class RotatedWebhookSecret(WebhookSecret):
    previous_secret_valid_until: datetime | None


Architecture = Literal["tiny", "sd15", "sd2", "sdxl"]
OpenArchitecture = Annotated[Architecture | StrictStr, Field(union_mode="left_to_right")]


class ModelInfo(_Answer):
    """One model a job may name (``GET /v1/models``), and what a job of it runs with where the request says
    nothing."""

    id: str
    default: bool
    architecture: OpenArchitecture
    revision: str
    default_width: int
    default_height: int
    default_num_inference_steps: int
    default_guidance_scale: float
    schedulers: list[OpenScheduler]
    loras: list[str]
    note: str | None


class ModelList(_Answer):
    models: list[ModelInfo]


class ErrorInfo(_Answer):
    code: str
    message: str
    details: Any = None


class ErrorBody(_Answer):
    error: ErrorInfo


class AuditAction(StrEnum):
    JOB_SUBMIT = "job.submit"
    JOB_CANCEL = "job.cancel"
    WEBHOOK_REDELIVER = "webhook.redeliver"
    WEBHOOK_SECRET_ROTATE = "webhook_secret.rotate"  # noqa: S105 an action name
    UPLOAD_CREATE = "upload.create"
    TENANT_CREATE = "tenant.create"
    TENANT_SET_PLAN = "tenant.set_plan"
    KEY_CREATE = "key.create"
    KEY_REVOKE = "key.revoke"


OpenAuditAction = Annotated[AuditAction | StrictStr, Field(union_mode="left_to_right")]


class AuditOutcome(StrEnum):
    ACCEPTED = "accepted"
    REFUSED = "refused"
    FAILED = "failed"


OpenAuditOutcome = Annotated[AuditOutcome | StrictStr, Field(union_mode="left_to_right")]


class AuditEvent(_Answer):
    """One state-changing call recorded in your audit log: who, what, when, from where, and how it ended."""

    id: str
    at: datetime
    tenant: str
    key_id: str | None = None
    action: OpenAuditAction
    target: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None
    outcome: OpenAuditOutcome
    status: int | None = None
    error_code: str | None = None
    details: dict[str, str] = Field(default_factory=dict)


class AuditList(_Answer):
    entries: list[AuditEvent]
    next_cursor: str | None


class JobEvent(_Answer):
    """A webhook's body, and an event of ``stream()``: the event type, when it was made, and the job then."""

    type: str
    timestamp: datetime
    data: JobView
    # Set by stream(): the Server-Sent Events id of this event (resuming after it skips it).
    event_id: str | None = Field(default=None, exclude=True)


Job = JobView
