"""LoRA jobs through the local stack: refused at submit with the field named, batched only with jobs of the same
LoRA set, generated with the adapter, and recorded in the images' metadata.

The LoRA is the project's own for the tiny model (tests/loraasset.py), registered with its checksum."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from sdq_client import Client

from cli.client import SdqClient
from cli.main import main
from shared.aws import AwsClients
from shared.jobs import JobsRepository
from shared.loraregistry import LoraEntry, LoraRegistry
from shared.media import MediaStore
from shared.modelregistry import weight_checksums
from shared.orchestration import Orchestrator
from shared.settings import Settings
from tests.integration.conftest import RecordingQueue, RunningService, start_service, stop_service, wait_until
from tests.loraasset import build_tiny_lora, lora_entry
from workflows.generation.loras import LoraAdapters, lora_folder, verify_lora
from workflows.generation.models import load_model
from workflows.generation.pipeline import BatchShape, ImageJob, PipelineRunner
from workflows.generation.worker import Worker, WorkerConfig

SMALL: dict[str, Any] = {"width": 256, "height": 256, "num_inference_steps": 2, "scheduler": "euler"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> LoraRegistry:
    folder: Path = build_tiny_lora(tmp_path_factory.mktemp("loras") / "ink", seed=1)
    return LoraRegistry.model_validate(
        {"loras": [lora_entry(folder, "ink"), lora_entry(folder, "for-variant", base_models=["variant"])]}
    )


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, registry: LoraRegistry) -> Iterator[RunningService]:
    """`sdq up` with the LoRA registry (control plane only: the test runs its own worker)."""
    running = start_service(
        tmp_path_factory.mktemp("sdq-loras"),
        {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "1000", "SDQ_LORA_REGISTRY": registry.model_dump_json()},
    )
    yield running
    stop_service(running)


class RecordingRunner:
    """The tiny model with the LoRA registry, recording each pipeline call's LoRA set and jobs."""

    def __init__(self, runner: PipelineRunner) -> None:
        self.runner = runner
        self.calls: list[tuple[tuple[tuple[str, float], ...], list[str]]] = []

    @property
    def model_name(self) -> str:
        return self.runner.model_name

    @property
    def loras(self) -> LoraAdapters:
        return self.runner.loras

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
    ) -> dict[str, list[Image.Image]]:
        self.calls.append((shape.loras, [job.key for job in jobs]))
        return self.runner.generate(jobs, shape, on_step)


@pytest.fixture
def worker(
    service: RunningService, registry: LoraRegistry, monkeypatch: pytest.MonkeyPatch, received: list[str]
) -> Iterator[Callable[..., RecordingRunner]]:
    """Start an in-process worker loop on the tiny model with the LoRA registry; stopped warm at the end."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    env = service.env
    settings = Settings(
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region=env["AWS_DEFAULT_REGION"],
        table_name=env["SDQ_TABLE_NAME"],
        queue_url=env["SDQ_QUEUE_URL"],
        bucket=env["SDQ_BUCKET"],
        state_machine_arn=env["SDQ_STATE_MACHINE_ARN"],
    )
    started: list[tuple[Worker, threading.Thread]] = []

    def stop_all() -> None:
        while started:
            loop, thread = started.pop()
            loop.request_stop()
            thread.join(timeout=60)
            assert not thread.is_alive()

    def start(loras: LoraRegistry | None = None, *, replacing: bool = False) -> RecordingRunner:
        """``loras``: the worker's LoRA registry, when not the API's. ``replacing``: the workers started so far stop
        (warm) first, as a deployment's new workers replace the old ones."""
        if replacing:
            stop_all()
        aws = AwsClients(settings)
        gpu = RecordingRunner(PipelineRunner(load_model("tiny"), lora_registry=loras or registry))
        loop = Worker(
            queue=RecordingQueue(aws.sqs(), settings.queue_url, into=received),
            repo=JobsRepository(aws.dynamodb(), settings.table_name),
            media=MediaStore(aws.s3(), settings.bucket),
            orchestrator=Orchestrator(aws.stepfunctions(), settings.state_machine_arn),
            generator=gpu,
            config=WorkerConfig(
                max_batch_images=4,
                # Long enough for every queued job to reach the batcher before the first batch leaves.
                max_batch_wait_s=2.0,
                receive_wait_s=1,
                visibility_s=30,
                heartbeat_s=2,
                grace_s=60,
                progress_interval_s=1,
                xray=False,
            ),
        )
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        started.append((loop, thread))
        return gpu

    yield start
    stop_all()


def test_a_jobs_loras_are_refused_at_submit_with_the_field_named(service: RunningService) -> None:
    refusals: dict[str, tuple[list[dict[str, Any]], list[Any], str]] = {
        "an unknown id": ([{"id": "nope"}], ["body", "loras", 0, "id"], "unknown LoRA"),
        "a scale out of range": ([{"id": "ink", "scale": 3}], ["body", "loras", 0, "scale"], "between -2 and 2"),
        "another model's LoRA": ([{"id": "for-variant"}], ["body", "loras"], "applies to variant, not model 'tiny'"),
        "too many": ([{"id": "ink"}, {"id": "for-variant"}] * 2, ["body", "loras"], "at most 3"),
    }
    with service.http() as http:
        headers = {"x-api-key": service.api_key}
        for case, (loras, loc, message) in refusals.items():
            answer = http.post("/v1/jobs", json={"prompt": "a fox", "loras": loras, **SMALL}, headers=headers)
            assert answer.status_code == 422, case
            details = answer.json()["error"]["details"]
            assert [d["loc"] for d in details] == [[str(part) for part in loc]], (case, details)
            assert message in details[0]["msg"], case


