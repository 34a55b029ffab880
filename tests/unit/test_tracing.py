"""Tracing as the X-Ray daemon (a UDP socket here) receives it: the worker's segments are off by default; with
SDQ_XRAY on, each job the worker hands off has a segment in the job's own trace that shows its stages there and
names the job; the Lambdas' handler subsegments name the job too, so ``annotation.job_id`` finds its trace."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from aws_xray_sdk.core.models.trace_header import TraceHeader
from PIL import Image as PILImage
from PIL.Image import Image

from handlers import api, authorizer, notify, postprocess
from handlers.worker import worker_config
from localcloud.api import LocalLambdaContext
from localcloud.gateway import GatewayRules, LocalGateway
from localcloud.service import TEMPLATE
from shared.apikeys import ApiKeyStore
from shared.jobs import JobsRepository
from shared.media import MediaStore
from shared.orchestration import Orchestrator
from shared.settings import get_settings
from shared.tracing import segment, subsegment, trace_id
from tests.unit.conftest import JOBS_TABLE, TENANT, make_job
from tests.unit.test_delivery_slots import notifier_for
from tests.unit.workerfakes import RecordingQueue, received
from workflows.generation.batchrun import BatchRunner
from workflows.generation.claims import Claims
from workflows.generation.encoding import PngEncoder
from workflows.generation.handoff import HandOff
from workflows.generation.heldmessages import HeldMessages
from workflows.generation.pipeline import BatchShape, ImageJob
from workflows.generation.progress import ProgressRecorder

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

ROOTS = ("1-5759e988-bd862e3fe1be46a994272793", "1-5759e988-00000000000000000000000b")
PARENT = "53995c3f42cd8ad8"


@pytest.fixture(scope="module")
def daemon() -> Iterator[socket.socket]:
    """A UDP socket standing in for the X-Ray daemon, shared by this module's tests."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    address = f"127.0.0.1:{sock.getsockname()[1]}"
    from aws_xray_sdk import global_sdk_config
    from aws_xray_sdk.core import xray_recorder

    # A Powertools Tracer built outside Lambda (importing a handler, as other test files in this process may)
    # turns the X-Ray SDK off process-wide; the worker's process builds none.
    was_enabled = global_sdk_config.sdk_enabled()
    global_sdk_config.set_sdk_enabled(True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_XRAY_DAEMON_ADDRESS", address)  # configure() prefers it to its argument
        xray_recorder.configure(daemon_address=address, sampling=False, context_missing="LOG_ERROR")
        yield sock
    global_sdk_config.set_sdk_enabled(was_enabled)
    sock.close()
    xray_recorder.emitter._socket.close()  # the SDK never closes its UDP socket


def sent(daemon: socket.socket) -> list[dict[str, Any]]:
    """The segment documents the daemon received until it went quiet."""
    docs = []
    try:
        while True:
            docs.append(json.loads(daemon.recv(65536).decode().split("\n", 1)[1]))
            daemon.settimeout(0.5)
    except TimeoutError:
        return docs
    finally:
        daemon.settimeout(2)


def test_the_worker_traces_only_with_sdq_xray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SDQ_XRAY", raising=False)
    assert worker_config().xray is False
    monkeypatch.setenv("SDQ_XRAY", "true")
    get_settings.cache_clear()
    assert worker_config().xray is True


def test_nothing_is_sent_when_off(daemon: socket.socket) -> None:
    with segment("sdq-worker", enabled=False), subsegment("upload", enabled=False):
        pass
    with pytest.raises(TimeoutError):
        daemon.recv(65536)


def test_segments_reach_the_daemon_when_on(daemon: socket.socket) -> None:
    with segment("sdq-worker", enabled=True), subsegment("upload", enabled=True):
        pass
    header, body = daemon.recv(65536).decode().split("\n", 1)
    assert json.loads(header)["format"] == "json"
    doc = json.loads(body)
    assert doc["name"] == "sdq-worker"
    assert [s["name"] for s in doc.get("subsegments", [])] == ["upload"]


class SlowGenerator:
    """A pipeline call that takes 50 ms and makes blank images."""

    model_name = "fake"

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
    ) -> dict[str, list[Image]]:
        time.sleep(0.05)
        return {j.key: [PILImage.new("RGB", (8, 8))] * j.num_images for j in jobs}


