"""Service settings, read once per process from the environment (prefix ``SDQ_``), grouped by concern.

``Settings`` holds the service-wide values (resources, API bounds, AWS timeouts, webhooks, retention) and three
groups: ``worker`` (the GPU worker's loop), ``acceleration`` (its speed levers) and ``limits`` (request bounds).
The worker and acceleration groups keep flat variable names (``SDQ_MAX_BATCH_IMAGES``, not
``SDQ_WORKER__MAX_BATCH_IMAGES``): each is a settings model of its own that reads them when ``Settings`` is built.
Request limits are nested, ``SDQ_LIMITS__<NAME>``. Every bound the API enforces lives here so operators can
change it without touching code.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.loraregistry import EMPTY_LORA_REGISTRY, LoraRegistry, parse_lora_registry
from shared.modelregistry import BUILTIN_REGISTRY, ModelRegistry, parse_registry
from shared.pricing import gpu_price

PREFIX = "SDQ_"
# The state machine's execution timeout (``TimeoutSeconds`` of statemachine.asl.json, which
# tests/unit/test_webhook_schedule.py holds equal to it): no execution, and so no webhook delivery, lasts longer.
WORKFLOW_TIMEOUT_S = 48 * 3600
# The longest a webhook's retry schedule may span: the execution's timeout leaves the rest of an execution 8 h
# beside it.
MAX_WEBHOOK_RETRY_SPAN_S = WORKFLOW_TIMEOUT_S - 8 * 3600
# The longest a terminal webhook's delivery may last from its execution's start (workflows/webhooks.py's
# delivery_span_s): no attempt is scheduled later, so the last one and the execution's end fit in its timeout.
MAX_WEBHOOK_DELIVERY_S = WORKFLOW_TIMEOUT_S - 4 * 3600
# The API function's timeout (template.yaml's Globals ``Timeout``, which tests/integration/test_template.py holds
# equal to it): no submission is still writing or sending its job longer than this after it began.
API_TIMEOUT_S = 30


class RequestLimits(BaseModel):
    """Bounds of a generation request (``SDQ_LIMITS__*`` overrides each one)."""

    prompt_max_chars: int = Field(default=2000, description="Longest `prompt`, in characters")
    negative_prompt_max_chars: int = Field(default=2000, description="Longest `negative_prompt`, in characters")
    min_side: int = Field(default=256, description="Smallest `width` and `height`")
    max_side: int = Field(default=1024, description="Largest `width` and `height`")
    max_pixels: int = Field(default=1024 * 1024, description="Largest `width * height`")
    side_multiple: int = Field(default=8, description="`width` and `height` must be multiples of this")
    max_steps: int = Field(default=100, description="Most `num_inference_steps`")
    default_steps: int = Field(
        default=30,
        description="`num_inference_steps` of a request that gives none (lowered to `max_steps` if above it)",
    )
    max_guidance: float = Field(default=20.0, description="Largest `guidance_scale`")
    default_guidance: float = Field(
        default=7.5, description="`guidance_scale` of a request that gives none (lowered to `max_guidance` if above it)"
    )
    max_images: int = Field(default=4, description="Most `num_images` per job")
    max_loras: int = Field(default=3, ge=0, description="Most `loras` per job")
    max_lora_scale: float = Field(default=2.0, gt=0, description="Largest absolute `loras[].scale`")
    max_metadata_entries: int = Field(default=16, description="Most `metadata` entries")
    max_metadata_key_chars: int = Field(default=64, description="Longest `metadata` key, in characters")
    max_metadata_value_chars: int = Field(default=512, description="Longest `metadata` value, in characters")
    max_callback_url_chars: int = Field(default=2048, description="Longest `callback_url`, in characters")
    max_input_bytes: int = Field(
        default=10 * 1024 * 1024,
        description="Largest input image or mask, in bytes (an upload's presigned POST allows no more)",
    )
    max_data_url_chars: int = Field(
        default=200_000,
        description="Longest `image` or `mask` given as a data URL, in characters (larger ones go by upload)",
    )
    min_input_side: int = Field(default=64, description="Smallest width and height of an input image")
    max_input_side: int = Field(default=4096, description="Largest width and height of an input image")
    max_input_pixels: int = Field(
        default=4096 * 4096,
        description="Most pixels of an input image, checked before it is decoded (decompression-bomb guard)",
    )

    @model_validator(mode="after")
    def _defaults_within_bounds(self) -> RequestLimits:
        # A bound lowered below the default's default lowers that default with it; one set outside is refused.
        if "default_steps" not in self.model_fields_set:
            self.default_steps = min(self.default_steps, self.max_steps)
        if "default_guidance" not in self.model_fields_set:
            self.default_guidance = min(self.default_guidance, self.max_guidance)
        if not 1 <= self.default_steps <= self.max_steps:
            raise ValueError(f"default_steps must be between 1 and max_steps ({self.max_steps})")
        if not 0 <= self.default_guidance <= self.max_guidance:
            raise ValueError(f"default_guidance must be between 0 and max_guidance ({self.max_guidance})")
        return self


class SettingsGroup(BaseSettings):
    """A group of settings read from flat ``SDQ_<NAME>`` variables; a field may name its own (``validation_alias``)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", validate_by_name=True)

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Each field's environment variable, by field name."""
        return {
            name: field.validation_alias if isinstance(field.validation_alias, str) else PREFIX + name.upper()
            for name, field in cls.model_fields.items()
        }