def test_the_model_list_names_the_loras_a_job_of_each_model_may_name(service: RunningService) -> None:
    """A LoRA is listed under the models its entry applies to: tiny takes ink, not for-variant (whose model this
    stack does not serve)."""
    with Client(service.api_url, service.api_key) as client:
        assert [(model.id, model.loras) for model in client.models().models] == [("tiny", ["ink"])]


def test_a_lora_job_succeeds_with_the_adapter_batched_only_with_its_own_lora_set(
    service: RunningService, worker: Callable[[], RecordingRunner]
) -> None:
    client = service.new_tenant("loras")
    inked: dict[str, Any] = {
        "prompt": "a red circle on a blue background",
        "seed": 5,
        "loras": [{"id": "ink", "scale": 0.8}],
    }
    lora_job = client.submit({**inked, **SMALL})["id"]
    partner = client.submit({**inked, "prompt": "a green square", "seed": 9, **SMALL})["id"]
    plain = client.submit({**inked, "loras": [], "cache": False, **SMALL})["id"]

    gpu = worker()
    jobs = {job_id: succeeded(client, job_id) for job_id in (lora_job, partner, plain)}
    batches = {(loras, frozenset(keys)) for loras, keys in gpu.calls}
    assert batches == {((), frozenset({plain})), ((("ink", 0.8),), frozenset({lora_job, partner}))}

    image = output(jobs[lora_job]["outputs"][0]["url"])
    without = output(jobs[plain]["outputs"][0]["url"])
    assert differs(image, without) > 8  # the adapter was applied
    # The same job alone gives the same pixels as in its batch with the other LoRA job.
    shape = BatchShape(256, 256, 2, 7.5, "euler", "tiny", loras=(("ink", 0.8),))
    alone = gpu.runner.generate([ImageJob("alone", inked["prompt"], "", 5, 1)], shape)["alone"][0]
    assert differs(image, alone) <= 1

    parameters = json.loads(image.info["parameters"])
    assert parameters["loras"] == [{"id": "ink", "revision": "r1", "scale": 0.8}]
    assert "loras" not in json.loads(without.info["parameters"])
    assert jobs[lora_job]["request"]["loras"] == [{"id": "ink", "scale": 0.8}]


def test_a_job_runs_only_at_the_lora_revision_it_was_submitted_at_and_fails_once_that_is_retired(
    service: RunningService, registry: LoraRegistry, worker: Callable[..., RecordingRunner], received: list[str]
) -> None:
    client = service.new_tenant("lora-pins")
    job = client.submit({"prompt": "a fox", "seed": 3, "loras": [{"id": "ink"}], "cache": False, **SMALL})
    assert job["lora_revisions"] == {"ink": "r1"}
    plain = client.submit({"prompt": "a fox", "seed": 3, "cache": False, **SMALL})["id"]

    def at(revision: str, *retired: str) -> LoraRegistry:
        ink = registry.get("ink")
        assert ink is not None
        return LoraRegistry(loras=(ink.model_copy(update={"revision": revision, "retired_revisions": retired}),))

    # A worker whose registry pins ink's next revision (a rolling deployment) leaves the job for one that has r1.
    worker(at("r2"))
    succeeded(client, plain)
    # The pinned job's message came round again meanwhile (it is hidden 2 s each time), and stayed unclaimed.
    wait_until(lambda: received.count(job["id"]) >= 2, 30, "the pinned job's message to come back")
    assert client.get(job["id"])["status"] == "QUEUED"
    # Once a registry retires r1, its workers fail the job, with the code that says why. They replace the r2 worker,
    # which would otherwise keep taking the message back in turn with them (it leaves the job, as it should).
    worker(at("r2", "r1"), replacing=True)
    deadline = time.monotonic() + 60
    while (found := client.get(job["id"], wait=5))["status"] == "QUEUED" and time.monotonic() < deadline:
        pass
    assert found["status"] == "FAILED", found
    assert found["error"]["code"] == "LORA_REVISION_GONE"
    assert found["lora_revisions"] == {"ink": "r1"}


def test_sdq_admin_imports_a_lora_into_the_bucket_that_a_worker_fetches_and_verifies(
    service: RunningService,
    registry: LoraRegistry,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ink = registry.get("ink")
    assert ink is not None
    folder = Path(ink.source)
    lora_id = f"ink-copy-{time.monotonic_ns()}"
    monkeypatch.setenv("SDQ_STATE_DIR", str(service.state_dir))
    args = ["admin", "loras", "import", lora_id, "--from", str(folder), "--revision", "r1", "--base-model", "tiny"]
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    entry = LoraEntry.model_validate(json.loads(capsys.readouterr().out))
    bucket = service.env["SDQ_BUCKET"]
    assert entry.source == f"s3://{bucket}/models/loras/{lora_id}/r1"
    assert (entry.revision, entry.base_models) == ("r1", ("tiny",))
    assert entry.checksums == weight_checksums(folder)

    # The worker's loader takes it from the bucket and accepts its checksum.
    fetched = lora_folder(entry, tmp_path / "cache", s3=service.boto("s3"))
    verify_lora(entry, fetched)
    # A revision is never overwritten.
    assert main([*args, "--json"]) == 1


def succeeded(client: SdqClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(job_id)
        if job["status"] in {"SUCCEEDED", "FAILED", "CANCELLED"}:
            assert job["status"] == "SUCCEEDED", job
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish: {client.get(job_id)}")


def output(url: str) -> Image.Image:
    image = Image.open(io.BytesIO(httpx.get(url, timeout=30).content))
    image.load()
    return image


def differs(a: Image.Image, b: Image.Image) -> int:
    """The largest difference of one channel of one pixel."""
    pixels = [np.asarray(image.convert("RGB"), dtype=np.int16) for image in (a, b)]
    return int(np.abs(pixels[0] - pixels[1]).max())
