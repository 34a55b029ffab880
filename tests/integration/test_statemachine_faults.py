"""The real ASL under DynamoDB and DNS faults: the local service runs in this process (local cloud, in-process
Lambdas, API on 127.0.0.1), so a fault can be injected where the cloud answers a request.

DynamoDB faults are raised by moto's table backend for one job's writes, as a real error response (400
ThrottlingException, 500 InternalServerError), before or after the write is applied (tests/dynamofaults.py); the
ASL interpreter and the Notify Lambda see them as they would see DynamoDB's. botocore's own retries are cut off here
(``SDQ_AWS_MAX_ATTEMPTS=1``: one try per call), so one fault reaches the code as it would after botocore
gave up.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from aws_xray_sdk import global_sdk_config as xray_sdk_config

from cli.client import Endpoint, SdqClient
from localcloud.receiver import ScriptedReceiver
from localcloud.service import LocalService, LocalServiceConfig, start_local_service
from shared.apikeys import ApiKeyStore
from shared.contracts import Job, JobStatus
from shared.jobs import JobsRepository
from tests.dynamofaults import DynamoFaults, Fault
from tests.integration.executions import ExecutionHarness
from workflows.failedexecution import handle_failed_execution
from workflows.postprocess import Postprocessor
from workflows.webhooks import WEBHOOK_GIVEN_UP


def _clear_caches() -> None:
    from handlers import notify, postprocess
    from shared.settings import get_settings

    get_settings.cache_clear()
    notify.notifier.cache_clear()
    postprocess.postprocessor.cache_clear()


@pytest.fixture(scope="module")
def local() -> Iterator[LocalService]:
    saved = dict(os.environ)
    # The in-process Lambdas' Powertools Tracer turns the X-Ray SDK off process-wide (outside Lambda tracing is
    # disabled); later tests in this process (tests/unit/test_tracing.py) need it as it was.
    xray_was_enabled = xray_sdk_config.sdk_enabled()
    _clear_caches()
    service = start_local_service(
        LocalServiceConfig(api_port=0, with_worker=False, write_state=False, extra_env={"SDQ_AWS_MAX_ATTEMPTS": "1"})
    )
    try:
        yield service
    finally:
        service.stop()
        os.environ.clear()
        os.environ.update(saved)
        _clear_caches()
        xray_sdk_config.set_sdk_enabled(xray_was_enabled)


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> DynamoFaults:
    return DynamoFaults(monkeypatch)


MARK_SUCCEEDED = "SET #s = :succ"
MARK_FAILED = "SET #s = :failed"
RECORD_WEBHOOK = "SET webhook_event"


class Harness(ExecutionHarness):
    def __init__(self, service: LocalService) -> None:
        self.service = service
        env = service.env

        def client(name: str) -> Any:
            return boto3.client(
                name,  # type: ignore[call-overload]
                endpoint_url=env["AWS_ENDPOINT_URL"],
                region_name=env["AWS_DEFAULT_REGION"],
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )

        self.ddb = client("dynamodb")
        self.table = env["SDQ_TABLE_NAME"]
        tenant = f"faults-{time.monotonic_ns()}"
        super().__init__(
            repo=JobsRepository(self.ddb, self.table),
            s3=client("s3"),
            sfn=client("stepfunctions"),
            bucket=env["SDQ_BUCKET"],
            machine=env["SDQ_STATE_MACHINE_ARN"],
            tenant=tenant,
        )
        key = ApiKeyStore(self.ddb, self.table).create(tenant).plaintext
        self.client = SdqClient(Endpoint(service.api_url, key))


@pytest.fixture
def h(local: LocalService) -> Harness:
    return Harness(local)


def test_a_failed_record_of_a_delivered_webhook_is_retried_not_shown_as_failed(
    h: Harness, faults: DynamoFaults, receiver: ScriptedReceiver
) -> None:
    receiver.secret = h.client.webhook_secret()
    job = h.running_job(receiver.url)
    # The receiver answers 200, then recording that attempt on the job fails (DynamoDB 500; no botocore retry).
    fault = faults.add(Fault(job.job_id, RECORD_WEBHOOK, times=1, code="InternalServerError", status=500))
    assert h.wait(h.start(job, h.stage(job))) == "SUCCEEDED"
    assert fault.hits == 1
    view = h.client.get(job.job_id)
    assert view["status"] == "SUCCEEDED"
    assert (view["webhook"] or {}).get("state") == "delivered"
    # Sent again by the retry, with the same webhook-id, so the receiver can drop the duplicate.
    assert [d.answered for d in receiver.deliveries] == [200, 200]
    assert {d.webhook_id for d in receiver.deliveries} == {f"msg_{job.job_id}_job_succeeded"}
    assert all(d.verified for d in receiver.deliveries)


@pytest.fixture
def postprocess_lines() -> Iterator[io.StringIO]:
    """What the postprocess function logs meanwhile, as its log group would hold it (its own JSON formatter)."""
    logger = logging.getLogger("sdq-postprocess")
    lines = io.StringIO()
    copy = logging.StreamHandler(lines)
    copy.setFormatter(logger.handlers[0].formatter)
    logger.addHandler(copy)
    yield lines
    logger.removeHandler(copy)


def test_a_delivery_notify_keeps_failing_is_given_up_once_and_counted(
    h: Harness, faults: DynamoFaults, receiver: ScriptedReceiver, postprocess_lines: io.StringIO
) -> None:
    """Notify fails every try (its table refuses each attempt's record), past the state machine's retries: the
    delivery is recorded failed and the postprocess function logs the one "webhook given up" line that
    WebhookFailuresAlarm counts (Notify never logged a give-up of its own)."""
    receiver.secret = h.client.webhook_secret()
    job = h.running_job(receiver.url)
    faults.add(Fault(job.job_id, RECORD_WEBHOOK, times=1000, code="InternalServerError", status=500))
    arn = h.start(job, h.stage(job))
    assert h.wait(arn) == "SUCCEEDED"
    assert "CountWebhookGivenUp" in h.entered_states(arn)
    view = h.client.get(job.job_id)
    assert (view["status"], view["webhook"]["state"]) == ("SUCCEEDED", "failed")
    lines = [json.loads(text) for text in postprocess_lines.getvalue().splitlines() if WEBHOOK_GIVEN_UP in text]
    assert [(line["message"], line["job_id"], line["tenant"]) for line in lines] == [
        (WEBHOOK_GIVEN_UP, job.job_id, job.tenant)
    ]
    assert lines[0]["error"] == "WebhookRetryable"


def test_a_callback_host_whose_dns_fails_for_a_moment_is_retried_and_delivered(
    h: Harness, receiver: ScriptedReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.secret = h.client.webhook_secret()
    host = f"dns-{time.monotonic_ns()}.localhost"
    real = socket.getaddrinfo
    failures = {"left": 2}

    def getaddrinfo(name: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if name != host:
            return real(name, port, *args, **kwargs)
        if failures["left"] > 0:
            failures["left"] -= 1
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    job = h.running_job(receiver.url.replace("127.0.0.1", host))
    assert h.wait(h.start(job, h.stage(job))) == "SUCCEEDED"
    assert failures["left"] == 0
    view = h.client.get(job.job_id)
    assert view["webhook"]["state"] == "delivered"
    assert view["webhook"]["attempts"] == 3
    [delivery] = receiver.deliveries
    assert delivery.verified


@pytest.mark.parametrize("error", ["Sandbox.Timedout", "Lambda.Unknown"])
def test_a_postprocess_lambda_that_timed_out_or_died_once_is_run_again_and_the_job_succeeds(
    h: Harness, monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    job = h.running_job(None)
    died = type(error, (Exception,), {})  # the Lambda error's name, as the invoke reports it to the ASL
    real = Postprocessor.run
    calls: list[str] = []

    def run(self: Postprocessor, event: Any) -> Any:
        calls.append(event.job_id)
        if event.job_id == job.job_id and calls.count(job.job_id) == 1:
            raise died("the function's first run ended without a result")
        return real(self, event)

    monkeypatch.setattr(Postprocessor, "run", run)
    assert h.wait(h.start(job, h.stage(job))) == "SUCCEEDED"
    assert calls.count(job.job_id) == 2
    view = h.client.get(job.job_id)
    assert (view["status"], view["error"]) == ("SUCCEEDED", None)
    assert len(view["outputs"]) == 1


def test_mark_succeeded_throttled_past_the_old_retries_still_succeeds(
    h: Harness, faults: DynamoFaults, receiver: ScriptedReceiver
) -> None:
    receiver.secret = h.client.webhook_secret()
    job = h.running_job(receiver.url)
    fault = faults.add(Fault(job.job_id, MARK_SUCCEEDED, times=4))
    assert h.wait(h.start(job, h.stage(job))) == "SUCCEEDED"
    assert fault.hits == 4
    view = h.client.get(job.job_id)
    assert (view["status"], view["error"]) == ("SUCCEEDED", None)
    assert len(view["outputs"]) == 1
    assert [d.json()["type"] for d in receiver.deliveries] == ["job.succeeded"]


def test_mark_failed_on_a_failing_table_is_retried_never_left_running(
    h: Harness, faults: DynamoFaults, receiver: ScriptedReceiver
) -> None:
    receiver.secret = h.client.webhook_secret()
    job = h.running_job(receiver.url)
    fault = faults.add(Fault(job.job_id, MARK_FAILED, times=4, code="InternalServerError", status=500))
    arn = h.start(job, [], worker_error={"code": "OUT_OF_MEMORY", "message": "CUDA out of memory"})
    assert h.wait(arn) == "SUCCEEDED"
    assert fault.hits == 4
    view = h.client.get(job.job_id)
    assert view["status"] == "FAILED"
    assert view["error"] == {"code": "OUT_OF_MEMORY", "message": "CUDA out of memory"}
    assert [d.json()["type"] for d in receiver.deliveries] == ["job.failed"]


@pytest.mark.parametrize("path", ["succeeded", "failed"])
def test_a_terminal_write_whose_answer_was_lost_still_sends_the_webhook(
    h: Harness, faults: DynamoFaults, receiver: ScriptedReceiver, path: str
) -> None:
    receiver.secret = h.client.webhook_secret()
    job = h.running_job(receiver.url)
    # The write is applied, then DynamoDB answers 500: the retry finds the job already in the state it wrote.
    expression = MARK_SUCCEEDED if path == "succeeded" else MARK_FAILED
    fault = faults.add(Fault(job.job_id, expression, times=1, code="InternalServerError", status=500, after_write=True))
    if path == "succeeded":
        arn = h.start(job, h.stage(job))
    else:
        arn = h.start(job, [], worker_error={"code": "OUT_OF_MEMORY", "message": "CUDA out of memory"})
    assert h.wait(arn) == "SUCCEEDED"
    assert fault.hits == 1
    view = h.client.get(job.job_id)
    assert view["status"] == path.upper()
    assert [d.json()["type"] for d in receiver.deliveries] == [f"job.{path}"]
    assert view["webhook"]["state"] == "delivered"


def test_a_success_written_with_every_answer_lost_still_sends_its_webhook(
    h: Harness, faults: DynamoFaults, receiver: ScriptedReceiver
) -> None:
    """MarkSucceeded's write lands but DynamoDB answers 500 to it and to every retry (which writes it again):
    RecordFailure's MarkFailed then finds the job SUCCEEDED. Ending there would leave a finished job without
    its webhook; the execution fails instead, and the failed-execution handler sends the job.succeeded webhook."""
    receiver.secret = h.client.webhook_secret()
    job = h.running_job(receiver.url)
    fault = faults.add(
        Fault(job.job_id, MARK_SUCCEEDED, times=1000, code="InternalServerError", status=500, after_write=True)
    )
    arn = h.start(job, h.stage(job))
    assert h.wait(arn) == "FAILED"
    assert fault.hits == 11  # the first try and its 10 retries
    failure = h.sfn.describe_execution(executionArn=arn)
    assert failure["error"] == "SDQ.SuccessUnconfirmed"
    view = h.client.get(job.job_id)
    assert (view["status"], view["error"], len(view["outputs"])) == ("SUCCEEDED", None, 1)
    _until(lambda: len(receiver.deliveries) >= 1, 60, "the job.succeeded webhook")
    [delivery] = receiver.deliveries
    assert delivery.verified
    assert delivery.json()["type"] == "job.succeeded"
    # The receiver answers before Notify records the attempt: until then the view has no webhook record.
    _until(lambda: (h.client.get(job.job_id)["webhook"] or {}).get("state") == "delivered", 30, "the delivery's record")


def _until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_an_execution_stopped_before_it_recorded_a_result_fails_its_job_and_sends_the_webhook(
    h: Harness, faults: DynamoFaults, receiver: ScriptedReceiver
) -> None:
    """An execution that ends outright (failed, timed out, stopped) would leave its job RUNNING forever: the worker
    deleted the message when it started it. The failed-execution handler (an EventBridge rule on the execution's
    status) fails the job and sends its job.failed webhook."""
    receiver.secret = h.client.webhook_secret()
    job = h.running_job(receiver.url)
    # The table keeps refusing MarkFailed, so the execution waits in its retries; then an operator stops it.
    fault = faults.add(Fault(job.job_id, MARK_FAILED, times=1000, code="InternalServerError", status=500))
    arn = h.start(job, [], worker_error={"code": "OUT_OF_MEMORY", "message": "CUDA out of memory"})
    _until(lambda: fault.hits >= 1, 60, "MarkFailed to be tried")
    assert h.client.get(job.job_id)["status"] == "RUNNING"
    h.sfn.stop_execution(executionArn=arn, error="Operator", cause="stopped while the table was down")
    assert h.wait(arn) == "ABORTED"
    _until(lambda: h.client.get(job.job_id)["status"] == "FAILED", 60, "the job to be failed")
    view = h.client.get(job.job_id)
    assert view["error"]["code"] == "WORKFLOW_FAILED"
    assert view["error"]["message"].startswith("The job's workflow was stopped")
    _until(lambda: len(receiver.deliveries) >= 1, 60, "the job.failed webhook")
    [delivery] = receiver.deliveries
    assert delivery.verified
    assert delivery.json()["type"] == "job.failed"
    assert delivery.json()["data"]["error"]["code"] == "WORKFLOW_FAILED"


def test_a_webhook_whose_execution_was_stopped_while_retrying_is_failed_and_can_be_sent_again(
    h: Harness, receiver: ScriptedReceiver
) -> None:
    """An operator stops the execution while the job's webhook waits for its next try: no attempt will ever come,
    so the record does not stay ``retrying``: it is ``failed``, saying why, and a redelivery sends it."""
    receiver.secret = h.client.webhook_secret()
    receiver.default = 500
    job = h.running_job(receiver.url)
    arn = h.start(job, h.stage(job))

    def webhook() -> dict[str, Any]:
        return h.client.get(job.job_id)["webhook"] or {}

    _until(lambda: webhook().get("state") == "retrying", 60, "a retry to be scheduled")
    h.sfn.stop_execution(executionArn=arn, error="Operator", cause="stopped by hand")
    assert h.wait(arn) == "ABORTED"
    _until(lambda: webhook().get("state") == "failed", 60, "the delivery to be recorded failed")
    stopped = webhook()
    assert "execution was stopped" in stopped["last_error"]
    assert stopped.get("next_attempt_at") is None
    assert h.client.get(job.job_id)["status"] == "SUCCEEDED"
    attempts = len(receiver.deliveries)
    receiver.default = 200
    h.client.redeliver(job.job_id)
    _until(lambda: webhook().get("state") == "delivered", 60, "the redelivery")
    assert [d.answered for d in receiver.deliveries[attempts:]] == [200]


def retrying(repo: JobsRepository, job_id: str, event: str) -> None:
    """One attempt of the job's ``event`` webhook answered 503, the next due in an hour."""
    repo.record_webhook_attempt(
        job_id,
        event=event,
        webhook_id=f"msg_{job_id}_{event.replace('.', '_')}",
        outcome="retry",
        status=503,
        error="HTTP 503",
        next_attempt_at=datetime.now(UTC) + timedelta(hours=1),
    )


def test_a_stopped_notice_fails_the_webhook_it_left_retrying_once(h: Harness) -> None:
    """A notice alone (a redelivery, a cancel's webhook) stopped between its tries: its record is ``failed``."""
    job = h.running_job(None)
    h.repo.transition(job.job_id, JobStatus.POSTPROCESSING, tenant=job.tenant)
    h.repo.transition(job.job_id, JobStatus.SUCCEEDED, tenant=job.tenant)
    retrying(h.repo, job.job_id, "job.succeeded")
    notice = {"status": "TIMED_OUT", "name": f"{job.job_id}-redeliver-01M91VNE54H9XGDASE0M8TVYCD"}
    # An execution that ended before the record's last attempt did not make it: that delivery is alive.
    ended_before = {**notice, "stopDate": int((datetime.now(UTC) - timedelta(minutes=5)).timestamp() * 1000)}
    assert handle_failed_execution(h.repo, ended_before) == "not_a_job_run"
    assert h.repo.get(job.job_id).webhook.state == "retrying"  # type: ignore[union-attr]
    ended_now = {**notice, "stopDate": int(datetime.now(UTC).timestamp() * 1000) + 1000}
    assert handle_failed_execution(h.repo, ended_now) == "delivery_stopped"
    webhook = h.repo.get(job.job_id).webhook
    assert webhook is not None
    assert (webhook.state, webhook.attempts, webhook.next_attempt_at) == ("failed", 1, None)
    assert webhook.last_error is not None
    assert "execution timed out" in webhook.last_error
    assert handle_failed_execution(h.repo, notice) == "not_a_job_run"  # nothing left to stop
    assert h.repo.get(job.job_id).status == JobStatus.SUCCEEDED


def test_a_failed_run_leaves_alone_the_webhook_of_a_cancel_that_overtook_it(h: Harness) -> None:
    """The client cancelled the job while its run was failing: the retrying webhook is the cancel notice's, alive."""
    job = h.running_job(None)
    h.repo.transition(job.job_id, JobStatus.CANCELLED, tenant=job.tenant)
    retrying(h.repo, job.job_id, "job.cancelled")
    run = {"job_id": job.job_id, "tenant": job.tenant, "attempt": job.attempt}
    detail = {"status": "FAILED", "name": f"{job.job_id}-{job.attempt}", "input": json.dumps(run)}
    assert handle_failed_execution(h.repo, detail) == "already_moved_on"
    assert h.repo.get(job.job_id).webhook.state == "retrying"  # type: ignore[union-attr]


def test_a_failed_execution_of_a_notice_of_another_attempt_or_a_finished_run_changes_nothing(h: Harness) -> None:
    job = h.running_job(None)

    def detail(status: str = "FAILED", **payload: Any) -> dict[str, Any]:
        body = {"job_id": job.job_id, "tenant": job.tenant, "attempt": job.attempt, **payload}
        return {"status": status, "executionArn": "arn:x", "error": "States.Runtime", "input": json.dumps(body)}

    notices: list[Job] = []
    assert handle_failed_execution(h.repo, detail(notify_only=True), notify=notices.append) == "not_a_job_run"
    assert handle_failed_execution(h.repo, detail("SUCCEEDED"), notify=notices.append) == "not_a_job_run"
    assert handle_failed_execution(h.repo, {"status": "FAILED", "input": "not json"}) == "not_a_job_run"
    # A late event for an earlier attempt: the job was claimed again since; its new run is not this one's.
    earlier = detail(attempt=job.attempt - 1)
    assert handle_failed_execution(h.repo, earlier, notify=notices.append) == "already_moved_on"
    assert h.repo.get(job.job_id).status == JobStatus.RUNNING
    assert notices == []
    # The current attempt's: failed once, and a retried event only starts the (idempotent) notice again.
    assert handle_failed_execution(h.repo, detail(), notify=notices.append) == "failed"
    assert handle_failed_execution(h.repo, detail(), notify=notices.append) == "already_moved_on"
    failed = h.repo.get(job.job_id)
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.code == "WORKFLOW_FAILED"
    assert failed.error.message == "The job's workflow failed (States.Runtime) before it recorded a result."
    assert [n.job_id for n in notices] == [job.job_id, job.job_id]


def test_a_failed_execution_without_its_input_is_known_by_its_name(h: Harness) -> None:
    """EventBridge leaves out an input near the size limit; the job run is then read from the execution's name."""
    job = h.running_job(None)
    detail = {"status": "TIMED_OUT", "name": f"{job.job_id}-{job.attempt}", "inputDetails": {"included": False}}
    assert handle_failed_execution(h.repo, detail) == "failed"
    failed = h.repo.get(job.job_id)
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.message == "The job's workflow timed out before it recorded a result."
    notice = {"status": "FAILED", "name": f"{job.job_id}-cancelled-01M91VNE54H9XGDASE0M8TVYCD"}
    assert handle_failed_execution(h.repo, notice) == "not_a_job_run"


def test_a_job_its_failed_execution_finished_without_a_webhook_gets_it(h: Harness, receiver: ScriptedReceiver) -> None:
    """The execution's terminal write landed, then the execution failed before its Notify state (the table
    refused the retries that would have found the write): the job is SUCCEEDED with no webhook recorded, and the
    failed-execution handler sends it, once."""
    job = h.running_job(receiver.url)
    repo = h.repo
    repo.transition(job.job_id, JobStatus.POSTPROCESSING, tenant=job.tenant)
    finished = repo.transition(job.job_id, JobStatus.SUCCEEDED, tenant=job.tenant)
    assert finished.webhook is None
    detail = {
        "status": "FAILED",
        "name": f"{job.job_id}-{job.attempt}",
        "input": json.dumps({"job_id": job.job_id, "tenant": job.tenant, "attempt": job.attempt}),
    }
    notices: list[Job] = []
    assert handle_failed_execution(repo, detail, notify=notices.append) == "already_moved_on"
    assert [(n.job_id, n.status) for n in notices] == [(job.job_id, JobStatus.SUCCEEDED)]
    # Another attempt's event gets nothing more.
    earlier = {**detail, "input": json.dumps({"job_id": job.job_id, "tenant": job.tenant, "attempt": 0})}
    assert handle_failed_execution(repo, earlier, notify=notices.append) == "already_moved_on"
    assert len(notices) == 1
