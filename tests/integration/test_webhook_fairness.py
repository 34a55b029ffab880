"""Per-tenant fairness of webhook deliveries on the local stack: tenant A, with more finished jobs than Notify's
reserved concurrency and a receiver that takes seconds per webhook, holds at most its bound of deliveries
(SDQ_WEBHOOK_DELIVERIES_PER_TENANT); tenant B's webhook, sent meanwhile, arrives at once instead of waiting for A's
receiver. A's deliveries past the bound wait in the state machine and all arrive, once each, each in one attempt.
The local Lambda runtime throttles Notify at its reserved concurrency as Lambda does (lowered here through the
Lambda API, as an operator's PutFunctionConcurrency would)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from localcloud.receiver import ScriptedReceiver
from shared.contracts import Job, JobStatus
from shared.jobs import JobsRepository
from shared.orchestration import Orchestrator
from tests.integration.conftest import RunningService, service_fixture, store_queued_job, wait_until
from workflows.webhooks import start_notice

BOUND = 2  # A's deliveries at once
NOTIFY_CONCURRENCY = 3  # Notify's reserved concurrency here: fewer than A's jobs
A_JOBS = 4
A_RECEIVER_S = 6.0  # how long A's receiver takes to answer each webhook

service = service_fixture("sdq-webhook-fairness", {"SDQ_WEBHOOK_DELIVERIES_PER_TENANT": str(BOUND)})


class SlowReceiver:
    """Answers 200 after ``delay_s``; records when each request arrived and the most it held at once."""

    def __init__(self, delay_s: float) -> None:
        self.arrivals: list[tuple[float, str]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    receiver.arrivals.append((time.monotonic(), self.headers.get("webhook-id", "")))
                    receiver.in_flight += 1
                    receiver.most_in_flight = max(receiver.most_in_flight, receiver.in_flight)
                time.sleep(delay_s)
                with receiver._lock:
                    receiver.in_flight -= 1
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"


@pytest.fixture
def slow_receiver() -> Iterator[SlowReceiver]:
    r = SlowReceiver(A_RECEIVER_S)
    yield r
    r.server.shutdown()
    r.server.server_close()


def cancelled_job(repo: JobsRepository, tenant: str, url: str) -> Job:
    job = store_queued_job(repo, tenant, callback_url=url)
    repo.transition(job.job_id, JobStatus.CANCELLED, tenant=tenant)
    return job


def test_a_tenant_with_a_slow_receiver_does_not_hold_up_another_tenants_webhook(
    service: RunningService, slow_receiver: SlowReceiver, receiver: ScriptedReceiver
) -> None:
    functions = service.boto("lambda")
    notify = next(f["FunctionName"] for f in functions.list_functions()["Functions"] if "Notify" in f["FunctionName"])
    functions.put_function_concurrency(FunctionName=notify, ReservedConcurrentExecutions=NOTIFY_CONCURRENCY)
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    sfn = service.boto("stepfunctions")
    orchestrator = Orchestrator(sfn, service.env["SDQ_STATE_MACHINE_ARN"])
    a, b = f"fair-a-{time.monotonic_ns()}", f"fair-b-{time.monotonic_ns()}"

    a_jobs = [cancelled_job(repo, a, slow_receiver.url) for _ in range(A_JOBS)]
    # All of A's deliveries at once: their leases race for the tenant's slots (the local cloud's conditional writes
    # are atomic, as DynamoDB's are).
    a_runs = [start_notice(orchestrator, job, "cancel") for job in a_jobs]
    wait_until(lambda: len(slow_receiver.arrivals) >= BOUND, 30, "A's webhooks", poll_s=0.05)
    time.sleep(0.5)  # A's other deliveries have come to Notify by now

    b_job = cancelled_job(repo, b, receiver.url)
    b_sent = time.monotonic()
    b_run = start_notice(orchestrator, b_job, "cancel")
    wait_until(lambda: bool(receiver.by_job(b_job.job_id)), 30, "B's webhook", poll_s=0.05)
    assert time.monotonic() - b_sent < A_RECEIVER_S / 2, "B's webhook waited for A's receiver"

    for arn in [*a_runs, b_run]:
        assert arn is not None
        wait_until(lambda arn=arn: sfn.describe_execution(executionArn=arn)["status"] != "RUNNING", 90, arn)
        events = sfn.get_execution_history(executionArn=arn, maxResults=1000, reverseOrder=True)["events"]
        assert sfn.describe_execution(executionArn=arn)["status"] == "SUCCEEDED", events[:2]
    assert slow_receiver.most_in_flight == BOUND
    assert sorted(webhook_id for _, webhook_id in slow_receiver.arrivals) == sorted(
        f"msg_{job.job_id}_job_cancelled" for job in a_jobs
    )
    for job in a_jobs:  # a wait for a slot is not an attempt
        webhook = repo.get(job.job_id).webhook
        assert webhook is not None
        assert (webhook.state, webhook.attempts) == ("delivered", 1)