class WorkerSettings(SettingsGroup):
    """The GPU worker's loop: its model, batching, queue waits, leases and stop budget."""

    model: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["tiny"],
        min_length=1,
        description=(
            "The worker's models, comma-separated (several share one GPU; each batch runs on one): model registry"
            " ids, else `tiny`, a hub id or a local diffusers folder"
        ),
    )
    require_gpu: bool = Field(
        default=False,
        description=(
            "Exit at start when no CUDA GPU is usable (the template sets it for its workers: a host whose driver the"
            " image cannot use fails the task instead of generating on CPU)"
        ),
    )
    fleet: str | None = Field(
        default=None,
        description=(
            "Load every model the model registry assigns this fleet instead of `SDQ_MODEL` (the template sets it"
            " for each fleet's workers)"
        ),
    )
    max_batch_images: int = Field(
        default=8,
        ge=1,
        description=(
            "Images per pipeline call, counting `num_images` (on a GPU also capped by what fits in free memory)"
        ),
    )
    max_batch_wait_ms: int = Field(
        default=200, ge=0, description="How long a batch waits for compatible jobs after its first one"
    )
    receive_wait_s: int = Field(default=20, ge=0, le=20, description="SQS long-poll wait")
    visibility_timeout_s: int = Field(default=300, ge=5, description="Message invisibility and job lease length")
    heartbeat_s: float = Field(default=60.0, gt=0, description="How often held messages and job leases are extended")
    grace_s: float = Field(default=120.0, ge=0, description="Warm-stop budget after SIGTERM")
    stall_timeout_s: float = Field(
        default=1200.0,
        gt=0,
        description=(
            "A pipeline call with no denoising step for this long is hung: the worker lets its jobs go and exits "
            "with status 70 (its container is replaced). Longer than a first call's compilation"
        ),
    )
    max_consecutive_failures: int = Field(
        default=3,
        ge=2,
        description=(
            "Jobs failing alone one after another, with no successful pipeline call between, after which the worker"
            " counts its device faulty: it hands back what it holds and exits with status 70 (its container is"
            " replaced). From the second such job on, a job is handed back (attempt counted) instead of failed"
        ),
    )
    health_file: str | None = Field(
        default=None,
        description=(
            "A file the worker touches every second while healthy; the container health check "
            "(`python -m workflows.generation.health`) fails once it is over 60 s old. Unset: none (the image sets it)"
        ),
    )
    encode_processes: int | None = Field(
        default=None,
        ge=0,
        description=(
            "PNG encoding for staging in N spawned helper processes instead of the finisher threads "
            "(0); unset: 2 on CUDA, 0 on CPU. On a GPU it keeps Pillow off the GPU thread's GIL (32 ms "
            "per batch of 16 with feature reuse on an H200, nothing measurable on the exact path); a "
            "helper that dies is replaced without losing an image"
        ),
    )
    progress_interval_s: float = Field(default=1.0, gt=0, description="Minimum time between progress writes")

    @field_validator("model", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        if isinstance(value, str):  # `tiny,shapes`, or the JSON list the configuration doc shows as the default
            return (
                json.loads(value)
                if value.lstrip().startswith("[")
                else [m.strip() for m in value.split(",") if m.strip()]
            )
        return value

    lora_cache_mb: int = Field(
        default=1024,
        ge=0,
        description=(
            "Memory the LoRA adapters kept loaded into each of a worker's models may hold, in MiB; past it the least"
            " recently used are unloaded (never one of the running batch's, so one batch may pass it)"
        ),
    )

    model_cache: str | None = Field(
        default=None, description="Where the built-in tiny model is saved (unset: ~/.cache/sdq/models)"
    )
    xray: bool = Field(default=False, description="Worker X-Ray segments (the ECS task runs the daemon beside it)")


class AccelerationSettings(SettingsGroup):
    """The worker's speed levers (docs/worker.md "Speed levers"); ``AccelerationOptions`` takes its defaults here.

    Fields are named as the options are; five keep their older variable names through ``validation_alias``.
    """

    precision: Literal["fp16", "bf16", "fp32"] | None = Field(
        default=None, description="`fp16`, `bf16` or `fp32`; unset: fp16 on CUDA, fp32 on CPU"
    )
    compile: bool = Field(
        default=False,
        description="`torch.compile` of the UNet and VAE decoder with static, bucketed batch shapes (CUDA only)",
    )
    autotune: bool = Field(
        validation_alias="SDQ_COMPILE_AUTOTUNE",
        default=False,
        description="max-autotune GEMM/convolution search (minutes more per shape)",
    )
    cuda_graphs: bool | None = Field(default=None, description="CUDA graphs (unset: on with compile)")
    channels_last: bool | None = Field(default=None, description="channels_last memory format (unset: on with compile)")
    fuse_qkv: bool | None = Field(default=None, description="Fused QKV projections (unset: on with compile)")
    compile_vae: bool = Field(default=True, description="Also compile the VAE decoder (with compile)")
    buckets: str | None = Field(
        validation_alias="SDQ_BATCH_BUCKETS",
        default=None,
        description="Padded batch sizes, comma-separated (unset: 1,2,4,8,16)",
    )
    compile_resolutions: str | None = Field(
        default=None,
        description="WxH sizes that take the compiled path (unset: the native square); other sizes run eager",
    )
    cache_dir: str | None = Field(
        validation_alias="SDQ_COMPILE_CACHE_DIR",
        default=None,
        description="Persistent inductor cache folder (`TORCHINDUCTOR_CACHE_DIR`)",
    )
    mega_cache: str | None = Field(
        validation_alias="SDQ_COMPILE_MEGA_CACHE",
        default=None,
        description="Compile-artifacts file: loaded before the first compile, written once all shapes are warm",
    )
    warmup: bool = Field(
        validation_alias="SDQ_COMPILE_WARMUP",
        default=True,
        description=(
            "Compile the smallest bucket before the first job, and each other bucket at every compiled size while "
            "the worker holds no job (false: each shape compiles at its first batch)"
        ),
    )
    prompt_cache_size: int = Field(default=256, ge=0, description="Prompt-embedding LRU entries (0: off)")
    vae_bf16: bool = Field(
        default=False,
        description=(
            "Quality-trading, SDXL-type pipelines with an fp16 `force_upcast` VAE: decode in bf16 "
            "instead of fp32 (the decoder can then be compiled; images change by up to 3 levels)"
        ),
    )
    vae_one_call: bool = Field(
        default=True,
        description=(
            "On CUDA with an eager VAE decoder: decode a call's images in one VAE call when the free "
            "memory holds all of them, else one at a time; `false`: always one at a time (lower peak "
            "memory)"
        ),
    )
    feature_reuse: int = Field(
        default=0,
        ge=0,
        description=(
            "Quality-trading, DeepCache-style: the whole UNet runs every N-th step only, its deep "
            "features reused in between (0: off; 1 is refused; changes the images)"
        ),
    )
    cfg_truncation: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description=(
            "Quality-trading: the share of the denoising steps, at the end of the schedule, run without "
            "classifier-free guidance's unconditional pass (text-to-image; 0: off; changes the images)"
        ),
    )
    fp8: bool = Field(
        default=False,
        description=(
            "Quality-trading: FP8 products in the UNet's attention blocks (Hopper/Ada; changes the "
            "images; measured slower on an H200)"
        ),
    )
    aot_dir: str | None = Field(
        default=None,
        description=(
            "With compile: a folder of AOTInductor packages for the UNet and VAE decoder, used instead "
            "of `torch.compile`; the first start builds them, later starts load them without a Dynamo "
            "trace (no CUDA graphs on this path)"
        ),
    )
    precompile_dir: str | None = Field(
        default=None,
        description=(
            "With compile: a folder of torch's AOT-compiled modules (Dynamo byte code, guards and inductor "
            "artefacts) per compiled shape of the UNet and VAE decoder; the first start writes them, later "
            "starts load them instead of re-tracing (CUDA graphs kept)"
        ),
    )


