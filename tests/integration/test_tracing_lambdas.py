"""One trace through every stage on the local stack: the submit's trace rides the message to the worker, which
starts the execution with it; the execution keeps it, and every Lambda task of that execution (Postprocess,
CountSucceeded, Notify) runs in it: the local runtime hands the ``Invoke``'s ``X-Amzn-Trace-Id`` to the function
as ``_X_AMZN_TRACE_ID``, as the Lambda runtime does, so the handlers' structured logs carry its ``xray_trace_id``,
and each traced invocation ends with the platform's ``REPORT`` line naming the trace."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from localcloud.receiver import ScriptedReceiver
from shared.apikeys import ApiKeyStore
from shared.jobs import JobsRepository
from shared.media import MediaStore
from shared.orchestration import Orchestrator
from shared.queue import WorkerQueue
from shared.tracing import trace_id
from tests.integration.conftest import RunningService, service_fixture
from tests.integration.test_tracing_propagation import new_trace, receive_job
from workflows.generation.encoding import PngEncoder
from workflows.generation.handoff import HandOff
from workflows.generation.heldmessages import Held, HeldMessages

service = service_fixture("sdq-tracing-lambdas", {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "100"})
REPORT = re.compile(r"^REPORT RequestId: \S+\tFunction: (?P<function>\S+)\t.*\tXRAY TraceId: (?P<root>\S+)\t")


def hand_off(service: RunningService, tenant: str, job_id: str) -> tuple[str | None, dict[str, Any]]:
    """The worker's real hand-off of the job's message (the job claimed, an image instead of a generation);
    returns the trace header the message brought and the StartExecution call it made."""
    queue = WorkerQueue(service.boto("sqs"), service.queue_url)
    received = receive_job(queue, job_id)
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    job = repo.claim(job_id, tenant, worker_id="trace-worker", lease_s=120, now=time.time())
    assert received.message is not None
    held = Held(received=received, message=received.message, arrived=time.monotonic(), job=job)
    held.claimed_at = time.monotonic()
    sfn = service.boto("stepfunctions")
    starts: list[dict[str, Any]] = []
    sfn.meta.events.register("provide-client-params.sfn.StartExecution", lambda params, **_: starts.append(params))
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
    return received.trace_header, start


def log_records(service: RunningService) -> list[str]:
    return service.log_path.read_text(errors="replace").splitlines()


def test_every_lambda_of_the_execution_runs_in_the_submits_trace(
    service: RunningService, receiver: ScriptedReceiver
) -> None:
    root, header = new_trace()
    tenant = f"trace-lambdas-{time.monotonic_ns()}"
    key = ApiKeyStore(service.boto("dynamodb"), service.table).create(tenant).plaintext
    with service.http() as http:
        resp = http.post(
            "/v1/jobs",
            headers={"x-api-key": key, "X-Amzn-Trace-Id": header},
            json={"prompt": "a red fox", "width": 256, "height": 256, "callback_url": receiver.url},
        )
    assert resp.status_code == 202, resp.text
    job_id = str(resp.json()["id"])

    message_trace, start = hand_off(service, tenant, job_id)
    assert trace_id(message_trace) == trace_id(start["traceHeader"]) == root
    machine = service.env["SDQ_STATE_MACHINE_ARN"]
    arn = f"{machine.replace(':stateMachine:', ':execution:')}:{start['name']}"
    sfn = service.boto("stepfunctions")
    deadline = time.monotonic() + 60
    while sfn.describe_execution(executionArn=arn)["status"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.3)
    described = sfn.describe_execution(executionArn=arn)
    assert described["status"] == "SUCCEEDED"
    assert trace_id(described["traceHeader"]) == root
    assert [d.answered for d in receiver.by_job(job_id)] == [200]

    lines = log_records(service)
    # The platform's record of each invocation in this trace: Postprocess twice (Postprocess, CountSucceeded),
    # Notify once.
    traced = [m["function"] for line in lines if (m := REPORT.match(line)) and m["root"] == root]
    assert sorted(name.rsplit("-", 1)[-1] for name in traced) == [
        "NotifyFunction",
        "PostprocessFunction",
        "PostprocessFunction",
    ], traced
    # The handler saw it as its own invocation's trace: its Powertools log line says so.
    records = [json.loads(line) for line in lines if line.startswith("{")]
    [attempt] = [r for r in records if r.get("message") == "webhook attempt" and r.get("job_id") == job_id]
    assert attempt["xray_trace_id"] == root
    # Each stage's line names the job and its tenant, so a job can be followed through the logs: Notify's from
    # its invocation's keys (its attempt line names no tenant itself), Postprocess's on success.
    assert attempt["tenant"] == tenant
    [done] = [r for r in records if r.get("message") == "job postprocessed" and r.get("job_id") == job_id]
    assert (done["tenant"], done["outputs"], done["skipped"], done["xray_trace_id"]) == (tenant, 1, False, root)