def test_each_handed_off_job_has_a_worker_segment_in_its_trace_that_shows_where_its_time_went(
    daemon: socket.socket, jobs_table: DynamoDBClient
) -> None:
    """The worker's own claims, batch run and hand-off, two jobs in one batch, each message bringing its job's
    trace: each job gets one segment in that trace, from its message's arrival to its hand-off, naming the job,
    with its stages in order (the waits the test makes show in them); its StartExecution carries that segment on."""
    repo = JobsRepository(jobs_table, JOBS_TABLE)
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="media")
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    machine = sfn.create_state_machine(
        name="sdq",
        definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
        roleArn="arn:aws:iam::123456789012:role/sdq",
    )["stateMachineArn"]
    starts: list[dict[str, Any]] = []
    sfn.meta.events.register("provide-client-params.sfn.StartExecution", lambda params, **_: starts.append(params))
    messages = [replace(received(), trace_header=f"Root={root};Parent={PARENT};Sampled=1") for root in ROOTS]
    for r in messages:
        assert r.message is not None
        repo.create(make_job().model_copy(update={"job_id": r.message.job_id, "request": r.message.request}))
    held = HeldMessages(RecordingQueue(), max_batch_images=8, max_batch_wait_s=0.0)
    hard_stop = threading.Event()
    with (
        ThreadPoolExecutor(4) as table,
        ThreadPoolExecutor(1) as prefetch,
        ThreadPoolExecutor(1) as finishers,
        ThreadPoolExecutor(1) as writers,
    ):
        claims = Claims(
            held, repo, table_pool=table, prefetch=prefetch, stopping=threading.Event(), worker_id="w", lease_s=60,
            clock=time.time,
        )  # fmt: skip
        handoff = HandOff(
            held, repo, MediaStore(s3, "media"), Orchestrator(sfn, machine), PngEncoder(0), finishers,
            staging_prefix="staging/", worker_id="w", model_name="fake", xray=True,
        )  # fmt: skip
        progress = ProgressRecorder(
            repo, worker_id="w", interval_s=1.0, hard_stop=hard_stop, writers=writers, table_pool=table
        )
        held.accept(messages)
        time.sleep(0.03)  # waiting for its batch
        claimed = claims.claim_batch(held.take_waiting())
        time.sleep(0.03)  # claimed ahead, while the batch before it runs
        BatchRunner(SlowGenerator(), progress, handoff, hard_stop).run(claimed)
        handoff.wait()

    docs = sent(daemon)
    for r in messages:
        assert r.message is not None
        [doc] = [d for d in docs if d["trace_id"] == trace_id(r.trace_header)]
        assert (doc["name"], doc["parent_id"]) == ("sdq-worker", PARENT)
        assert doc["annotations"] == {"job_id": r.message.job_id, "tenant": TENANT}
        stages = {s["name"]: s for s in doc["subsegments"]}
        assert list(stages) == ["batching", "claim", "gpu-wait", "generate", "upload"]
        assert stages["batching"]["start_time"] == doc["start_time"]  # the message's arrival
        bounds = [t for s in stages.values() for t in (s["start_time"], s["end_time"])]
        assert bounds == sorted(bounds)
        assert bounds[-1] <= doc["end_time"]
        took = {name: s["end_time"] - s["start_time"] for name, s in stages.items()}
        assert took["batching"] >= 0.03
        assert took["gpu-wait"] >= 0.03
        assert took["generate"] >= 0.05
        assert stages["generate"]["annotations"]["batch_jobs"] == 2
        assert stages["generate"]["annotations"]["gpu_s"] > 0
        [start] = [p for p in starts if json.loads(p["input"])["job_id"] == r.message.job_id]
        passed_on = TraceHeader.from_header_str(start["traceHeader"])
        assert (passed_on.root, passed_on.parent) == (doc["trace_id"], doc["id"])