class Settings(BaseSettings):
    """Everything the API, the task Lambdas and the worker need to know about their environment."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_nested_delimiter="__", extra="ignore")

    region: str | None = Field(default=None, description="AWS region; falls back to AWS_REGION/AWS_DEFAULT_REGION")
    endpoint_url: str | None = Field(
        default=None,
        description=("Endpoint override for every AWS client (the local cloud); `AWS_ENDPOINT_URL` is honoured too"),
    )

    table_name: str = Field(default="sdq-jobs", description="The jobs table (set by the template / local cloud)")
    queue_url: str = Field(default="", description="The jobs queue (set by the template / local cloud)")
    dlq_url: str = Field(
        default="", description="The jobs queue's dead-letter queue (set by the template / local cloud)"
    )
    bucket: str = Field(default="sdq-media", description="The media bucket (set by the template / local cloud)")
    state_machine_arn: str = Field(
        default="", description="The job workflow's state machine (set by the template / local cloud)"
    )

    models: list[str] = Field(
        default_factory=lambda: ["tiny"],
        description="Model allowlist (a JSON list): the `model` values a request may name (the default model too)",
    )
    default_model: str = Field(default="tiny", description="The model of a request that names none")
    model_registry: Annotated[ModelRegistry | None, NoDecode] = Field(
        default=None,
        description=(
            'The model registry (docs/worker.md): the path of a JSON file, or inline JSON `{"models": [...]}`;'
            " every model of `SDQ_MODELS` must be in it. Unset: the built-in `tiny` and `shapes` models"
        ),
    )
    lora_registry: Annotated[LoraRegistry | None, NoDecode] = Field(
        default=None,
        description=(
            'The LoRAs a job may name (docs/models.md#loras): the path of a JSON file, or inline JSON `{"loras":'
            " [...]}`. Unset: none"
        ),
    )
    limits: RequestLimits = Field(
        default_factory=RequestLimits,
        description="Bounds of a generation request, one variable per bound (`SDQ_LIMITS__<NAME>`)",
    )
    worker: WorkerSettings = Field(
        default_factory=WorkerSettings, description="The GPU worker's loop, one flat variable per setting"
    )
    acceleration: AccelerationSettings = Field(
        default_factory=AccelerationSettings,
        description="The worker's speed levers, one flat variable per setting",
    )

    max_unfinished_jobs_per_tenant: int = Field(
        default=100,
        description="Unfinished jobs per tenant before a submission gets `429` (the default plan's; see `sdq admin`)",
    )
    rate_limit_per_window: int = Field(
        default=120,
        ge=1,
        description="Job submissions per tenant per window before `429` (the default plan's; see `sdq admin`)",
    )
    rate_limit_window_s: int = Field(default=60, ge=1, description="Length of the rate-limit window, in seconds")
    daily_gpu_budget_mpx_steps: int = Field(
        default=0,
        ge=0,
        description=(
            "GPU work a tenant may submit per UTC day, in megapixel steps (width x height x steps run x images"
            " / 10^6; a 512x512 image of 30 steps is 7.9; from an input image, steps x strength run), before a"
            " submission gets `429`; 0: no budget (the default plan's)"
        ),
    )
    max_priority: Literal["low", "normal", "high"] = Field(
        default="normal", description="The highest `priority` a tenant's jobs may ask for (the default plan's)"
    )
    fleet_scales_from_zero: bool = Field(
        default=True,
        description=(
            "Whether a fleet with no worker running starts one for a queued job (the template's fleets do): a"
            " queued job's `queue.reason` and `eta_s` say so; `sdq up` sets it false"
        ),
    )
    authorizer_cache_s: int = Field(
        default=60,
        ge=0,
        le=3600,
        description=(
            "How long API Gateway reuses the authorizer's answer per API key (the template sets it from"
            " `AuthorizerCacheSeconds`); an events stream re-reads its key this often, so a revocation ends a"
            " stream as soon as it refuses a new request"
        ),
    )
    event_streams_per_tenant: int = Field(
        default=20,
        ge=1,
        description=(
            "Event streams (`GET /v1/jobs/{id}/events`) one tenant may hold open at once, each an execution of the"
            " events function for up to 15 minutes (the template sets it from `EventStreamsPerTenant`); one more"
            " is refused with `429` and `Retry-After` until one ends"
        ),
    )
    api_key_last_used_every_s: int = Field(
        default=300,
        ge=1,
        description="How often, at most, a key's `last_used_at` is written (one write per key per period)",
    )
    unfinished_cap_retry_after_s: int = Field(
        default=5, description="The `Retry-After` seconds that the unfinished-job cap's `429` carries"
    )
    max_body_bytes: int = Field(default=256 * 1024, description="Request body cap (`413` above it)")
    presign_expiry_s: int = Field(default=3600, description="Lifetime of output URLs, in seconds")
    job_retention_days: int = Field(
        default=7,
        description=(
            "DynamoDB TTL of job records; past it a job is 404, and a worker skips it (FAILED `EXPIRED`), as it does"
            " a job with under 3 h and its lease left"
        ),
    )
    audit_table_name: str = Field(
        default="sdq-audit", description="The audit log table (set by the template / local cloud)"
    )
    audit_retention_days: int = Field(
        default=90, ge=1, description="DynamoDB TTL of audit log entries (`GET /v1/audit`, `sdq admin audit`)"
    )
    page_size_default: int = Field(default=20, description="`GET /v1/jobs` page size when `limit` is absent")
    page_size_max: int = Field(
        default=100,
        description="Cap on `GET /v1/jobs`'s page size: a larger `limit` is cut to it (above 100 it is a `422`)",
    )
    enqueue_attempts: int = Field(default=3, description="Queue sends before a job is marked FAILED (`ENQUEUE_FAILED`)")
    enqueue_budget_s: float = Field(
        default=6.0,
        gt=0,
        description=(
            "The longest a submission keeps retrying the queue before it marks the job FAILED "
            "(`ENQUEUE_FAILED`) and answers 503, whatever the attempt count"
        ),
    )
    aws_connect_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "Every AWS client's connect timeout. The template gives the API function 1 s (read 3 s, 2 "
            "attempts), so with the enqueue budget a submission whose queue hangs answers within about "
            "22 s, inside API Gateway's 29 s"
        ),
    )
    aws_read_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Every AWS client's read timeout; the worker keeps its long poll 5 s shorter than it",
    )
    aws_max_attempts: int = Field(default=5, ge=1, description="Attempts per AWS call (botocore standard retries)")
    max_generation_attempts: int = Field(
        default=3,
        ge=1,
        description=(
            "Claims (GPU runs) a job may use; a dead-lettered job with attempts left is requeued, else "
            "FAILED (`DEAD_LETTERED`)"
        ),
    )

    webhook_secret_overlap_s: int = Field(
        default=24 * 3600,
        ge=0,
        description="After a webhook secret rotation, how long webhooks are signed with the replaced secret too",
    )
    webhook_secrets_key: str | None = Field(
        default=None,
        description=(
            "The KMS key (id, ARN or alias) that encrypts webhook signing secrets at rest (set by the template and the"
            " local cloud); unset: they are stored in plain text"
        ),
    )
    webhook_redeliveries_per_job: int = Field(
        default=5,
        ge=1,
        description="`POST /v1/jobs/{id}/webhook/redeliver` calls per job per hour before `429`",
    )
    webhook_redeliveries_per_tenant: int = Field(
        default=100,
        ge=1,
        description="`POST /v1/jobs/{id}/webhook/redeliver` calls per tenant per hour, all jobs together, before `429`",
    )
    webhook_deliveries_per_tenant: int = Field(
        default=5,
        ge=1,
        description=(
            "Terminal webhooks of one tenant being sent at once (the Notify function's reserved concurrency is"
            " shared by all tenants); a delivery past it waits in the state machine and tries again, not counted"
            " as an attempt"
        ),
    )
    webhook_retry_schedule_s: list[int] = Field(
        default=[5, 300, 1800, 7200, 18000, 36000, 36000],
        min_length=1,
        description=(
            "Seconds before each retry of a terminal webhook that failed with 429, 5xx, a timeout or a connection"
            " error (a JSON list; one retry per entry, about 27.6 h in all by default, as Standard Webhooks"
            " senders do); a longer `Retry-After` from the receiver, up to the longest entry, delays a retry, but"
            " no retry is made later than the sum and the longest entry again after the delivery began (at most 44 h)."
            " The state machine waits between attempts; its execution timeout (48 h) bounds the sum"
        ),
    )
    requeue_after_s: int = Field(
        default=120,
        ge=1,
        description=(
            "How long after its submission a job still marked unqueued (its API call died before the "
            "queue send) is sent to the queue by the requeue sweeper; keep it above the API function's "
            "timeout"
        ),
    )
    abandoned_after_s: int = Field(
        default=3600,
        ge=60,
        description=(
            "How long after its lease lapsed a RUNNING job that no worker took over is failed `ABANDONED` (with its"
            " webhook) by the requeue sweeper, taken for a job whose message is gone (the template's"
            " `AbandonedAfterSeconds`). Keep it above the longest a visible message waits in the queue: a job whose"
            " message still waits that long is failed all the same"
        ),
    )
    requeue_budget_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "How long one requeue sweep keeps taking jobs (its function times out at 60 s); what is "
            "left waits for the next minute's sweep"
        ),
    )

    result_cache: bool = Field(
        default=True,
        description=(
            "Answer a request that names its seed from an earlier identical job's images (no GPU work), and let"
            " an identical request join one still running; `false`: every job generates"
        ),
    )
    result_cache_scope: Literal["tenant", "global"] = Field(
        default="tenant",
        description=(
            "Whose jobs answer a request from the result cache: the tenant's own (`tenant`), or every tenant's"
            " (`global`; a hit then tells one tenant what another generated, its image URLs naming that tenant and"
            " job, and a job's `cache` leaves out `source_job` and `joined_job`). Set it alike on every function"
        ),
    )
    fleet_queue_urls: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "The jobs queue of each fleet with one of its own, by fleet name (a JSON map; set by the template): a"
            " job is sent to the queue of its model's fleet (the registry entry's `fleet`), else to `SDQ_QUEUE_URL`"
        ),
    )
    model_revisions: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Revision of each model's weights (a JSON map, model to revision), part of the result cache's key:"
            " change it when a model's weights or an image-changing speed lever change, and earlier images no"
            " longer answer"
        ),
    )
    gpu_instance_type: str = Field(
        default="g5.xlarge",
        description=(
            "The worker's instance type, whose on-demand hourly price (`shared/pricing.py`, as `sdq cost`) turns"
            " a job's GPU seconds into its `usage.estimated_cost_usd`"
        ),
    )

    allow_loopback_callbacks: bool = Field(
        default=False,
        description="Allow plain-http `callback_url`s to 127.0.0.1/localhost (`true` under `sdq up`)",
    )

    staging_prefix: str = Field(
        default="staging/",
        description=(
            "Bucket prefix of raw generated images; the template's IAM grants and lifecycle rules name "
            "it, so change both together"
        ),
    )
    outputs_prefix: str = Field(
        default="outputs/",
        description=(
            "Bucket prefix of final outputs; the template's IAM grants and lifecycle rules name it, so "
            "change both together"
        ),
    )
    uploads_prefix: str = Field(
        default="uploads/",
        description=(
            "Bucket prefix of input images uploaded through `POST /v1/uploads` (one folder per tenant); the "
            "template's IAM grants and lifecycle rule (1 day) name it, so change both together"
        ),
    )
    upload_expiry_s: int = Field(
        default=900, ge=1, description="How long an upload's presigned POST accepts the file, in seconds"
    )
    compile_artefacts_prefix: str = Field(
        default="compile-artefacts/",
        description=(
            "Bucket prefix where workers with `SDQ_COMPILE` share their compile cache folder and precompiled forwards"
            " (docs/worker.md#compile-artefacts-in-s3): fetched at start, what is new uploaded without replacing"
            " another worker's files; empty: off. The template's IAM grants name it, so change both together"
        ),
    )

    @field_validator("model_registry", mode="before")
    @classmethod
    def _read_registry(cls, value: Any) -> Any:
        return None if value is None or value == "" else parse_registry(value)

    @field_validator("lora_registry", mode="before")
    @classmethod
    def _read_lora_registry(cls, value: Any) -> Any:
        return None if value is None or value == "" else parse_lora_registry(value)

    @model_validator(mode="after")
    def _default_model_allowed(self) -> Settings:
        # A request that names no model runs the default: one that names it is accepted too (and GET /v1/models
        # lists only models a request may name).
        if self.default_model not in self.models:
            self.models = [*self.models, self.default_model]
        return self

    @model_validator(mode="after")
    def _models_registered(self) -> Settings:
        if self.model_registry is not None:
            missing = [m for m in {*self.models, self.default_model} if self.model_registry.get(m) is None]
            if missing:
                raise ValueError(f"models {sorted(missing)} are not in the model registry {self.model_registry.ids}")
        lim = self.limits
        for entry in self.registry.models:  # a request without a size takes its model's: it must be one allowed
            sides = (entry.default_width, entry.default_height)
            if not all(lim.min_side <= side <= lim.max_side and side % lim.side_multiple == 0 for side in sides) or (
                entry.default_width * entry.default_height > lim.max_pixels
            ):
                raise ValueError(
                    f"model {entry.id!r}: default size {entry.default_width}x{entry.default_height} is outside the"
                    f" request limits ({lim.min_side} to {lim.max_side} a side, at most {lim.max_pixels} pixels)"
                )
        return self

    @property
    def registry(self) -> ModelRegistry:
        """The model registry: the configured one, else the built-in tiny and shapes models."""
        return self.model_registry or BUILTIN_REGISTRY

    @property
    def queue_routes(self) -> dict[str, str]:
        """The jobs queue of each model whose fleet has a queue of its own, by model id (the others use
        ``queue_url``)."""
        urls = self.fleet_queue_urls
        return {entry.id: urls[entry.fleet] for entry in self.registry.models if entry.fleet in urls}

    @property
    def loras(self) -> LoraRegistry:
        """The LoRA registry: the configured one, else none at all."""
        return self.lora_registry or EMPTY_LORA_REGISTRY

    @field_validator("gpu_instance_type")
    @classmethod
    def _priced_instance(cls, value: str) -> str:
        gpu_price(value)  # ValueError naming the known types
        return value

    @field_validator("webhook_retry_schedule_s")
    @classmethod
    def _retry_schedule(cls, value: list[int]) -> list[int]:
        if min(value) < 1 or sum(value) > MAX_WEBHOOK_RETRY_SPAN_S:
            raise ValueError(f"each retry at least 1 s, all of them at most {MAX_WEBHOOK_RETRY_SPAN_S} s")
        return value

    @model_validator(mode="before")
    @classmethod
    def _group_flat_keywords(cls, data: Any) -> Any:
        # Settings(max_batch_images=2) names a grouped setting as its variable does; extra="ignore" would drop it.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for group, model in GROUPS.items():
            by_keyword = {variable.removeprefix(PREFIX).lower(): name for name, variable in model.variables().items()}
            flat = {by_keyword[key]: data.pop(key) for key in list(data) if key in by_keyword}
            if flat:
                if group in data:
                    raise ValueError(f"{sorted(flat)}: give them inside {group}= or flat, not both")
                data[group] = model(**flat)
        return data


# The groups read from flat variables (``limits`` is nested: SDQ_LIMITS__<NAME>).
GROUPS: dict[str, type[SettingsGroup]] = {"worker": WorkerSettings, "acceleration": AccelerationSettings}


def environment_variables() -> set[str]:
    """Every ``SDQ_*`` variable the settings read (request limits as ``SDQ_LIMITS__<NAME>``)."""
    nested = {"limits", *GROUPS}
    names = {PREFIX + name.upper() for name in Settings.model_fields if name not in nested}
    names |= {f"{PREFIX}LIMITS__{name.upper()}" for name in RequestLimits.model_fields}
    for model in GROUPS.values():
        names |= set(model.variables().values())
    return names


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, validated once on first use."""
    return Settings()
