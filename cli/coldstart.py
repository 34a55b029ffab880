"""The time from the first queued job to its image on AWS, step by step, for each way the template can start a
worker: from zero with a new instance, from zero with a stopped instance of the warm pool, and always on.

Each step names its source: the template (read from ``template.yaml``, the one owner of the alarm periods), a
measurement of ours (the pinned H100 startup report, :data:`STARTUP_REPORT`; the compile artefacts' size,
:data:`ARTEFACTS_REPORT`), or an assumption of :class:`cli.costmodel.Usage` that ``sdq cost --assume NAME=VALUE``
replaces with your own figure.

The paths assume ``WorkerCompile=true`` (the measured start is the precompiled one): a new instance fetches the
compile artefacts an earlier worker stored in the stack's bucket instead of compiling (the first instance of a kind
compiles, 41 to 60 s per bucket on an H100). The image is pulled whole: ECS lazy-loads images (SOCI) on Fargate
only, which has no GPUs (docs/deploy.md, "No lazy image loading").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.costmodel import REPO, Usage
from shared.settings import WorkerSettings
from workflows.generation.acceleration.options import DEFAULT_BUCKETS

TEMPLATE = REPO / "template.yaml"
# The warm start the figures rest on: process start to the first image on an H100 with the worker's speed levers
# and the precompiled artefacts on the instance's volume (benchmarks/results/2026-12-06-h100/README.md, call B).
STARTUP_REPORT = REPO / "benchmarks" / "results" / "2026-12-06-h100" / "startup-sd15-h100-warm-20261206-144239.json"
# The compile artefacts' size: the portable file of every compile artefact (torch.compiler.save_cache_artifacts) a
# worker bench wrote after compiling the SD 1.5 UNet at three batch sizes on an H100 (2026-11-25).
ARTEFACTS_REPORT = REPO / "benchmarks" / "results" / "2026-11-25-h100" / "worker-sd15-h100-20261125-095825.json"


@dataclass(frozen=True)
class StartStep:
    name: str
    seconds: float
    source: str


@dataclass(frozen=True)
class StartPath:
    """One way a queued job reaches a worker, and the steps it waits through."""

    name: str
    steps: tuple[StartStep, ...]
    standing_cost: str

    @property
    def seconds(self) -> float:
        return sum(step.seconds for step in self.steps)


@dataclass(frozen=True)
class TemplateTimes:
    """What the template (and the worker's defaults) decide about a start from zero."""

    scale_alarm_s: float  # WorkerScaleFromZeroAlarm: period x evaluation periods
    batch_wait_s: float  # the worker's max_batch_wait_ms (its settings' default; the template does not set it)


def template_times(template: dict[str, Any]) -> TemplateTimes:
    """The scale-from-zero alarm's window and the worker's batch wait, from the decoded template."""
    alarm = template["Resources"]["WorkerScaleFromZeroAlarm"]["Properties"]
    periods = [int(m["MetricStat"]["Period"]) for m in alarm["Metrics"] if "MetricStat" in m]
    batch_wait_ms = WorkerSettings.model_fields["max_batch_wait_ms"].default
    return TemplateTimes(
        scale_alarm_s=max(periods) * int(alarm["EvaluationPeriods"]),
        batch_wait_s=float(batch_wait_ms) / 1000.0,
    )


def load_template_times(path: Path = TEMPLATE) -> TemplateTimes:
    from localcloud.provision import load_sam_template

    return template_times(load_sam_template(path))


def measured_first_image_s(report: Path = STARTUP_REPORT) -> tuple[float, str]:
    data = json.loads(report.read_text())
    seconds = float(data["process_start_to_first_image_s"])
    device = data.get("device", {}).get("short", "GPU")
    return seconds, f"measured: {report.name} ({device}, {data['date'][:10]}): imports, load, first image"


def measured_artefacts_mb(report: Path = ARTEFACTS_REPORT) -> tuple[float, str]:
    """The compile artefacts a worker with the template's buckets stores, in MB, and where the figure comes from:
    the measured compile cache of a run's batch sizes, per size times the default buckets, twice (the precompiled
    forwards hold each shape's compiled graph as well: an assumption, not measured yet)."""
    data = json.loads(report.read_text())
    saved = int(data["acceleration"]["mega_cache_saved_bytes"])
    sizes = len(data["config"]["batch_sizes"])
    megabytes = 2 * saved / 2**20 / sizes * len(DEFAULT_BUCKETS)
    source = (
        f"measured: {report.name}: {saved / 2**20:.1f} MB of compile cache for {sizes} batch sizes, scaled to the"
        f" {len(DEFAULT_BUCKETS)} buckets and doubled for the precompiled forwards (assumed)"
    )
    return megabytes, source


def start_paths(
    usage: Usage,
    times: TemplateTimes,
    first_image: tuple[float, str],
    artefacts: tuple[float, str] | None = None,
) -> list[StartPath]:
    """The three paths, each a list of steps with their sources; ``artefacts`` is the compile artefacts' size in
    MB with its source (default: :func:`measured_artefacts_mb`)."""
    u = usage
    artefacts_mb, artefacts_source = artefacts or measured_artefacts_mb()
    image_mb = u.worker_image_gb * 1024.0
    model_mb = u.model_gb * 1024.0
    signal = StartStep(
        "the scale-from-zero alarm fires",
        times.scale_alarm_s,
        "template.yaml WorkerScaleFromZeroAlarm: period x evaluation periods (a 1-minute metric)",
    )
    capacity = StartStep(
        "ECS managed scaling asks the Auto Scaling group for an instance",
        u.ecs_scaling_s,
        "assumption ecs_scaling_s: CapacityProviderReservation is a 1-minute metric behind its own alarm",
    )
    registered = StartStep(
        "task placed and started",
        u.task_start_s,
        "assumption task_start_s: ECS places the pending task once the instance registers",
    )
    weights = StartStep(
        "weights from the stack's bucket to the instance's volume",
        model_mb / u.s3_download_mb_s,
        f"assumption: model_gb {u.model_gb:g} at s3_download_mb_s {u.s3_download_mb_s:g}",
    )
    compiled = StartStep(
        "compile artefacts from the stack's bucket, instead of compiling",
        artefacts_mb / u.s3_download_mb_s,
        f"{artefacts_source}; {artefacts_mb:.0f} MB at s3_download_mb_s {u.s3_download_mb_s:g}",
    )
    process = StartStep("worker process start to the first image", first_image[0], first_image[1])
    batch = StartStep(
        "the job's batch waits for company", times.batch_wait_s, "the worker's max_batch_wait_ms (default)"
    )
    cold = StartPath(
        "from zero, new instance",
        (
            signal,
            capacity,
            StartStep(
                "EC2 launches and boots the GPU AMI; the ECS agent registers",
                u.instance_launch_s,
                "assumption instance_launch_s",
            ),
            registered,
            StartStep(
                "worker image pulled and extracted",
                image_mb / u.image_pull_mb_s,
                f"assumption: worker_image_gb {u.worker_image_gb:g} at image_pull_mb_s {u.image_pull_mb_s:g}"
                " (whole: no lazy loading on ECS with EC2 instances)",
            ),
            weights,
            compiled,
            process,
            batch,
        ),
        "nothing while idle",
    )
    warm = StartPath(
        "from zero, warm pool (WorkerWarmPoolSize > 0)",
        (
            signal,
            capacity,
            StartStep(
                "a stopped warm-pool instance starts; the ECS agent registers",
                u.instance_restart_s,
                "assumption instance_restart_s",
            ),
            registered,
            StartStep("worker image", 0.0, "already on the volume (pulled when the instance joined the pool)"),
            StartStep(
                "weights",
                0.0 if u.warm_pool_reused else weights.seconds,
                "on the volume of an instance that ran before (ReuseOnScaleIn)"
                if u.warm_pool_reused
                else weights.source,
            ),
            StartStep(
                "compile artefacts",
                0.0 if u.warm_pool_reused else compiled.seconds,
                "on the volume of an instance that ran before" if u.warm_pool_reused else compiled.source,
            ),
            process,
            batch,
        ),
        "each stopped instance's root volume (EBS), no instance-hours",
    )
    always_on = StartPath(
        "always on (MinWorkers >= 1)",
        (
            StartStep("a polling worker receives the job", 0.0, "SQS long poll returns on arrival"),
            batch,
        ),
        "MinWorkers instances around the clock",
    )
    return [cold, warm, always_on]
