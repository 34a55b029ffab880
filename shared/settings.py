"""Service settings: one pydantic model, read once from the environment (prefix ``SDQ_``).

Every bound the API enforces lives here so operators can change it without touching code.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RequestLimits(BaseModel):
    """Bounds of a generation request (``SDQ_LIMITS__*`` overrides each one)."""

    prompt_max_chars: int = 2000
    negative_prompt_max_chars: int = 2000
    min_side: int = 256
    max_side: int = 1024
    max_pixels: int = 1024 * 1024
    side_multiple: int = 8
    max_steps: int = 100
    default_steps: int = 30
    max_guidance: float = 20.0
    default_guidance: float = 7.5
    max_images: int = 4
    max_metadata_entries: int = 16
    max_metadata_key_chars: int = 64
    max_metadata_value_chars: int = 512
    max_callback_url_chars: int = 2048


class Settings(BaseSettings):
    """Everything the API, the task Lambdas and the worker need to know about their environment."""

    model_config = SettingsConfigDict(env_prefix="SDQ_", env_nested_delimiter="__", extra="ignore")

    profile: Literal["aws", "local"] = "aws"
    region: str | None = Field(default=None, description="AWS region; falls back to AWS_REGION/AWS_DEFAULT_REGION")
    endpoint_url: str | None = Field(default=None, description="Override for every AWS client (local cloud)")

    table_name: str = "sdq-jobs"
    queue_url: str = ""
    dlq_url: str = ""
    bucket: str = "sdq-media"
    state_machine_arn: str = ""

    models: list[str] = Field(default_factory=lambda: ["tiny"], description="Allowlist of model names")
    default_model: str = "tiny"
    limits: RequestLimits = Field(default_factory=RequestLimits)

    max_unfinished_jobs_per_tenant: int = 100
    rate_limit_per_window: int = Field(default=120, ge=1, description="Job submissions per tenant per window")
    rate_limit_window_s: int = Field(default=60, ge=1, description="Length of the rate-limit window")
    unfinished_cap_retry_after_s: int = 5
    max_body_bytes: int = 256 * 1024
    presign_expiry_s: int = 3600
    job_retention_days: int = 7
    page_size_default: int = 20
    page_size_max: int = 100
    enqueue_attempts: int = 3
    enqueue_budget_s: float = Field(
        default=6.0,
        gt=0,
        description="Longest a submission keeps retrying the queue before it fails the job (ENQUEUE_FAILED)",
    )
    aws_connect_timeout_s: float = Field(default=5.0, gt=0, description="Every AWS client's connect timeout")
    aws_read_timeout_s: float = Field(
        default=30.0, gt=0, description="Every AWS client's read timeout (above the worker's 20 s long poll)"
    )
    aws_max_attempts: int = Field(default=5, ge=1, description="Attempts per AWS call (botocore standard retries)")
    max_generation_attempts: int = Field(
        default=3, ge=1, description="Claims (GPU runs) a job may use before a dead-lettered message fails it"
    )

    webhook_secret_overlap_s: int = Field(
        default=24 * 3600,
        ge=0,
        description="After a rotation, webhooks are signed with the old secret too for this long",
    )
    requeue_after_s: int = Field(
        default=120,
        ge=1,
        description="A job still marked unqueued this long after its submission is sent to the queue again",
    )
    requeue_budget_s: float = Field(
        default=30.0, gt=0, description="How long one requeue sweep keeps taking jobs (its function times out at 60 s)"
    )

    allow_loopback_callbacks: bool = Field(
        default=False,
        description="Let callback_url use plain http to 127.0.0.1/localhost (local profile only)",
    )

    # -- GPU worker --
    model: str = Field(default="tiny", description="Worker model: 'tiny', a hub id or a local diffusers folder")
    max_batch_images: int = Field(default=8, ge=1, description="Images per pipeline call (upper bound)")
    max_batch_wait_ms: int = Field(default=200, ge=0, description="Wait for compatible jobs after the first one")
    receive_wait_s: int = Field(default=20, ge=0, le=20, description="SQS long-poll wait")
    visibility_timeout_s: int = Field(default=300, ge=5, description="Message invisibility and job lease length")
    heartbeat_s: float = Field(default=60.0, gt=0, description="How often held messages and leases are extended")
    grace_s: float = Field(default=120.0, ge=0, description="Warm-stop budget after SIGTERM")
    encode_processes: int | None = Field(
        default=None,
        ge=0,
        description="PNG-encoding helper processes (0: the worker's finisher threads; default: 2 on CUDA, 0 on CPU)",
    )
    progress_interval_s: float = Field(default=1.0, gt=0, description="Minimum time between progress writes")

    # -- speed levers (README "Performance levers"; workflows/generation/acceleration.py) --
    precision: Literal["fp16", "bf16", "fp32"] | None = Field(default=None, description="Default: fp16 on CUDA")
    compile: bool = Field(default=False, description="torch.compile the UNet and VAE decoder (CUDA only)")
    compile_autotune: bool = Field(default=False, description="max-autotune search (minutes more per shape)")
    cuda_graphs: bool | None = Field(default=None, description="CUDA graphs (default: with compile)")
    channels_last: bool | None = Field(default=None, description="channels_last (default: with compile)")
    fuse_qkv: bool | None = Field(default=None, description="Fused QKV projections (default: with compile)")
    compile_vae: bool = Field(default=True, description="Also compile the VAE decoder")
    batch_buckets: str | None = Field(default=None, description="Padded batch sizes (default: 1,2,4,8,16)")
    compile_resolutions: str | None = Field(default=None, description="Compiled WxH list (default: native)")
    compile_cache_dir: str | None = Field(default=None, description="Persistent inductor cache folder")
    compile_mega_cache: str | None = Field(default=None, description="Compile-artifacts file to load/write")
    compile_warmup: bool = Field(default=True, description="Compile every bucket before the first job")
    prompt_cache_size: int = Field(default=256, ge=0, description="Prompt-embedding LRU entries (0: off)")
    vae_bf16: bool = Field(
        default=False, description="Quality-trading, SDXL-type: decode the fp32-upcast VAE in bf16 (faster)"
    )
    vae_one_call: bool = Field(
        default=True, description="Decode a call's images in one VAE call when free memory allows (CUDA, eager)"
    )
    feature_reuse: int = Field(
        default=0, ge=0, description="DeepCache-style: full UNet every N-th step (0: off; changes the images)"
    )
    fp8: bool = Field(default=False, description="FP8 products in the UNet's attention blocks (changes the images)")
    aot_dir: str | None = Field(
        default=None, description="With compile: AOTInductor packages folder (built once, loaded without a trace)"
    )

    model_cache: str | None = Field(
        default=None, description="Where the built-in tiny model is saved (default: ~/.cache/sdq/models)"
    )
    xray: bool = Field(default=False, description="Worker X-Ray segments (the ECS task runs the daemon beside it)")

    staging_prefix: str = "staging/"
    outputs_prefix: str = "outputs/"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, validated once on first use."""
    return Settings()
