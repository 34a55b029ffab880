"""Monthly cost model of the AWS stack in template.yaml, beside an always-on GPU server of the same type.

Everything is a plain multiplication of a usage quantity by a unit price, so every line can be checked by hand:

- GPU worker hours come from measured throughput: one pinned H100 report (:data:`BENCHMARK_REPORT`) gives the
  H100's images/s at the worker's batch size; other GPUs are scaled by :data:`GPUS`' relative throughput (an
  assumption, stated per GPU). Scale-from-zero episodes add boot/download and idle-before-scale-in time.
- Lambda (requests and GB-seconds for the API, postprocess and notify functions), API Gateway requests,
  Step Functions state transitions (the states a successful job visits, :data:`HAPPY_PATH_STATES`), SQS requests,
  DynamoDB on-demand read/write units and storage, S3 storage and requests, data transfer out, CloudWatch and
  X-Ray, and the fixed monthly costs (dashboard, alarms, custom metrics, the worker image).

Prices (:data:`shared.pricing.DEFAULT_PRICES`, the table a job's ``usage`` estimate uses too) are us-east-1
on-demand list prices as known when this was written, without free tiers or savings plans (Spot hours at an
assumed share of on-demand); every one can be overridden (``sdq cost --price KEY=VALUE``), as can every usage
assumption (``--assume NAME=VALUE``, the fields of :class:`Usage`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from shared.pricing import DEFAULT_PRICES, spot_hour_key

HOURS_PER_MONTH = 730.0
DAYS_PER_MONTH = 30.0
KB_PER_GB = 1024.0 * 1024.0
REPO = Path(__file__).resolve().parents[1]
BENCHMARK_GLOB = "worker-sd15-h100-*.json"
# The H100 SD 1.5 worker report the cost figures rest on: pinned, so a new benchmark run changes no bill until
# this line names it.
BENCHMARK_REPORT = REPO / "benchmarks" / "results" / "2026-11-25-h100" / "worker-sd15-h100-20261125-100848.json"

# The states a successful job with a callback visits in statemachine.asl.json (one transition each);
# without a callback it skips Notify and WebhookRetryDue (webhook retries are not counted).
HAPPY_PATH_STATES = (
    "Route",
    "Postprocess",
    "Postprocessed",
    "MarkSucceeded",
    "CountSucceeded",
    "HasCallback",
    "Notify",
    "WebhookRetryDue",
    "Done",
)
CALLBACK_ONLY_STATES = ("Notify", "WebhookRetryDue")
# A result-cache hit with a callback runs only the notice path (its job.succeeded webhook); without one, nothing.
NOTICE_PATH_STATES = ("Route", "Notify", "WebhookRetryDue", "Done")


@dataclass(frozen=True)
class GpuType:
    """One EC2 GPU instance type: its GPUs and their SD 1.5 throughput relative to one H100 (assumption)."""

    instance: str
    gpu: str
    gpus: int
    relative_to_h100: float
    note: str


# Relative throughput of one GPU vs one H100 SXM for batched SD 1.5 fp16 at 512x512 (the measured benchmark).
# These are estimates from public benchmarks and the GPUs' fp16 tensor throughput and memory bandwidth, not
# measurements of ours: run `sdq bench worker --arch sd15` on the instance and pass --throughput to replace them.
GPUS: dict[str, GpuType] = {
    g.instance: g
    for g in (
        GpuType("g4dn.xlarge", "T4", 1, 0.08, "Turing, 65 TFLOPS fp16, 320 GB/s"),
        GpuType("g5.xlarge", "A10G", 1, 0.22, "Ampere, 125 TFLOPS fp16, 600 GB/s"),
        GpuType("g6.xlarge", "L4", 1, 0.17, "Ada, 121 TFLOPS fp16, 300 GB/s"),
        GpuType("g6e.xlarge", "L40S", 1, 0.50, "Ada, 362 TFLOPS fp16, 864 GB/s"),
        GpuType("p5.48xlarge", "H100", 8, 1.00, "the benchmarked GPU; 8 per instance"),
    )
}

LAMBDA_REQUESTS = "lambda.requests.million"
SQS_REQUESTS = "sqs.standard.requests.million"
DDB_WRITES = "dynamodb.ondemand.write_units.million"
EBS = "ebs.gp3.gb_month"


@dataclass(frozen=True)
class Usage:
    """What one job costs in requests, bytes and seconds, and how the fleet behaves. All overridable."""

    images_per_job: float = 1.0
    # Share of jobs answered by the result cache (a hit, or a join of an identical running job): no GPU time,
    # postprocess, queue messages or stored images of their own; a notice execution when they have a callback.
    cache_hit_rate: float = 0.0
    dynamodb_writes_per_hit: float = 2.0  # the job, stored SUCCEEDED; its webhook record
    dynamodb_read_units_per_hit: float = 2.0  # the cache entry and its source job (strong reads)
    batch_size: int = 8  # images per pipeline call when busy (the template's MaxBatchImages)
    worker_efficiency: float = 0.9  # share of benchmark throughput the worker keeps (claims, uploads, progress)
    scale_ups_per_month: float = 30.0  # times the fleet starts from zero (e.g. once a day)
    overhead_minutes_per_scale_up: float = 25.0  # boot + image pull + model load, and idle time before scale-in
    polls_per_job: float = 3.0  # GET /v1/jobs/{id} per job (clients with webhooks poll less)
    callback_share: float = 1.0  # share of jobs with a callback_url (webhook + Notify state)
    api_memory_mb: int = 1024  # these three match template.yaml (checked by tests)
    postprocess_memory_mb: int = 1024
    notify_memory_mb: int = 512
    api_ms: float = 60.0  # per API request
    postprocess_ms_base: float = 150.0  # per job
    postprocess_ms_per_image: float = 300.0  # encode + thumbnail + uploads
    count_ms: float = 20.0  # CountSucceeded: the postprocess function emitting JobsFinished and JobLatency
    notify_ms: float = 250.0  # one webhook POST
    sqs_requests_per_job: float = 4.0  # send, receive, change visibility (heartbeat), delete
    sqs_idle_polls_per_worker_hour: float = 180.0  # 20 s long polls while a worker waits
    dynamodb_item_kb: float = 2.0  # a job item (request and outputs as JSON)
    # create, mark enqueued, claim, ~2 progress, POSTPROCESSING, SUCCEEDED, webhook
    dynamodb_writes_per_job: float = 8.0
    # A create with an Idempotency-Key is a transaction (charged twice), one without a plain put: the upper bound.
    dynamodb_transaction_writes_per_job: float = 1.0
    dynamodb_gsi_write_factor: float = 2.0  # extra units written to the indexes per base-table unit
    dynamodb_read_units_per_request: float = 1.5  # API key lookup (eventual) + job read (strong)
    dynamodb_read_units_per_job: float = 4.0  # postprocess, notify (job + secret), lease checks
    image_kb: float = 400.0  # one 512x512 PNG output
    thumbnail_kb: float = 12.0
    downloads_per_image: float = 1.0
    retention_days: float = 7.0  # the template's RetentionDays (outputs/ lifecycle, job TTL)
    log_kb_per_job: float = 10.0  # all functions' and the worker's log lines for one job
    worker_disk_gib: float = 100.0  # the template's WorkerDiskGiB
    worker_image_gb: float = 8.0  # the worker image in ECR
    # sdq namespace: worker EMF metrics, JobsSubmitted, 3 webhook metric filters, JobsFinished and JobLatency by
    # status (6), GpuUtilization and GpuMemoryUsed, AuditWriteFailed
    custom_metrics: float = 17.0
    container_insights_metrics: float = 24.0  # cluster and service metrics (RunningTaskCount, ...)
    alarm_metrics: float = 30.0  # metrics across the template's alarms (metric-math alarms count each metric)
    dashboards: float = 1.0
    # Spot and the warm pool (template: SpotWorkerWeight, WorkerWarmPoolSize).
    spot_share: float = 0.0  # share of GPU instance-hours on Spot (SpotWorkerWeight / the weights' sum)
    warm_pool_instances: float = 0.0  # stopped instances kept: their root volumes only
    # A start from zero (cli/coldstart.py): assumptions, each replaceable by your own measurement.
    ecs_scaling_s: float = 60.0  # ECS managed scaling's reaction to a pending task
    instance_launch_s: float = 120.0  # EC2 launch, GPU AMI boot, ECS agent registration
    instance_restart_s: float = 45.0  # a stopped warm-pool instance starting, agent registration
    task_start_s: float = 10.0  # ECS placing and starting the task on a registered instance
    image_pull_mb_s: float = 60.0  # pulling and extracting the worker image from ECR
    model_gb: float = 2.1  # SD 1.5 fp16 weights (UNet 1.7, text encoder 0.25, VAE 0.17 GB)
    s3_download_mb_s: float = 200.0  # the stack's bucket to the instance
    warm_pool_reused: bool = True  # the pool's instances ran before (weights and compile caches on the volume)


@dataclass(frozen=True)
class Throughput:
    """Images per second of one GPU at the worker's batch size, and where the number comes from."""

    images_per_s: float
    source: str


