"""The worker process entry point (``python -m handlers.worker``, the container's command; ``sdq worker``).

Loads its models once (those named, else its fleet's in the model registry, else ``SDQ_MODEL``'s), then runs the
loop until SIGTERM/SIGINT: the first signal is a warm stop, the second stops at once. A worker that stopped as faulty
(jobs failing one after another) exits with status 70. With compile on, the compile
artefacts other workers stored are fetched before the models load, and what this one compiles is uploaded
(``workflows/generation/compileartefacts.py``).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from functools import partial
from types import FrameType
from typing import Any

from aws_lambda_powertools import Logger

from shared.aws import AwsClients
from shared.media import MediaStore
from shared.observability import share_lock_with_logging
from shared.orchestration import Orchestrator
from shared.queue import WorkerQueue
from shared.queuestate import QueueState
from shared.settings import Settings, get_settings
from workflows.generation.acceleration.startup import before_worker_imports

if __name__ == "__main__":  # the container's command: decided before the imports below bring in diffusers
    before_worker_imports(get_settings())

from workflows.generation.compileartefacts import CompileArtefactStore, store_for
from workflows.generation.encoding import encode_processes_for
from workflows.generation.gpumetrics import GpuMetrics
from workflows.generation.models import GpuUnavailable, require_gpu
from workflows.generation.pipeline import ModelRunners, PipelineRunner
from workflows.generation.progressevents import progress_events_for
from workflows.generation.protection import TaskProtection
from workflows.generation.worker import EXIT_FAULTY, Generator, Worker, WorkerConfig, loaded_revisions
from workflows.jobmetrics import MeteredJobsRepository

logger = Logger(service="sdq-worker")
# The exit status of a worker that must run on a GPU and finds none (SDQ_REQUIRE_GPU).
EXIT_NO_GPU = 3


def build_worker(
    generator: Generator, config: WorkerConfig, batch_log_fields: Callable[[], dict[str, Any]] | None = None
) -> Worker:
    settings = get_settings()
    aws = AwsClients(settings)
    return Worker(
        queue=WorkerQueue(aws.sqs(), settings.queue_url),
        repo=MeteredJobsRepository(aws.dynamodb(), settings.table_name),
        media=MediaStore(aws.s3(), settings.bucket),
        orchestrator=Orchestrator(aws.stepfunctions(), settings.state_machine_arn),
        generator=generator,
        config=config,
        staging_prefix=settings.staging_prefix,
        batch_log_fields=batch_log_fields,
        worker_stats=QueueState(aws.dynamodb(), settings.table_name),
        progress_events=progress_events_for(aws, settings, worker_id=config.worker_id),
        # Set by the ECS agent in every task (not an sdq setting): the task's own scale-in protection endpoint.
        protection=TaskProtection(os.environ.get("ECS_AGENT_URI")),
        registry=settings.registry,  # its retired revisions fail the jobs pinned to them
    )


def worker_config() -> WorkerConfig:
    """The loop's configuration from ``settings.worker`` (the one place its values and defaults are written)."""
    settings = get_settings()
    worker = settings.worker
    return WorkerConfig(
        max_batch_images=worker.max_batch_images,
        max_consecutive_failures=worker.max_consecutive_failures,
        max_batch_wait_s=worker.max_batch_wait_ms / 1000,
        # A long poll must end before the client's read timeout, or every empty receive would fail as an outage.
        receive_wait_s=max(0, min(worker.receive_wait_s, int(settings.aws_read_timeout_s) - 5)),
        visibility_s=worker.visibility_timeout_s,
        heartbeat_s=worker.heartbeat_s,
        grace_s=worker.grace_s,
        stall_s=worker.stall_timeout_s,
        health_file=worker.health_file,
        progress_interval_s=worker.progress_interval_s,
        xray=worker.xray,
    )


