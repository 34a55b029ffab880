"""Tenants, plans and keys as an operator manages them (``sdq admin`` over the local cloud's AWS APIs) and as the
API enforces them (through the local gateway's authorizer, as on AWS)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from cli.client import ApiError, Endpoint, SdqClient
from cli.main import main
from localcloud.gateway import GatewayRules
from localcloud.service import TEMPLATE
from tests.integration.conftest import RunningService

SMALL = {"prompt": "a fox", "width": 512, "height": 512, "num_inference_steps": 30}  # 7.9 megapixel steps


def admin(
    service: RunningService, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> Any:
    """Run ``sdq admin ARGS --json`` against the service's local cloud; its JSON answer, or its exit code."""
    monkeypatch.setenv("SDQ_STATE_DIR", str(service.state_dir))
    capsys.readouterr()
    code = main(["admin", *args, "--json"])
    printed = capsys.readouterr().out.strip()
    return json.loads(printed) if code == 0 else code


def until_refused(client: SdqClient, body: dict[str, Any], timeout_s: float = 4.0) -> ApiError:
    """Submit until the API refuses (a plan change reaches the API once the authorizer's cached answer expires)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.submit(body)
        except ApiError as exc:
            return exc
        assert time.monotonic() < deadline, "the plan change never took effect"
        time.sleep(0.3)


def test_an_operator_creates_a_tenant_and_a_key_lists_and_revokes_it(
    service: RunningService, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = f"acme-{time.monotonic_ns()}"
    # Room for the submits made while the gateway still answers from its cached authorization (2 s here), so the
    # revocation below is what refuses them, not the service's unfinished-job cap of 5.
    created = admin(
        service,
        capsys,
        monkeypatch,
        "tenants",
        "create",
        tenant,
        "--name",
        "Acme",
        "--max-priority",
        "high",
        "--max-unfinished",
        "100",
    )
    assert created["plan"]["max_priority"] == "high"
    assert created["overrides"] == {"max_priority": "high", "max_unfinished_jobs": 100}
    issued = admin(service, capsys, monkeypatch, "keys", "create", "--tenant", tenant, "--name", "ci")
    key, key_id = issued["plaintext"], issued["key_id"]
    client = SdqClient(Endpoint(service.api_url, key))
    assert client.submit({"prompt": "urgent", "priority": "high"})["status"] == "QUEUED"

    listed = admin(service, capsys, monkeypatch, "keys", "list", "--tenant", tenant)["keys"]
    assert [(k["key_id"], k["name"], k["revoked_at"]) for k in listed] == [(key_id, "ci", None)]
    assert key not in json.dumps(listed)
    assert "hash" not in json.dumps(listed)
    shown = admin(service, capsys, monkeypatch, "tenants", "show", tenant)
    assert shown["name"] == "Acme"
    assert [k["key_id"] for k in shown["keys"]] == [key_id]

    revoked = admin(service, capsys, monkeypatch, "keys", "revoke", key_id)
    assert revoked["revoked_at"] is not None
    refused = until_refused(client, {"prompt": "after revocation"})
    assert refused.status == 401
    # Unknown tenants and keys are refused with exit code 4, and make nothing.
    assert admin(service, capsys, monkeypatch, "keys", "create", "--tenant", f"nobody-{time.monotonic_ns()}") == 4
    assert admin(service, capsys, monkeypatch, "keys", "revoke", "key_0000000000000000") == 4
    assert admin(service, capsys, monkeypatch, "tenants", "create", tenant) == 1  # exists already


def test_a_plan_caps_priority_unfinished_jobs_and_daily_gpu_work(
    service: RunningService, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default plan (the settings') allows priority normal at most: a 422 on the field, and nothing queued.
    default = service.new_tenant("default-plan")
    before = service.queue_depth()
    with pytest.raises(ApiError) as info:
        default.submit({"prompt": "me first", "priority": "high"})
    assert info.value.status == 422
    assert info.value.body["error"]["details"][0]["loc"] == ["body", "priority"]
    assert service.queue_depth() == before

    tenant = f"metered-{time.monotonic_ns()}"
    admin(service, capsys, monkeypatch, "tenants", "create", tenant, "--daily-gpu-budget", "10")
    client = SdqClient(
        Endpoint(
            service.api_url, admin(service, capsys, monkeypatch, "keys", "create", "--tenant", tenant)["plaintext"]
        )
    )
    client.submit(SMALL)  # 7.9 of 10 megapixel steps
    depth = service.queue_depth()
    with pytest.raises(ApiError) as over:
        client.submit(SMALL)
    assert over.value.status == 429
    assert 0 < int(over.value.headers["Retry-After"]) <= 86400
    assert "megapixel steps" in over.value.body["error"]["message"]
    assert service.queue_depth() == depth
    assert admin(service, capsys, monkeypatch, "tenants", "show", tenant)["gpu_work_today_mpx_steps"] == 7.9

    # A plan change reaches the API within the authorizer's cache period: an unfinished-job cap of 1.
    admin(
        service,
        capsys,
        monkeypatch,
        "tenants",
        "set-plan",
        tenant,
        "--max-unfinished",
        "1",
        "--reset",
        "daily_gpu_budget_mpx_steps",
    )
    refused = until_refused(client, {"prompt": "small", "width": 256, "height": 256, "num_inference_steps": 2})
    assert refused.status == 429
    assert "unfinished jobs" in refused.body["error"]["message"]


def test_the_key_counts_only_in_x_api_key_as_api_gateways_authorizer_reads_it(service: RunningService) -> None:
    """The playground once sent only ``Authorization: Bearer``, which the gateway never reads: refused locally too,
    with the gateway's own 401 body from template.yaml."""
    gateway_401 = json.loads(GatewayRules.from_template(TEMPLATE).unauthorized_body)
    with service.http() as http:
        bearer = http.get("/v1/jobs", headers={"Authorization": f"Bearer {service.api_key}"})
        header = http.get("/v1/jobs", headers={"x-api-key": service.api_key})
        health = http.get("/health")
    assert (bearer.status_code, bearer.json()) == (401, gateway_401)
    assert header.status_code == 200
    assert health.status_code == 200  # a route the template leaves open needs no key
