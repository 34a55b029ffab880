"""statemachine.asl.json: valid ASL (statelint), and the shape the rest of the system relies on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ASL = json.loads((REPO / "statemachine.asl.json").read_text())
LAMBDA_ERRORS = {
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
}


def test_statelint_passes() -> None:
    statelint = Path(sys.executable).with_name("statelint")
    result = subprocess.run([str(statelint), str(REPO / "statemachine.asl.json")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_task_has_a_timeout_retries_and_a_catch() -> None:
    assert ASL["TimeoutSeconds"] > 0
    tasks = {name: s for name, s in ASL["States"].items() if s["Type"] == "Task"}
    for name, state in tasks.items():
        assert state.get("TimeoutSeconds"), name
        assert state.get("Catch"), name
        if state["Resource"].endswith("lambda:invoke"):
            assert {e for r in state["Retry"] for e in r["ErrorEquals"]} >= LAMBDA_ERRORS, name


def test_postprocess_failures_lead_to_mark_failed_and_webhook_failures_never_do() -> None:
    states = ASL["States"]
    assert states["Postprocess"]["Catch"][0]["Next"] == "TaskFailure"
    assert states["TaskFailure"]["Next"] == "MarkFailed"
    # Clients see a stable code; a task's raw Cause (stack trace, request ids, file paths) is never stored.
    assert states["TaskFailure"]["Parameters"]["code"] == "POSTPROCESS_FAILED"
    assert "Cause" not in json.dumps(states["TaskFailure"]["Parameters"])
    # A failure Postprocess returns as its result fails the job with its own message.
    assert states["Postprocess"]["Next"] == "Postprocessed"
    assert states["Postprocessed"]["Choices"] == [
        {"Variable": "$.postprocess.failure", "IsNull": False, "Next": "PostprocessFailure"}
    ]
    assert states["PostprocessFailure"]["Next"] == "MarkFailed"
    # A success that cannot be recorded is not reported as an image problem.
    [record_catch] = [c for c in states["MarkSucceeded"]["Catch"] if c["ErrorEquals"] == ["States.ALL"]]
    assert record_catch["Next"] == "RecordFailure"
    assert states["RecordFailure"]["Next"] == "MarkFailed"
    assert "success of the job could not be recorded" in states["RecordFailure"]["Parameters"]["message.$"]
    assert "Cause" not in json.dumps(states["RecordFailure"]["Parameters"])
    for notify in ("Notify", "NotifyFailed"):
        assert {c["Next"] for c in states[notify]["Catch"]} == {"WebhookFailed"}
        assert any("WebhookRetryable" in r["ErrorEquals"] for r in states[notify]["Retry"])
    # Terminal writes are conditional, so a cancel that won the race is never overwritten.
    assert "ConditionExpression" in states["MarkSucceeded"]["Parameters"]
    # Success is recorded only from the POSTPROCESSING that Postprocess itself entered, never from RUNNING, and
    # only at the execution's own attempt; a failure only at its own attempt too.
    succeeded = states["MarkSucceeded"]["Parameters"]
    assert "RUNNING" not in {v.get("S") for v in succeeded["ExpressionAttributeValues"].values()}
    # Or its own earlier write (same EnteredTime), when the answer to it was lost and the write is retried.
    assert succeeded["ConditionExpression"] == (
        "(#s = :post OR (#s = :succ AND finished_at = :now)) AND attempt = :attempt"
    )
    assert succeeded["ExpressionAttributeValues"][":now"] == {"S.$": "$$.State.EnteredTime"}
    failed = states["MarkFailed"]["Parameters"]
    # Never from QUEUED: a job handed back to the queue is not failed by a stale worker's report.
    assert failed["ConditionExpression"] == (
        "(#s IN (:run, :post) OR (#s = :failed AND finished_at = :now)) AND attempt = :attempt"
    )
    assert "QUEUED" not in {v.get("S") for v in failed["ExpressionAttributeValues"].values()}
    assert failed["ExpressionAttributeValues"][":now"] == {"S.$": "$$.State.EnteredTime"}
    for terminal in ("MarkSucceeded", "MarkFailed"):
        params = states[terminal]["Parameters"]
        assert params["ConditionExpression"].endswith("AND attempt = :attempt")
        assert params["ExpressionAttributeValues"][":attempt"] == {"N.$": "States.Format('{}', $.attempt)"}
    assert "ConditionExpression" in states["MarkFailed"]["Parameters"]


def test_notify_retries_its_own_lambda_failures_too() -> None:
    # A Notify that timed out or died (Sandbox.Timedout, Lambda.Unknown) is tried again, not given up at once.
    for notify in ("Notify", "NotifyFailed"):
        retried = {e for r in ASL["States"][notify]["Retry"] for e in r["ErrorEquals"]}
        assert retried >= LAMBDA_ERRORS | {"Lambda.Unknown", "Sandbox.Timedout", "WebhookRetryable"}, notify


def test_postprocess_retries_a_lambda_that_died_or_timed_out_and_its_own_timeout() -> None:
    # A Postprocess whose Lambda died (Lambda.Unknown), ran past its timeout (Sandbox.Timedout) or outlived the
    # task's TimeoutSeconds (States.Timeout) is run again before the job is failed: its work is idempotent.
    retried = {e for r in ASL["States"]["Postprocess"]["Retry"] for e in r["ErrorEquals"]}
    assert retried >= LAMBDA_ERRORS | {"Lambda.Unknown", "Sandbox.Timedout", "States.Timeout", "RetryableError"}


def test_terminal_writes_retry_every_transient_error_but_never_a_lost_condition() -> None:
    # A throttled or failing DynamoDB must not leave a job in POSTPROCESSING (the SQS message is gone by then).
    for name in ("MarkSucceeded", "MarkFailed"):
        state = ASL["States"][name]
        first, rest = state["Retry"][0], state["Retry"][1:]
        assert first == {"ErrorEquals": ["DynamoDB.ConditionalCheckFailedException"], "MaxAttempts": 0}, name
        [catch_all] = rest
        assert catch_all["ErrorEquals"] == ["States.ALL"], name
        assert catch_all["MaxAttempts"] >= 8, name
        assert catch_all["BackoffRate"] >= 2, name
        assert catch_all["MaxDelaySeconds"] <= 60, name
        conditional = [c for c in state["Catch"] if c["ErrorEquals"] == ["DynamoDB.ConditionalCheckFailedException"]]
        [refused] = [c["Next"] for c in conditional]
        # MarkFailed's refusal ends the run too, unless it followed RecordFailure (the success may have landed).
        assert refused == "AlreadyFinal" or ASL["States"][refused]["Default"] == "AlreadyFinal", name