def models_to_load(settings: Settings, models: Sequence[str] = (), fleet: str | None = None) -> list[str]:
    """The models a worker loads: ``models`` when given, else every registry entry of ``fleet`` (default
    ``SDQ_FLEET``), else ``SDQ_MODEL``'s. Exits with a clear message for a fleet the registry has no model in."""
    if models:
        return list(dict.fromkeys(models))
    fleet = fleet or settings.worker.fleet  # empty (the template's default fleet without a second one): unset
    if not fleet:
        return list(dict.fromkeys(settings.worker.model))
    if settings.model_registry is None:  # the built-in registry would load tiny in place of the fleet's models
        print(f"sdq worker: fleet {fleet!r} needs the model registry (SDQ_MODEL_REGISTRY)", file=sys.stderr)
        raise SystemExit(2)
    entries = settings.registry.fleet(fleet)
    if not entries:
        print(f"sdq worker: the model registry assigns no model to fleet {fleet!r}", file=sys.stderr)
        raise SystemExit(2)
    return [entry.id for entry in entries]


def fetch_compile_artefacts(settings: Settings, models: Sequence[str]) -> CompileArtefactStore | None:
    """The worker's compile artefact store with what other workers stored fetched into its folders (before the
    levers are applied, so they find their caches filled), or None when it shares none (compile off)."""
    store = store_for(settings, AwsClients(settings).s3(), models)
    if store is not None:
        store.fetch()  # never raises: a failure means compiling, as without the store
    return store


def load_generator(models: Sequence[str]) -> PipelineRunner | ModelRunners:
    """Load each model's pipeline once (several share the device, one runner each); exits with a clear message
    when a model cannot be found."""
    from workflows.generation.acceleration import options_from_settings
    from workflows.generation.models import ModelNotFoundError

    settings = get_settings()
    load = partial(
        PipelineRunner.load,
        cpu_max_batch_images=settings.worker.max_batch_images,
        precision=settings.acceleration.precision,
        acceleration=options_from_settings(settings.acceleration),
    )
    try:
        runners = [load(model) for model in models]
    except ModelNotFoundError as exc:
        logger.error("model not found", model=exc.name, reason=exc.reason)
        print(f"sdq worker: cannot load model {exc.name!r}: {exc.reason}", file=sys.stderr)
        raise SystemExit(2) from exc
    return runners[0] if len(runners) == 1 else ModelRunners(runners)


def main(
    models: Sequence[str] = (),
    *,
    fleet: str | None = None,
    batch_log_fields: Callable[[], dict[str, Any]] | None = None,
) -> int:
    """Run one worker until it is stopped: ``models`` (else ``fleet``'s, else the settings'; see
    :func:`models_to_load`); ``batch_log_fields`` adds fields to each batch's log line."""
    share_lock_with_logging()  # before any thread logs: log and metric lines are written whole, one at a time
    settings = get_settings()
    if settings.worker.require_gpu:
        try:
            require_gpu()
        except GpuUnavailable as exc:
            logger.error("worker cannot start", error=str(exc))
            return EXIT_NO_GPU
    to_load = models_to_load(settings, models, fleet)
    artefacts = fetch_compile_artefacts(settings, to_load)
    generator = load_generator(to_load)
    if artefacts is not None:
        artefacts.start_uploads()  # the warm-up's compile now, later buckets' as they compile
    config = worker_config()
    # On a GPU the limit also comes from free memory (the runner's estimate); on CPU the setting rules.
    config.max_batch_images = max(1, min(config.max_batch_images, generator.max_batch_images()))
    config.encode_processes = encode_processes_for(generator.device.type, settings.worker.encode_processes)
    logger.info(
        "batch limit",
        max_batch_images=config.max_batch_images,
        model=generator.model_name,
        revisions=loaded_revisions(generator),  # which jobs it takes during a rolling deployment
        device=str(generator.device),
        gpu=generator.device_name(),
        note=generator.note,
        encode_processes=config.encode_processes,
    )
    worker = build_worker(generator, config, batch_log_fields)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal received", signal=signal.Signals(signum).name)
        worker.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    gpu_metrics = GpuMetrics().start()  # GpuUtilization, GpuMemoryUsed; nothing on CPU
    try:
        worker.run()
    finally:
        gpu_metrics.stop()
        if artefacts is not None:
            artefacts.stop()  # what compiled since the last upload
    logger.info("worker stopped", batches=len(worker.batches), faulty=worker.faulty)
    # A faulty worker exits non-zero, like the watchdog's, so that its container is replaced.
    return EXIT_FAULTY if worker.faulty else 0


if __name__ == "__main__":  # the container's command: python -m handlers.worker
    sys.exit(main())
