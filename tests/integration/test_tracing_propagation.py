"""One X-Ray trace per job, observed on the local stack: the submit's trace id stored on the job and on the SQS
message (``AWSTraceHeader``), read back by the worker's own queue adapter, and on the ``StartExecution`` its
hand-off sends (``traceHeader``), whose execution then runs to the end.

The local stack runs with POWERTOOLS_TRACE_DISABLED and no X-Ray daemon, so no segment is sent; the last hop (the
execution passing the trace to Postprocess and Notify) is checked in test_tracing_lambdas.py.
"""

from __future__ import annotations

import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from PIL import Image

from shared.apikeys import ApiKeyStore
from shared.jobs import JobsRepository
from shared.media import MediaStore
from shared.orchestration import Orchestrator
from shared.queue import Received, WorkerQueue
from shared.tracing import trace_id
from tests.integration.conftest import RunningService, service_fixture
from workflows.generation.encoding import PngEncoder
from workflows.generation.handoff import HandOff
from workflows.generation.heldmessages import Held, HeldMessages

service = service_fixture("sdq-tracing", {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "100"})


def new_trace() -> tuple[str, str]:
    """A trace id as X-Ray makes them, and the header API Gateway would pass with it."""
    root = f"1-{int(time.time()):08x}-{secrets.token_hex(12)}"
    return root, f"Root={root};Parent={secrets.token_hex(8)};Sampled=1"


def submit_traced(service: RunningService, header: str) -> tuple[str, str]:
    tenant = f"trace-{time.monotonic_ns()}"
    key = ApiKeyStore(service.boto("dynamodb"), service.table).create(tenant).plaintext
    with service.http() as http:
        resp = http.post(
            "/v1/jobs",
            headers={"x-api-key": key, "X-Amzn-Trace-Id": header},
            json={"prompt": "a red fox", "width": 256, "height": 256, "num_inference_steps": 2},
        )
    assert resp.status_code == 202, resp.text
    return tenant, str(resp.json()["id"])


def receive_job(queue: WorkerQueue, job_id: str, timeout_s: float = 20) -> Received:
    """The job's message, as the worker receives it; other messages go straight back."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for received in queue.receive(max_messages=10, wait_s=1, visibility_s=60):
            if received.message is not None and received.message.job_id == job_id:
                return received
            queue.set_visibility([received], 0)
    raise AssertionError(f"job {job_id} never reached the queue")


def test_the_submits_trace_rides_the_message_the_worker_and_the_execution_it_starts(
    service: RunningService,
) -> None:
    root, header = new_trace()
    tenant, job_id = submit_traced(service, header)

    queue = WorkerQueue(service.boto("sqs"), service.queue_url)
    received = receive_job(queue, job_id)
    assert trace_id(received.trace_header) == root

    # The worker's real hand-off, with the worker's adapters on the local stack's clients; only the job's claim
    # and its image come from the test instead of a generation.
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    # The job keeps it too: what sends its message again (the DLQ handler, the requeue sweeper) continues it.
    assert trace_id(repo.get(job_id).trace_header) == root
    job = repo.claim(job_id, tenant, worker_id="trace-worker", lease_s=120, now=time.time())
    assert received.message is not None
    held = Held(received=received, message=received.message, arrived=time.monotonic(), job=job)
    held.claimed_at = time.monotonic()
    sfn = service.boto("stepfunctions")
    starts: list[dict[str, Any]] = []
    sfn.meta.events.register(
        "provide-client-params.sfn.StartExecution", lambda params, **_: starts.append(dict(params))
    )
    with ThreadPoolExecutor(1) as finishers:
        handoff = HandOff(
            HeldMessages(queue, max_batch_images=1, max_batch_wait_s=0),
            repo,
            MediaStore(service.boto("s3"), service.env["SDQ_BUCKET"]),
            Orchestrator(sfn, service.env["SDQ_STATE_MACHINE_ARN"]),
            PngEncoder(),
            finishers,
            staging_prefix="staging/",
            worker_id="trace-worker",
            model_name="tiny",
        )
        handoff.complete_later(None, held, [Image.new("RGB", (256, 256), (200, 80, 40))])
        handoff.wait()

    [start] = starts
    assert trace_id(start["traceHeader"]) == root
    assert json.loads(start["input"])["job_id"] == job_id
    arn = sfn.describe_execution(
        executionArn=f"{service.env['SDQ_STATE_MACHINE_ARN'].replace(':stateMachine:', ':execution:')}:{start['name']}"
    )["executionArn"]
    deadline = time.monotonic() + 60
    while sfn.describe_execution(executionArn=arn)["status"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert sfn.describe_execution(executionArn=arn)["status"] == "SUCCEEDED"
    assert repo.get(job_id).status.value == "SUCCEEDED"


def test_a_submit_without_a_trace_sends_no_trace_header(service: RunningService) -> None:
    client = service.new_tenant("untraced")
    job_id = client.submit({"prompt": "a red fox", "width": 256, "height": 256})["id"]
    received = receive_job(WorkerQueue(service.boto("sqs"), service.queue_url), job_id)
    assert received.trace_header is None


@pytest.mark.parametrize("name", ["X-Amzn-Trace-Id", "x-amzn-trace-id"])
def test_the_trace_header_is_read_in_any_case(name: str) -> None:
    from shared.tracing import request_header

    assert request_header({name: "Root=1-5759e988-bd862e3fe1be46a994272793"}) == (
        "Root=1-5759e988-bd862e3fe1be46a994272793"
    )
