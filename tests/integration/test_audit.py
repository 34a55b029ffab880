"""The audit log through the running service: every state-changing call recorded as answered, read back by its
tenant (``GET /v1/audit``) and by the operator (``sdq admin audit`` over boto3), nothing secret in it, and a call
that still succeeds when its entry cannot be written."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from typing import Any

import pytest
from sdq_client import ApiError

from cli.auditcommands import add_audit_parser
from cli.client import Endpoint, SdqClient
from localcloud.provision import load_sam_template
from shared.apikeys import KEY_PREFIX, ApiKeyStore, hash_key
from tests.integration.conftest import REPO, RunningService

USER_AGENT = "audit-test/1.0 (+https://example.test/agent)"
REQUEST: dict[str, Any] = {"prompt": "a lighthouse at dusk", "width": 256, "height": 256, "num_inference_steps": 2}


class Caller:
    """A fresh tenant with a key of its own (its name carries a clock reading, so tests share the module's
    service), calling the API with a User-Agent of its own."""

    def __init__(self, service: RunningService, name: str) -> None:
        self.tenant = f"{name}-{time.monotonic_ns()}"
        self.key = ApiKeyStore(service.boto("dynamodb"), service.table).create(self.tenant)
        self._client = SdqClient(Endpoint(service.api_url, self.key.plaintext))

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """The answer's status and JSON body, refusals included."""
        try:
            resp = self._client.api.request(method, path, headers={"User-Agent": USER_AGENT}, **kwargs)
        except ApiError as exc:
            return exc.status, exc.body
        return resp.status_code, resp.json()

    def audit_pages(self, limit: int) -> list[dict[str, Any]]:
        """Every entry of ``GET /v1/audit``, page by page."""
        seen: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
            status, body = self.call("GET", "/v1/audit", params=params)
            assert status == 200, body
            assert len(body["entries"]) <= limit
            seen += body["entries"]
            cursor = body["next_cursor"]
            if cursor is None:
                return seen