@pytest.fixture
def in_lambda(daemon: socket.socket, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process as a traced Lambda invocation: the runtime's trace header, the X-Ray SDK's Lambda context, and
    each subsegment sent as it ends (what Powertools' Tracer sets up in Lambda; outside it turns itself off)."""
    from aws_xray_sdk.core import xray_recorder
    from aws_xray_sdk.core.lambda_launcher import LambdaContext

    monkeypatch.setenv("_X_AMZN_TRACE_ID", f"Root={ROOTS[0]};Parent={PARENT};Sampled=1")
    previous, threshold = xray_recorder.context, xray_recorder.streaming_threshold
    xray_recorder.configure(context=LambdaContext(), streaming_threshold=0)
    yield
    xray_recorder.configure(context=previous, streaming_threshold=threshold)


@pytest.mark.parametrize("function", ["postprocess", "notify"])
def test_the_lambdas_handler_subsegments_name_their_job(
    in_lambda: None,
    daemon: socket.socket,
    jobs_table: DynamoDBClient,
    monkeypatch: pytest.MonkeyPatch,
    function: str,
) -> None:
    job, _ = JobsRepository(jobs_table, JOBS_TABLE).create(make_job())
    if function == "postprocess":
        event = {"webhook_given_up": True, "job_id": job.job_id, "tenant": TENANT, "error": "States.Timeout"}
        assert postprocess.lambda_handler(event, LocalLambdaContext()) == {"reported": True}
    else:
        monkeypatch.setattr(notify, "notifier", lambda: notifier_for(jobs_table))
        answer = notify.lambda_handler({"job_id": job.job_id, "tenant": TENANT}, LocalLambdaContext())
        assert answer == {"outcome": "nothing_to_send"}  # still queued: no webhook yet
    [doc] = [d for d in sent(daemon) if d["name"] == "## lambda_handler"]
    assert (doc["trace_id"], doc["parent_id"]) == (ROOTS[0], PARENT)
    assert (doc["annotations"]["job_id"], doc["annotations"]["tenant"]) == (job.job_id, TENANT)


@pytest.mark.parametrize("route", ["get", "cancel"])
def test_the_apis_handler_subsegment_names_the_job_it_answers_for(
    in_lambda: None, daemon: socket.socket, jobs_table: DynamoDBClient, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    monkeypatch.setenv("SDQ_TABLE_NAME", JOBS_TABLE)
    monkeypatch.setenv("SDQ_BUCKET", "media")
    api.services.cache_clear()
    authorizer.deps.cache_clear()
    try:
        key = ApiKeyStore(jobs_table, JOBS_TABLE).create(TENANT).plaintext
        job, _ = JobsRepository(jobs_table, JOBS_TABLE).create(make_job())
        path = f"/v1/jobs/{job.job_id}" + ("/cancel" if route == "cancel" else "")
        event = {
            "path": path,
            "httpMethod": "GET" if route == "get" else "POST",
            "headers": {"x-api-key": key},
            "multiValueHeaders": {},
            "queryStringParameters": None,
            "requestContext": {"stage": "prod", "path": f"/prod{path}"},
            "body": None,
            "isBase64Encoded": False,
        }
        gateway = LocalGateway(GatewayRules.from_template(TEMPLATE), authorizer.lambda_handler, LocalLambdaContext)
        assert gateway.admit(event) is None
        assert api.lambda_handler(event, LocalLambdaContext())["statusCode"] == 200
    finally:
        api.services.cache_clear()
        authorizer.deps.cache_clear()
    [doc] = [d for d in sent(daemon) if d["name"] == "## lambda_handler"]
    assert (doc["trace_id"], doc["parent_id"]) == (ROOTS[0], PARENT)
    assert (doc["annotations"]["job_id"], doc["annotations"]["tenant"]) == (job.job_id, TENANT)