@dataclass(frozen=True)
class Line:
    """One cost line: ``quantity`` of ``unit`` at ``unit_price`` each."""

    group: str
    item: str
    quantity: float
    unit: str
    unit_price: float
    price_key: str

    @property
    def cost(self) -> float:
        return self.quantity * self.unit_price


@dataclass(frozen=True)
class Estimate:
    images_per_month: float
    gpu: GpuType
    throughput: Throughput
    usage: Usage
    lines: list[Line]
    always_on: list[Line]
    instance_hours: float
    servers_needed: int
    server_capacity_images: float
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(line.cost for line in self.lines)

    @property
    def always_on_total(self) -> float:
        return sum(line.cost for line in self.always_on)

    def by_group(self) -> dict[str, float]:
        groups: dict[str, float] = {}
        for line in self.lines:
            groups[line.group] = groups.get(line.group, 0.0) + line.cost
        return groups


class CostError(ValueError):
    """Bad input to the cost model (unknown GPU, price key or assumption, missing benchmark)."""


# -- inputs ---------------------------------------------------------------------------------------------------


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` -> dict; raises CostError on an item without ``=``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CostError(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def merge_prices(overrides: Mapping[str, Any] | None = None) -> dict[str, float]:
    """The default prices with ``overrides`` applied; unknown keys are an error (a typo must not pass silently)."""
    prices = dict(DEFAULT_PRICES)
    for key, value in (overrides or {}).items():
        if key not in prices:
            raise CostError(f"unknown price {key!r}; known: {', '.join(sorted(prices))}")
        prices[key] = _number(key, value)
    return prices


def merge_usage(overrides: Mapping[str, Any] | None = None, base: Usage | None = None) -> Usage:
    """``base`` (default :class:`Usage`) with fields replaced by name; values are converted to the field's type."""
    usage = base or Usage()
    known = {f.name: f for f in fields(Usage)}
    changes: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if key not in known:
            raise CostError(f"unknown assumption {key!r}; known: {', '.join(sorted(known))}")
        number = _number(key, value)
        changes[key] = int(number) if isinstance(getattr(usage, key), int) else number
    return replace(usage, **changes)


def _number(key: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise CostError(f"{key}: {value!r} is not a number") from exc
    if not math.isfinite(number) or number < 0:
        raise CostError(f"{key}: {value!r} must be a finite number >= 0")
    return number


def gpu_type(instance: str) -> GpuType:
    try:
        return GPUS[instance]
    except KeyError:
        raise CostError(f"unknown GPU instance {instance!r}; known: {', '.join(GPUS)}") from None


def newest_benchmark(directory: Path) -> Path:
    """The newest H100 SD 1.5 worker benchmark (file names end in a sortable timestamp)."""
    found = sorted(directory.glob(BENCHMARK_GLOB))
    if not found:
        raise CostError(f"no {BENCHMARK_GLOB} under {directory}: run `sdq bench worker --arch sd15` on an H100")
    return found[-1]


def benchmark_images_per_s(report: Mapping[str, Any], batch_size: int) -> tuple[float, int]:
    """Images/s at the largest measured batch size not above ``batch_size`` (else the smallest measured).

    The worker as the template deploys it: a run measured with speed levers (``torch.compile``, which the
    template leaves off) reports the default eager worker beside them (``eager_results``), and that is used.
    """
    results = sorted(report.get("eager_results") or report["results"], key=lambda r: int(r["batch_size"]))
    if not results:
        raise CostError("benchmark has no results")
    fitting = [r for r in results if int(r["batch_size"]) <= batch_size]
    chosen = fitting[-1] if fitting else results[0]
    return float(chosen["images_per_s"]), int(chosen["batch_size"])


def gpu_throughput(gpu: GpuType, batch_size: int, benchmarks: Path | None = None) -> Throughput:
    """One GPU's images/s: measured on the H100, scaled by the GPU's relative throughput.

    ``benchmarks``: a report file, or a folder whose newest ``worker-sd15-h100-*.json`` is used; by default the
    pinned :data:`BENCHMARK_REPORT`.
    """
    if benchmarks is None:
        path = BENCHMARK_REPORT
    elif benchmarks.is_file():
        path = benchmarks
    else:
        path = newest_benchmark(benchmarks)
    report = json.loads(path.read_text())
    h100, measured_batch = benchmark_images_per_s(report, batch_size)
    cfg = report.get("config", {})
    shape = f"{cfg.get('width')}x{cfg.get('height')}, {cfg.get('steps')} steps"
    source = f"{path.name}: H100 {h100:.2f} images/s at batch {measured_batch} ({shape})"
    if gpu.relative_to_h100 != 1.0:
        source += f" x {gpu.relative_to_h100} assumed for {gpu.gpu}"
    return Throughput(h100 * gpu.relative_to_h100, source)


# -- the model ------------------------------------------------------------------------------------------------


def estimate(
    images_per_month: float,
    gpu: GpuType,
    throughput: Throughput,
    usage: Usage | None = None,
    prices: Mapping[str, float] | None = None,
    warm_start_saving_s: float = 0.0,
) -> Estimate:
    """The monthly bill of the sdq stack for ``images_per_month``, and of always-on servers of the same type.

    ``warm_start_saving_s``: instance time a start from the warm pool saves against a new instance (boot and image
    pull, :func:`cli.coldstart.start_paths`); counted only when the usage keeps a warm pool.
    """
    u = usage or Usage()
    p = dict(prices or DEFAULT_PRICES)
    if images_per_month < 0:
        raise CostError("images per month must be >= 0")
    if throughput.images_per_s <= 0 or u.worker_efficiency <= 0 or u.images_per_job <= 0:
        raise CostError("throughput, worker_efficiency and images_per_job must be > 0")
    if u.cache_hit_rate > 1:
        raise CostError("cache_hit_rate is a share of jobs: at most 1")
    images = float(images_per_month)
    jobs = images / u.images_per_job
    hits = jobs * u.cache_hit_rate  # answered from earlier jobs' images
    generated_jobs = jobs - hits
    generated = generated_jobs * u.images_per_job  # images the GPUs make and the bucket stores
    hourly_key = f"ec2.{gpu.instance}.hour"

    # GPU fleet: busy hours at the measured rate, plus one instance's overhead per start from zero.
    instance_rate = throughput.images_per_s * u.worker_efficiency * gpu.gpus  # images/s per instance
    busy_hours = generated / instance_rate / 3600.0
    overhead_minutes = u.overhead_minutes_per_scale_up
    if u.warm_pool_instances > 0:
        overhead_minutes = max(0.0, overhead_minutes - warm_start_saving_s / 60.0)
    overhead_hours = u.scale_ups_per_month * overhead_minutes / 60.0
    instance_hours = busy_hours + overhead_hours
    if not 0.0 <= u.spot_share <= 1.0:
        raise CostError("spot_share is a share of instance-hours: between 0 and 1")
    spot_hours = instance_hours * u.spot_share
    worker_hours = instance_hours * gpu.gpus

    api_requests = jobs * (1.0 + u.polls_per_job)
    notify_calls = jobs * u.callback_share
    gb_seconds = (
        api_requests * u.api_ms / 1000.0 * u.api_memory_mb / 1024.0
        + generated_jobs
        * (u.postprocess_ms_base + u.postprocess_ms_per_image * u.images_per_job)
        / 1000.0
        * u.postprocess_memory_mb
        / 1024.0
        + notify_calls * u.notify_ms / 1000.0 * u.notify_memory_mb / 1024.0
        # CountSucceeded: the postprocess function again, to emit the finished job's metrics (a few ms)
        + generated_jobs * u.count_ms / 1000.0 * u.postprocess_memory_mb / 1024.0
    )
    invocations = api_requests + 2 * generated_jobs + notify_calls
    callback_states = len(CALLBACK_ONLY_STATES)
    transitions = generated_jobs * (len(HAPPY_PATH_STATES) - callback_states + u.callback_share * callback_states)
    transitions += hits * u.callback_share * len(NOTICE_PATH_STATES)
    sqs_requests = generated_jobs * u.sqs_requests_per_job + worker_hours * u.sqs_idle_polls_per_worker_hour
    write_units = (
        (
            generated_jobs * (u.dynamodb_writes_per_job + u.dynamodb_transaction_writes_per_job)
            + hits * u.dynamodb_writes_per_hit
        )
        * math.ceil(u.dynamodb_item_kb)
        * (1.0 + u.dynamodb_gsi_write_factor)
    )
    read_units = (
        api_requests * u.dynamodb_read_units_per_request
        + generated_jobs * u.dynamodb_read_units_per_job
        + hits * u.dynamodb_read_units_per_hit
    )
    retained = u.retention_days / DAYS_PER_MONTH  # share of a month's output kept at any time
    table_gb = jobs * retained * u.dynamodb_item_kb * (1.0 + u.dynamodb_gsi_write_factor) / KB_PER_GB
    s3_gb = generated * retained * (u.image_kb + u.thumbnail_kb) / KB_PER_GB  # a hit refers to its source's objects
    s3_puts = generated * 3.0  # staging PNG, output, thumbnail
    s3_gets = generated + images * u.downloads_per_image  # postprocess reads staging; clients download
    egress_gb = images * u.downloads_per_image * u.image_kb / KB_PER_GB
    traces = api_requests + generated_jobs + hits * u.callback_share  # per API request and per execution
    disk_gb_months = u.worker_disk_gib * instance_hours / HOURS_PER_MONTH

    def line(group: str, item: str, quantity: float, unit: str, key: str) -> Line:
        return Line(group, item, quantity, unit, p[key], key)

    lines = [
        line("GPU workers", f"{gpu.instance} instance-hours", instance_hours - spot_hours, "hour", hourly_key),
        line("GPU workers", "EBS gp3 root volumes", disk_gb_months, "GB-month", "ebs.gp3.gb_month"),
        line("GPU workers", "ECR worker image", u.worker_image_gb, "GB-month", "ecr.storage.gb_month"),
        line("API", "API Gateway REST requests", api_requests / 1e6, "million", "apigateway.rest.requests.million"),
        line("Lambda", "invocations (api, postprocess, notify)", invocations / 1e6, "million", LAMBDA_REQUESTS),
        line("Lambda", "compute", gb_seconds, "GB-second", "lambda.x86.gb_second"),
        line(
            "Step Functions",
            "standard state transitions",
            transitions / 1e3,
            "thousand",
            "stepfunctions.standard.transitions.thousand",
        ),
        line("SQS", "requests (jobs + idle long polls)", sqs_requests / 1e6, "million", SQS_REQUESTS),
        line("DynamoDB", "write units (incl. indexes)", write_units / 1e6, "million", DDB_WRITES),
        line("DynamoDB", "read units", read_units / 1e6, "million", "dynamodb.ondemand.read_units.million"),
        line("DynamoDB", "storage", table_gb, "GB-month", "dynamodb.storage.gb_month"),
        line("DynamoDB", "point-in-time recovery", table_gb, "GB-month", "dynamodb.pitr.gb_month"),
        line("S3", "storage (outputs, retention window)", s3_gb, "GB-month", "s3.standard.gb_month"),
        line("S3", "PUT requests", s3_puts / 1e3, "thousand", "s3.put.thousand"),
        line("S3", "GET requests", s3_gets / 1e3, "thousand", "s3.get.thousand"),
        line("Data transfer", "out to the internet (downloads)", egress_gb, "GB", "transfer.out.internet.gb"),
        line(
            "Observability",
            "log ingestion",
            jobs * u.log_kb_per_job / KB_PER_GB,
            "GB",
            "cloudwatch.logs.ingest.gb",
        ),
        line(
            "Observability",
            "custom + Container Insights metrics",
            u.custom_metrics + u.container_insights_metrics,
            "metric-month",
            "cloudwatch.metric.month",
        ),
        line("Observability", "alarms", u.alarm_metrics, "alarm metric-month", "cloudwatch.alarm_metric.month"),
        line("Observability", "dashboard", u.dashboards, "dashboard-month", "cloudwatch.dashboard.month"),
        line("Observability", "X-Ray traces", traces / 1e6, "million", "xray.traces.million"),
    ]

    if spot_hours:
        spot = line(
            "GPU workers", f"{gpu.instance} Spot instance-hours", spot_hours, "hour", spot_hour_key(gpu.instance)
        )
        lines.insert(1, spot)
    if u.warm_pool_instances:
        pool_gb = u.warm_pool_instances * u.worker_disk_gib
        lines.insert(2, line("GPU workers", "warm pool: stopped instances' volumes", pool_gb, "GB-month", EBS))

    server_capacity = instance_rate * 3600.0 * HOURS_PER_MONTH
    servers = max(1, math.ceil(generated / server_capacity)) if server_capacity > 0 else 1
    always_on = [
        line("Always-on", f"{servers} x {gpu.instance}, 730 h each", servers * HOURS_PER_MONTH, "hour", hourly_key),
        line("Always-on", "EBS gp3 root volumes", servers * u.worker_disk_gib, "GB-month", "ebs.gp3.gb_month"),
        line("Always-on", "out to the internet (downloads)", egress_gb, "GB", "transfer.out.internet.gb"),
    ]
    notes = [
        f"GPU: {gpu.gpus} x {gpu.gpu} per {gpu.instance}; {throughput.source}",
        f"worker efficiency {u.worker_efficiency:g}: {instance_rate:.3f} images/s per instance, "
        f"{busy_hours:.1f} busy + {overhead_hours:.1f} start/idle instance-hours",
    ]
    if spot_hours:
        notes.append(
            f"Spot: {u.spot_share:.0%} of instance-hours at {p[spot_hour_key(gpu.instance)]:g}/h (an assumed price); "
            "an interruption costs at most the warm stop's grace and a restart elsewhere"
        )
    if hits:
        notes.append(
            f"result cache: {u.cache_hit_rate:.0%} of jobs answered from earlier images ({generated:,.0f} generated)"
        )
    return Estimate(
        images_per_month=images,
        gpu=gpu,
        throughput=throughput,
        usage=u,
        lines=lines,
        always_on=always_on,
        instance_hours=instance_hours,
        servers_needed=servers,
        server_capacity_images=server_capacity,
        notes=notes,
    )


def break_even_images(
    gpu: GpuType, throughput: Throughput, usage: Usage | None = None, prices: Mapping[str, float] | None = None
) -> float | None:
    """Images/month above which one always-on server costs less than the stack; None when it never does within
    that server's capacity.

    Both bills are linear in images (``fixed + marginal * images``; the server's only marginal cost is data
    transfer), so the crossing is solved directly from two evaluations of each.
    """
    probe = 1_000_000.0
    zero = estimate(0, gpu, throughput, usage, prices)
    at_probe = estimate(probe, gpu, throughput, usage, prices)
    stack_marginal = (at_probe.total - zero.total) / probe
    server_fixed = zero.always_on_total  # one server, nothing downloaded
    server_marginal = sum(line.cost for line in at_probe.always_on if line.price_key.startswith("transfer.")) / probe
    if stack_marginal <= server_marginal:
        return None
    crossing = max(0.0, (server_fixed - zero.total) / (stack_marginal - server_marginal))
    return crossing if crossing <= zero.server_capacity_images else None