def _operator(service: RunningService, monkeypatch: pytest.MonkeyPatch, *argv: str) -> list[dict[str, Any]]:
    """``sdq admin audit --json ...`` against the running local stack, found as the command finds it (the
    ``.sdq/local.json`` that ``sdq up`` wrote), over boto3."""
    parser = argparse.ArgumentParser(prog="sdq admin")
    add_audit_parser(parser.add_subparsers(dest="admin", required=True))
    args = parser.parse_args(["audit", "--json", *argv])
    monkeypatch.setenv("SDQ_STATE_DIR", str(service.state_dir))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.func(args) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_every_state_changing_call_is_recorded_for_its_tenant_as_answered(
    service: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    me, other = Caller(service, "audited"), Caller(service, "bystander")

    status, job = me.call("POST", "/v1/jobs", json=REQUEST)
    assert status == 202
    job_id = job["id"]
    assert me.call("POST", f"/v1/jobs/{job_id}/cancel")[0] == 200
    assert me.call("POST", f"/v1/jobs/{job_id}/cancel")[0] == 409  # already CANCELLED
    assert me.call("POST", f"/v1/jobs/{job_id}/webhook/redeliver")[0] == 409  # no callback_url
    assert me.call("POST", "/v1/webhook-secret/rotate")[0] == 200
    assert me.call("POST", "/v1/uploads")[0] == 201
    assert me.call("POST", "/v1/jobs", json={**REQUEST, "width": 7})[0] == 422
    assert me.call("POST", "/v1/jobs/not-a-job/cancel")[0] == 404
    # Reads change nothing and are not recorded.
    assert me.call("GET", f"/v1/jobs/{job_id}")[0] == 200
    assert me.call("GET", "/v1/jobs")[0] == 200
    # Another tenant's call is its own.
    assert other.call("POST", f"/v1/jobs/{job_id}/cancel")[0] == 404

    entries = me.audit_pages(limit=100)
    assert [(e["action"], e["target"], e["outcome"], e["status"], e["error_code"]) for e in entries] == [
        ("job.cancel", None, "refused", 404, "not_found"),
        ("job.submit", None, "refused", 422, "validation_error"),
        ("upload.create", None, "accepted", 201, None),
        ("webhook_secret.rotate", None, "accepted", 200, None),
        ("webhook.redeliver", job_id, "refused", 409, "conflict"),
        ("job.cancel", job_id, "refused", 409, "invalid_transition"),
        ("job.cancel", job_id, "accepted", 200, None),
        ("job.submit", job_id, "accepted", 202, None),
    ]
    for e in entries:
        assert e["tenant"] == me.tenant
        assert e["source_ip"] == "127.0.0.1"
        assert e["user_agent"] == USER_AGENT
        assert e["key_id"] == me.key.key_id
        assert "operator" not in e  # the operator's AWS identity stays with the operator
    times = [e["at"] for e in entries]
    assert times == sorted(times, reverse=True)

    # Page by page, the same entries in the same order; a made-up or another tenant's cursor is a 400.
    assert me.audit_pages(limit=2) == entries
    assert me.call("GET", "/v1/audit", params={"cursor": "garbage"})[0] == 400
    theirs = other.audit_pages(limit=100)
    assert [(e["tenant"], e["target"], e["status"]) for e in theirs] == [(other.tenant, job_id, 404)]
    mine = me.call("GET", "/v1/audit", params={"limit": 1})[1]["next_cursor"]
    assert other.call("GET", "/v1/audit", params={"cursor": mine})[0] == 400

    # The operator reads the same entries over the AWS APIs, one tenant's or everyone's.
    assert [e["id"] for e in _operator(service, monkeypatch, "--tenant", me.tenant)] == [e["id"] for e in entries]
    everyone = _operator(service, monkeypatch, "--since", "10m", "--limit", "500")
    assert {me.tenant, other.tenant} <= {e["tenant"] for e in everyone}
    assert [e["at"] for e in everyone] == sorted((e["at"] for e in everyone), reverse=True)
    assert len(_operator(service, monkeypatch, "--limit", "3")) == 3


def test_no_other_spelling_of_a_state_changing_route_gets_past_the_audit(service: RunningService) -> None:
    """A trailing slash or an encoded one is no route: 404, nothing done, and so nothing to record."""
    me = Caller(service, "slashed")
    status, job = me.call("POST", "/v1/jobs", json=REQUEST)
    assert status == 202
    secret = me.call("GET", "/v1/webhook-secret")[1]["secret"]
    items, depth = service.table_items(), service.queue_depth()
    for path in ["/v1/jobs/", "/v1/jobs%2F", f"/v1/jobs/{job['id']}/cancel/", "/v1/webhook-secret/rotate/"]:
        status, body = me.call("POST", path, json=REQUEST)
        assert status == 404, (path, body)
        assert body["error"]["code"] == "not_found"
    assert (service.table_items(), service.queue_depth()) == (items, depth)
    assert me.call("GET", f"/v1/jobs/{job['id']}")[1]["status"] == "QUEUED"
    assert me.call("GET", "/v1/webhook-secret")[1]["secret"] == secret
    assert [e["action"] for e in me.audit_pages(limit=100)] == ["job.submit"]
    # A route that exists for another method is 405 with its methods, the events stream's included.
    status, body = me.call("POST", f"/v1/jobs/{job['id']}/events")
    assert (status, body["error"]["code"]) == (405, "method_not_allowed")


def test_nothing_secret_is_recorded(service: RunningService) -> None:
    me = Caller(service, "secretive")
    first = me.call("GET", "/v1/webhook-secret")[1]["secret"]
    rotated = me.call("POST", "/v1/webhook-secret/rotate")[1]["secret"]
    callback = "http://127.0.0.1:9/hook?token=callback-token-s3cr3t"
    status, job = me.call("POST", "/v1/jobs", json={**REQUEST, "callback_url": callback, "metadata": {"o": "m-s3cr3t"}})
    assert status == 202
    assert me.call("POST", f"/v1/jobs/{job['id']}/cancel")[0] == 200

    items = service.boto("dynamodb").scan(TableName=service.env["SDQ_AUDIT_TABLE_NAME"])["Items"]
    stored = json.dumps([i for i in items if i["tenant"]["S"] == me.tenant])
    served = json.dumps(me.audit_pages(limit=100))
    assert stored.count('"job.') == 2
    assert served.count('"job.') == 2
    for text in (stored, served):
        # No API key (every key starts sdq_) nor its hash, no webhook secret, nothing of the request.
        secrets = (me.key.plaintext, hash_key(me.key.plaintext), KEY_PREFIX, service.api_key, first, rotated)
        for secret in (*secrets, "s3cr3t", REQUEST["prompt"]):
            assert secret not in text
        assert "://" not in text.replace(USER_AGENT, "")  # no URL: presigned, callback or any other


def test_a_call_whose_entry_cannot_be_written_still_succeeds(service: RunningService) -> None:
    """The audit table gone (an outage): the submission is answered and its job kept; the entry is logged."""
    me = Caller(service, "outage")
    ddb = service.boto("dynamodb")
    table = service.env["SDQ_AUDIT_TABLE_NAME"]
    props = load_sam_template(REPO / "template.yaml")["Resources"]["AuditTable"]["Properties"]
    ddb.delete_table(TableName=table)
    try:
        status, job = me.call("POST", "/v1/jobs", json=REQUEST)
        assert status == 202
        assert me.call("GET", f"/v1/jobs/{job['id']}")[1]["status"] == "QUEUED"
        deadline = time.monotonic() + 10
        while "audit entry not recorded" not in service.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "audit entry not recorded" in service.log_path.read_text()
    finally:
        ddb.create_table(
            TableName=table,
            KeySchema=props["KeySchema"],
            AttributeDefinitions=props["AttributeDefinitions"],
            GlobalSecondaryIndexes=props["GlobalSecondaryIndexes"],
            BillingMode="PAY_PER_REQUEST",
        )
