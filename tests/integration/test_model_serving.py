"""Which worker generates which model: `sdq up --model X` refuses other models at submit, and a worker never
generates a job for a model it has not loaded; it leaves the message for a worker that serves that model. A job
is pinned to its model's registry revision at submit: a worker that loaded another revision leaves it for one
that has it (a rolling deployment), and one whose registry retired it fails it ``MODEL_REVISION_GONE``.

Two small local models, no hub, in a model registry: the built-in tiny model, and ``variant``, a tiny model
built from another seed (other weights, other images) and served from a local folder.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, get_args

import httpx
import numpy as np
import pytest
from PIL import Image
from sdq_client import Client
from ulid import ULID

from cli.client import SdqClient
from cli.main import main
from localcloud.receiver import ScriptedReceiver
from shared.aws import AwsClients
from shared.contracts import GenerationRequest, Job, JobStatus, QueueMessage, Scheduler, utcnow
from shared.jobs import JobsRepository, expiry_epoch
from shared.media import MediaStore
from shared.modelregistry import BUILTIN_REGISTRY, ModelRegistry, weight_checksums
from shared.orchestration import Orchestrator
from shared.settings import Settings
from shared.tinymodel import TINY_MODEL_NOTE
from tests.integration.conftest import (
    RecordingQueue,
    RunningService,
    start_service,
    stop_service,
    store_queued_job,
    wait_until,
)
from tests.integration.test_worker import assert_one_failed_webhook
from workflows.generation.models import build_tiny_pipeline, load_model
from workflows.generation.pipeline import BatchShape, ImageJob, ModelRunners, PipelineRunner
from workflows.generation.worker import Generator, Worker, WorkerConfig

SMALL: dict[str, Any] = {"width": 256, "height": 256, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    """tiny, and ``variant``: a second local model with other weights, pinned as revision r1."""
    folder = tmp_path_factory.mktemp("models") / "tiny-variant"
    build_tiny_pipeline(seed=7).save_pretrained(folder, safe_serialization=True)
    variant = {
        "id": "variant",
        "source": str(folder),
        "revision": "r1",
        "checksums": weight_checksums(folder),
        "architecture": "tiny",
        "schedulers": ["euler_a", "euler"],
    }
    return ModelRegistry.model_validate({"models": [*BUILTIN_REGISTRY.model_dump()["models"], variant]})


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, registry: ModelRegistry) -> Iterator[RunningService]:
    """`sdq up --model variant --model tiny` with the registry (control plane only: the tests run their own
    workers); variant is the default model."""
    running = start_service(
        tmp_path_factory.mktemp("sdq-models"),
        {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "1000", "SDQ_MODEL_REGISTRY": registry.model_dump_json()},
        args=("--model", "variant", "--model", "tiny"),
    )
    yield running
    stop_service(running)


@pytest.fixture
def run_worker(
    service: RunningService, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch, received: list[str]
) -> Iterator[Callable[..., Worker]]:
    """Start an in-process worker loop that has loaded models of the registry (or of ``registry=``, which also
    says which revisions are retired); each is stopped warm at the end."""
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

    def start(model: str | Generator, registry: ModelRegistry = registry) -> Worker:
        aws = AwsClients(settings)
        generator = PipelineRunner(load_model(model, registry=registry)) if isinstance(model, str) else model
        worker = Worker(
            queue=RecordingQueue(aws.sqs(), settings.queue_url, into=received),
            repo=JobsRepository(aws.dynamodb(), settings.table_name),
            media=MediaStore(aws.s3(), settings.bucket),
            orchestrator=Orchestrator(aws.stepfunctions(), settings.state_machine_arn),
            generator=generator,
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
            registry=registry,
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


class RecordingRunners:
    """Several models in one worker, recording each pipeline call: its model and its jobs."""

    def __init__(self, runners: ModelRunners) -> None:
        self._runners = runners
        self.calls: list[tuple[str | None, list[str]]] = []

    @property
    def model_name(self) -> str:
        return self._runners.model_name

    @property
    def models(self) -> frozenset[str]:
        return self._runners.models

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
    ) -> dict[str, list[Image.Image]]:
        self.calls.append((shape.model, [job.key for job in jobs]))
        return self._runners.generate(jobs, shape, on_step)


def wait_for(read: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = read()
        if done(value):
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s}s; last read: {value}")


def output(url: str) -> Image.Image:
    return Image.open(io.BytesIO(httpx.get(url, timeout=30).content))


def image_parameters(url: str) -> dict[str, Any]:
    """The generation parameters embedded in an output PNG."""
    return dict(json.loads(output(url).info["parameters"]))


def send(service: RunningService, repo: JobsRepository, tenant: str, **fields: Any) -> str:
    """A job stored and sent as the API would, for a model this API does not accept (other workers serve it)."""
    job = store_queued_job(repo, tenant, **fields)
    message = QueueMessage(job_id=job.job_id, tenant=tenant, request=job.request, enqueued_at=utcnow())
    service.boto("sqs").send_message(QueueUrl=service.queue_url, MessageBody=message.model_dump_json())
    return job.job_id


def test_sdq_up_with_models_refuses_a_job_for_any_other_model_or_its_scheduler_at_submit(
    service: RunningService,
) -> None:
    with service.http() as http:
        headers = {"x-api-key": service.api_key}
        refused = http.post("/v1/jobs", json={"prompt": "a fox", "model": "sd15", **SMALL}, headers=headers)
        assert refused.status_code == 422
        assert "must be one of: variant, tiny" in json.dumps(refused.json())  # names the models that are served
        # The registry entry's schedulers bound what a job for the model may name.
        other_scheduler = http.post("/v1/jobs", json={"prompt": "a fox", "scheduler": "lms", **SMALL}, headers=headers)
        assert other_scheduler.status_code == 422
        assert "model 'variant' takes the schedulers euler_a, euler" in other_scheduler.text
        accepted = http.post("/v1/jobs", json={"prompt": "a fox", **SMALL}, headers=headers)
        assert accepted.status_code == 202
        assert accepted.json()["request"]["model"] == "variant"
        # Pinned at submit to the registry's revision of the model, and shown so on every read.
        assert accepted.json()["model_revision"] == "r1"
        read = http.get(f"/v1/jobs/{accepted.json()['id']}", headers=headers)
        assert read.json()["model_revision"] == "r1"


def test_the_model_list_says_what_a_job_of_each_model_runs_with(
    service: RunningService, capsys: pytest.CaptureFixture[str]
) -> None:
    """``GET /v1/models`` (the Python client's ``models()``): the served models, the default first, each with the
    values a job that leaves them out gets, which a job of each then shows."""
    with Client(service.api_url, service.api_key) as client:
        variant, tiny = client.models().models
        assert (variant.id, variant.default, variant.revision, variant.note) == ("variant", True, "r1", None)
        assert variant.schedulers == ["euler_a", "euler"]  # its registry entry's, in their order
        assert (tiny.id, tiny.default, tiny.note) == ("tiny", False, TINY_MODEL_NOTE)
        assert tiny.schedulers == list(get_args(Scheduler))  # an entry that names none takes them all
        assert variant.loras == tiny.loras == []  # no LoRA registry here
        for model in (variant, tiny):
            job = client.submit({"prompt": "a fox", "model": model.id})
            request = job.request
            assert (request.width, request.height) == (model.default_width, model.default_height)
            assert request.num_inference_steps == model.default_num_inference_steps
            assert request.guidance_scale == model.default_guidance_scale
            assert job.model_revision == model.revision
            client.cancel(job.id)
    # `sdq models`, piped: a header, then one tab-separated line per model, the default first.
    assert main(["models", "--api-url", service.api_url, "--api-key", service.api_key]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [(row[0], row[1]) for row in lines] == [("model", "default"), ("variant", "yes"), ("tiny", "")]
    assert lines[1][6] == "euler_a,euler"


def test_a_worker_leaves_a_job_for_a_model_it_has_not_loaded_to_a_worker_that_has(
    service: RunningService, run_worker: Callable[..., Worker], received: list[str]
) -> None:
    tenant, client = service.new_named_tenant("models")
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    other = repo.get(send(service, repo, tenant, model="tiny", **SMALL))
    own = client.submit({"prompt": "a fox", **SMALL})["id"]

    run_worker("variant")
    done = succeeded(client, own)
    parameters = image_parameters(done["outputs"][0]["url"])
    assert (parameters["model"], parameters["model_revision"]) == ("variant", "r1")
    # The variant worker has seen the tiny job's message come back and never claimed it.
    wait_until(lambda: received.count(other.job_id) >= 2, 30, "the tiny job's message to come back")
    untouched = repo.get(other.job_id)
    assert (untouched.status.value, untouched.attempt) == ("QUEUED", 0)

    run_worker("tiny")
    finished = succeeded(client, other.job_id)
    parameters = image_parameters(finished["outputs"][0]["url"])
    assert (parameters["model"], parameters["model_revision"]) == ("tiny", "1")
    assert repo.get(other.job_id).attempt == 1  # generated once, by the worker that has the model


def test_one_worker_serves_two_models_and_never_mixes_them_in_a_batch(
    service: RunningService, registry: ModelRegistry, run_worker: Callable[..., Worker]
) -> None:
    tenant, client = service.new_named_tenant("two-models")
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    same = {"prompt": "a red circle on a blue background", "seed": 5, **SMALL}
    tiny_ids = [send(service, repo, tenant, model="tiny", **same) for _ in range(2)]
    variant_ids = [client.submit({**same, "cache": False})["id"] for _ in range(2)]
    runners = ModelRunners([PipelineRunner(load_model(m, registry=registry)) for m in ("tiny", "variant")])
    gpu = RecordingRunners(runners)
    run_worker(gpu)

    jobs = {job_id: succeeded(client, job_id) for job_id in [*tiny_ids, *variant_ids]}
    model_of = {**dict.fromkeys(tiny_ids, "tiny"), **dict.fromkeys(variant_ids, "variant")}
    ran = [key for _, keys in gpu.calls for key in keys]
    assert sorted(ran) == sorted(model_of)  # each job generated once
    for model, keys in gpu.calls:
        assert {model_of[key] for key in keys} == {model}  # a batch holds one model's jobs and runs on it
    # Each job's image is its own model's: what that model draws alone for the same request, not the other's.
    shape = BatchShape(256, 256, 2, 7.5, "euler_a")
    alone = {
        m: runners.runner(m).generate([ImageJob("x", same["prompt"], "", 5, 1)], shape)["x"][0]
        for m in model_of.values()
    }
    assert _differs(alone["tiny"], alone["variant"]) > 8
    for job_id, job in jobs.items():
        image = output(job["outputs"][0]["url"])
        assert image_parameters(job["outputs"][0]["url"])["model"] == model_of[job_id]
        assert _differs(image.convert("RGB"), alone[model_of[job_id]]) <= 1


def test_sdq_up_with_two_models_runs_one_worker_that_serves_both(service: RunningService) -> None:
    """`sdq up --model variant --model tiny`: its worker (here `sdq worker` with the stack's environment, as
    `sdq up` starts it) loads both and generates each job with its own model and revision."""
    client = service.new_tenant("both")
    jobs = {model: client.submit({"prompt": "a fox", "model": model, **SMALL})["id"] for model in ("variant", "tiny")}
    # A short long poll: one still open at the local cloud when this worker stops would take the next test's job.
    worker = service.start_worker(env={"SDQ_RECEIVE_WAIT_S": "1"}, log_name="both")
    try:
        for model, job_id in jobs.items():
            done = succeeded(client, job_id)
            parameters = image_parameters(done["outputs"][0]["url"])
            revision = {"variant": "r1", "tiny": "1"}[model]
            assert (parameters["model"], parameters["model_revision"], done["model_revision"]) == (
                model,
                revision,
                revision,
            )
    finally:
        worker.terminate()  # a warm stop; the tests after this one run workers of their own
        assert worker.wait(timeout=60) == 0
    log = "".join(path.read_text(errors="replace") for path in service.state_dir.glob("both-*.log"))
    assert '"model":"tiny,variant"' in log  # one worker process, both models loaded


def revised(registry: ModelRegistry, revision: str, *, retired: Sequence[str] = ()) -> ModelRegistry:
    """``registry`` after an operator's update of ``variant`` to ``revision`` (same weights, a new label)."""
    variant = registry.get("variant")
    assert variant is not None
    update = variant.model_copy(update={"revision": revision, "retired_revisions": tuple(retired)})
    return registry.model_copy(update={"models": (registry.models[0], update)})


def test_a_rolling_deployment_leaves_a_job_pinned_to_the_old_revision_to_a_worker_that_has_it(
    service: RunningService, registry: ModelRegistry, run_worker: Callable[..., Worker], received: list[str]
) -> None:
    client = service.new_tenant("rolling")
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    pinned = client.submit({"prompt": "a fox", "cache": False, **SMALL})
    assert pinned["model_revision"] == "r1"

    updated = revised(registry, "r2")  # r1 not retired: old workers still drain it
    run_worker(PipelineRunner(load_model("variant", registry=updated)), registry=updated)
    # The r2 worker has seen the message come back, and never claimed it.
    wait_until(lambda: received.count(pinned["id"]) >= 2, 30, "the pinned job's message to come back")
    untouched = repo.get(pinned["id"])
    assert (untouched.status.value, untouched.attempt) == ("QUEUED", 0)

    run_worker("variant")  # a worker of the old deployment, with r1
    done = succeeded(client, pinned["id"])
    assert image_parameters(done["outputs"][0]["url"])["model_revision"] == "r1"
    assert repo.get(pinned["id"]).attempt == 1


def test_an_image_records_the_revision_its_job_ran_with_while_the_registry_names_another(
    service: RunningService, registry: ModelRegistry, run_worker: Callable[..., Worker]
) -> None:
    """A rolling deployment the other way round: Postprocess (the service's registry, r1) already pins new jobs to r1
    while a job pinned to r0 runs on a worker that still has r0; its images say r0, the revision they were made with.
    """
    tenant, client = service.new_named_tenant("older")
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    body = {"prompt": "a fox", "model": "variant", "cache": False, **SMALL}
    request = GenerationRequest.model_validate(body, context={"trusted": True}).normalised()
    job = Job(
        job_id=str(ULID()),
        tenant=tenant,
        status=JobStatus.QUEUED,
        request=request,
        created_at=utcnow(),
        cache_key=request.cache_key("r0"),
        expires_at=expiry_epoch(utcnow(), 1),
        model_revision="r0",
    )
    repo.create(job)
    repo.mark_enqueued(job.job_id)
    message = QueueMessage(job_id=job.job_id, tenant=tenant, request=job.request, enqueued_at=utcnow())
    service.boto("sqs").send_message(QueueUrl=service.queue_url, MessageBody=message.model_dump_json())

    older = revised(registry, "r0")
    run_worker(PipelineRunner(load_model("variant", registry=older)), registry=older)
    done = succeeded(client, job.job_id)
    assert done["model_revision"] == "r0"
    assert image_parameters(done["outputs"][0]["url"])["model_revision"] == "r0"


def test_a_job_pinned_to_a_retired_revision_fails_model_revision_gone_and_its_client_is_told(
    service: RunningService,
    registry: ModelRegistry,
    run_worker: Callable[..., Worker],
    receiver: ScriptedReceiver,
) -> None:
    _, client = service.new_named_tenant("retired")
    receiver.secret = client.webhook_secret()
    job = client.submit({"prompt": "a fox", "cache": False, "callback_url": receiver.url, **SMALL})
    assert job["model_revision"] == "r1"

    retiring = revised(registry, "r2", retired=["r1"])
    run_worker(PipelineRunner(load_model("variant", registry=retiring)), registry=retiring)
    failed = wait_for(lambda: client.get(job["id"]), lambda j: j["status"] == "FAILED", 60)
    assert failed["error"]["code"] == "MODEL_REVISION_GONE"
    assert failed["error"]["message"] == "Revision 'r1' of model 'variant' is retired: no worker serves it any more."
    assert failed["attempt"] == 0  # never claimed: no GPU time spent
    assert_one_failed_webhook(receiver, job["id"], "MODEL_REVISION_GONE")


def succeeded(client: SdqClient, job_id: str) -> dict[str, Any]:
    return dict(wait_for(lambda: client.get(job_id), lambda j: j["status"] == "SUCCEEDED", 120))


def _differs(a: Image.Image, b: Image.Image) -> int:
    """The largest difference of one channel of one pixel."""
    pixels = [np.asarray(image.convert("RGB"), dtype=np.int16) for image in (a, b)]
    return int(np.abs(pixels[0] - pixels[1]).max())


def test_a_worker_whose_weights_fail_their_checksums_refuses_to_start(
    service: RunningService, registry: ModelRegistry
) -> None:
    variant = registry.get("variant")
    assert variant is not None
    unet = "unet/diffusion_pytorch_model.safetensors"
    wrong = variant.model_copy(update={"checksums": {**variant.checksums, unet: "0" * 64}})
    tampered = registry.model_copy(update={"models": (registry.models[0], wrong)})
    worker = service.start_worker(
        "--model", "variant", env={"SDQ_MODEL_REGISTRY": tampered.model_dump_json()}, log_name="checksums"
    )
    assert worker.wait(timeout=120) != 0
    log = "".join(path.read_text(errors="replace") for path in service.state_dir.glob("checksums-*.log"))
    assert f"Model 'variant' revision 'r1' failed its checksums: {unet}: sha256" in log
