"""Which worker generates which model: `sdq up --model X` refuses other models at submit, and a worker never
generates a job for a model it has not loaded; it leaves the message for a worker that serves that model.

Two small local models, no hub, in a model registry: the built-in tiny model and a copy of its folder served
from a local path as ``variant``.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from shared.aws import AwsClients
from shared.contracts import QueueMessage, utcnow
from shared.jobs import JobsRepository
from shared.media import MediaStore
from shared.modelregistry import BUILTIN_REGISTRY, ModelRegistry, weight_checksums
from shared.orchestration import Orchestrator
from shared.queue import WorkerQueue
from shared.settings import Settings
from tests.integration.conftest import RunningService, start_service, stop_service, store_queued_job
from workflows.generation.models import ensure_tiny_model, load_model
from workflows.generation.pipeline import PipelineRunner
from workflows.generation.worker import Worker, WorkerConfig

SMALL: dict[str, Any] = {"width": 256, "height": 256, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    """tiny, and ``variant``: a second local model, the tiny model's folder copied, pinned as revision r1."""
    folder = tmp_path_factory.mktemp("models") / "tiny-variant"
    shutil.copytree(ensure_tiny_model(), folder)
    variant = {
        "id": "variant",
        "source": str(folder),
        "revision": "r1",
        "checksums": weight_checksums(folder),
        "architecture": "tiny",
    }
    return ModelRegistry.model_validate({"models": [*BUILTIN_REGISTRY.model_dump()["models"], variant]})


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, registry: ModelRegistry) -> Iterator[RunningService]:
    """`sdq up --model variant` with the registry (control plane only: the tests run their own workers)."""
    running = start_service(
        tmp_path_factory.mktemp("sdq-models"),
        {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "1000", "SDQ_MODEL_REGISTRY": registry.model_dump_json()},
        args=("--model", "variant"),
    )
    yield running
    stop_service(running)


@pytest.fixture
def run_worker(
    service: RunningService, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], Worker]]:
    """Start an in-process worker loop that has loaded one model of the registry; each is stopped warm at the end."""
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

    def start(model: str) -> Worker:
        aws = AwsClients(settings)
        worker = Worker(
            queue=WorkerQueue(aws.sqs(), settings.queue_url),
            repo=JobsRepository(aws.dynamodb(), settings.table_name),
            media=MediaStore(aws.s3(), settings.bucket),
            orchestrator=Orchestrator(aws.stepfunctions(), settings.state_machine_arn),
            generator=PipelineRunner(load_model(model, registry=registry)),
            config=WorkerConfig(
                max_batch_images=4,
                max_batch_wait_s=0.2,
                receive_wait_s=1,
                visibility_s=30,
                heartbeat_s=2,
                grace_s=60,
                progress_interval_s=1,
                xray=False,
            ),
        )
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        started.append((worker, thread))
        return worker

    yield start
    for worker, thread in started:
        worker.request_stop()
        thread.join(timeout=60)
        assert not thread.is_alive()


def wait_for(read: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = read()
        if done(value):
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s}s; last read: {value}")


def image_parameters(url: str) -> dict[str, Any]:
    """The generation parameters embedded in an output PNG."""
    image = Image.open(io.BytesIO(httpx.get(url, timeout=30).content))
    return dict(json.loads(image.info["parameters"]))


def test_sdq_up_with_a_model_refuses_a_job_for_any_other_model_at_submit(service: RunningService) -> None:
    with service.http() as http:
        headers = {"x-api-key": service.api_key}
        refused = http.post("/v1/jobs", json={"prompt": "a fox", "model": "tiny", **SMALL}, headers=headers)
        assert refused.status_code == 422
        assert "must be one of: variant" in json.dumps(refused.json())  # names the model that is served
        accepted = http.post("/v1/jobs", json={"prompt": "a fox", **SMALL}, headers=headers)
        assert accepted.status_code == 202
        assert accepted.json()["request"]["model"] == "variant"


def test_a_worker_leaves_a_job_for_a_model_it_has_not_loaded_to_a_worker_that_has(
    service: RunningService, run_worker: Callable[[str], Worker]
) -> None:
    tenant, client = service.new_named_tenant("models")
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    # A job for a model this deployment's other workers serve (not this API's allowlist): sent as the API would.
    other = store_queued_job(repo, tenant, model="tiny", **SMALL)
    message = QueueMessage(job_id=other.job_id, tenant=tenant, request=other.request, enqueued_at=utcnow())
    service.boto("sqs").send_message(QueueUrl=service.queue_url, MessageBody=message.model_dump_json())
    own = client.submit({"prompt": "a fox", **SMALL})["id"]

    run_worker("variant")
    done = wait_for(lambda: client.get(own), lambda j: j["status"] == "SUCCEEDED", 120)
    parameters = image_parameters(done["outputs"][0]["url"])
    assert (parameters["model"], parameters["model_revision"]) == ("variant", "r1")
    # The variant worker has seen the tiny job's message come back several times by now and never claimed it.
    time.sleep(3)
    untouched = repo.get(other.job_id)
    assert (untouched.status.value, untouched.attempt) == ("QUEUED", 0)

    run_worker("tiny")
    finished = wait_for(lambda: client.get(other.job_id), lambda j: j["status"] == "SUCCEEDED", 120)
    parameters = image_parameters(finished["outputs"][0]["url"])
    assert (parameters["model"], parameters["model_revision"]) == ("tiny", "1")
    assert repo.get(other.job_id).attempt == 1  # generated once, by the worker that has the model
