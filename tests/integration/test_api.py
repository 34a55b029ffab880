"""The REST API over real HTTP against the local cloud: what a client sees, and what lands in DynamoDB/SQS."""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest

from cli.client import ApiError
from shared.apikeys import ApiKeyStore
from shared.settings import Settings
from tests.integration.conftest import RunningService


def queued_job_ids(service: RunningService) -> set[str]:
    """Job ids of the messages on the jobs queue (received briefly, then visible again)."""
    sqs = service.boto("sqs")
    seen: set[str] = set()
    handles = []
    while True:
        # WaitTimeSeconds=0: the queue long-polls 20 s by default, which the last, empty receive would wait out.
        msgs = sqs.receive_message(
            QueueUrl=service.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=30, WaitTimeSeconds=0
        ).get("Messages", [])
        if not msgs:
            break
        for m in msgs:
            seen.add(json.loads(m["Body"])["job_id"])
            handles.append(m["ReceiptHandle"])
    for h in handles:
        sqs.change_message_visibility(QueueUrl=service.queue_url, ReceiptHandle=h, VisibilityTimeout=0)
    return seen


def stored_job(service: RunningService, job_id: str) -> dict[str, Any] | None:
    item = service.boto("dynamodb").get_item(TableName=service.table, Key={"pk": {"S": f"JOB#{job_id}"}}).get("Item")
    return item


def test_submit_returns_202_with_location_and_queues_one_message(service: RunningService) -> None:
    with service.http() as http:
        resp = http.post(
            "/v1/jobs",
            json={"prompt": "a red fox", "seed": 7, "metadata": {"order": "42"}},
            headers={"x-api-key": service.api_key},
        )
    assert resp.status_code == 202
    job = resp.json()
    assert resp.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "QUEUED"
    assert job["request"]["seed"] == 7
    assert job["request"]["model"] == "tiny"
    assert job["metadata"] == {"order": "42"}
    assert "noise" in job["model_note"]
    assert job["id"] in queued_job_ids(service)
    item = stored_job(service, job["id"])
    assert item is not None
    assert item["status"]["S"] == "QUEUED"
    assert int(item["expires_at"]["N"]) > 0

    with service.http() as http:
        got = http.get(f"/v1/jobs/{job['id']}", headers={"x-api-key": service.api_key})
    assert got.status_code == 200
    assert got.json()["status"] == "QUEUED"
    assert got.json()["progress"] == {"step": 0, "total": 0, "preview_url": None}


def test_seed_is_drawn_and_stored_when_absent(service: RunningService) -> None:
    client = service.new_tenant("seed")
    job = client.submit({"prompt": "a red fox"})
    assert isinstance(job["request"]["seed"], int)
    assert client.get(job["id"])["request"]["seed"] == job["request"]["seed"]
    others = [client.submit({"prompt": "a red fox"}) for _ in range(3)]
    seeds = {job["request"]["seed"], *(other["request"]["seed"] for other in others)}
    assert len(seeds) > 1  # each request draws its own: the same prompt is not the same image
    assert all(client.get(other["id"])["request"]["seed"] == other["request"]["seed"] for other in others)


def test_idempotent_replay_returns_same_job_and_one_message(service: RunningService) -> None:
    client = service.new_tenant("idem")
    before = service.queue_depth()
    first = client.submit({"prompt": "idempotent fox"}, idempotency_key="order-1")
    again = client.submit({"prompt": "idempotent fox"}, idempotency_key="order-1")
    assert again["id"] == first["id"]
    assert service.queue_depth() == before + 1
    with pytest.raises(ApiError) as info:
        client.submit({"prompt": "another fox"}, idempotency_key="order-1")
    assert info.value.status == 409
    assert info.value.code == "idempotency_key_reused"
    assert service.queue_depth() == before + 1


def test_a_field_left_out_and_the_same_field_sent_are_different_bodies_for_a_key(service: RunningService) -> None:
    """A size, steps or guidance left out is the deployment's (the model's size, the operator's defaults): sending
    the value that is today's default is another request, which the key cannot name too."""
    client = service.new_tenant("idem-defaults")
    first = client.submit({"prompt": "a default fox"}, idempotency_key="d-1")
    for sent in (
        {"width": first["request"]["width"]},
        {"num_inference_steps": first["request"]["num_inference_steps"]},
    ):
        with pytest.raises(ApiError) as info:
            client.submit({"prompt": "a default fox", **sent}, idempotency_key="d-1")
        assert info.value.code == "idempotency_key_reused", sent
    assert client.submit({"prompt": "a default fox"}, idempotency_key="d-1")["id"] == first["id"]


def test_concurrent_replays_make_one_job(service: RunningService) -> None:
    # A replay that comes while the first request still sends its job is 409 idempotency_key_in_use: the typed
    # client tries it again, as it would in use.
    client = service.new_tenant("idem-race").api
    before = service.queue_depth()
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: client.submit({"prompt": "race"}, idempotency_key="k").id, range(16)))
    assert len(ids) == 1
    assert service.queue_depth() == before + 1


def test_other_tenants_job_and_unknown_ids_are_indistinguishable_404s(service: RunningService) -> None:
    alice, bob = service.new_tenant("alice"), service.new_tenant("bob")
    job = alice.submit({"prompt": "alice's fox"})
    unknown = "01" + "Z" * 24
    bodies = []
    for client, job_id in [(bob, job["id"]), (bob, unknown), (bob, "not-a-ulid"), (alice, unknown)]:
        for call in (client.get, client.cancel):
            with pytest.raises(ApiError) as info:
                call(job_id)
            assert info.value.status == 404
            bodies.append(info.value.body["error"]["code"])
    assert set(bodies) == {"not_found"}
    assert alice.get(job["id"])["status"] == "QUEUED"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sdq_wrong"}, {"x-api-key": "nope"}, {"Authorization": "Basic abc"}],
)
def test_missing_or_wrong_key_is_401_without_detail(service: RunningService, headers: dict[str, str]) -> None:
    with service.http() as http:
        resp = http.post("/v1/jobs", json={"prompt": "x"}, headers=headers)
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "unauthorized"


def test_unfinished_job_cap_gives_429_with_retry_after_and_enqueues_nothing(service: RunningService) -> None:
    client = service.new_tenant("cap")
    for i in range(5):  # the fixture's cap
        client.submit({"prompt": f"fox {i}"})
    before = service.queue_depth()
    with pytest.raises(ApiError) as info:
        client.submit({"prompt": "one too many"})
    assert info.value.status == 429
    assert int(info.value.headers["Retry-After"]) > 0
    assert service.queue_depth() == before
    # Finishing one (here: cancelling) frees a slot.
    first = client.list(limit=1)["jobs"][0]
    client.cancel(first["id"])
    assert client.submit({"prompt": "fits again"})["status"] == "QUEUED"


def test_cancel_then_cancel_again_is_409(service: RunningService) -> None:
    client = service.new_tenant("cancel")
    job = client.submit({"prompt": "to cancel"})
    cancelled = client.cancel(job["id"])
    assert cancelled["status"] == "CANCELLED"
    assert cancelled["finished_at"] is not None
    with pytest.raises(ApiError) as info:
        client.cancel(job["id"])
    assert info.value.status == 409
    assert client.get(job["id"])["status"] == "CANCELLED"


def test_a_cancels_webhook_execution_is_named_after_the_job_alone(service: RunningService) -> None:
    """CANCELLED is final: the cancel's notice is started under one name, so a start retried after its first
    answer was lost finds that execution (ExecutionAlreadyExists) instead of sending the webhook again."""
    client = service.new_tenant("cancel-name")
    job = client.submit({"prompt": "to cancel", "callback_url": "https://hooks.example.com/cancel"})
    client.cancel(job["id"])
    sfn = service.boto("stepfunctions")
    names = [
        e["name"]
        for e in sfn.list_executions(stateMachineArn=service.env["SDQ_STATE_MACHINE_ARN"])["executions"]
        if e["name"].startswith(job["id"])
    ]
    assert names == [f"{job['id']}-cancelled"]


@contextmanager
def state_machine_missing(service: RunningService) -> Iterator[None]:
    """StartExecution fails (StateMachineDoesNotExist) inside the block; the machine is put back after it,
    under the same name and so the same ARN."""
    sfn = service.boto("stepfunctions")
    arn = service.env["SDQ_STATE_MACHINE_ARN"]
    machine = sfn.describe_state_machine(stateMachineArn=arn)
    sfn.delete_state_machine(stateMachineArn=arn)
    try:
        yield
    finally:
        sfn.create_state_machine(
            name=machine["name"], definition=machine["definition"], roleArn=machine["roleArn"], type=machine["type"]
        )
        assert sfn.describe_state_machine(stateMachineArn=arn)["stateMachineArn"] == arn


def test_cancel_is_200_with_the_cancelled_job_when_its_webhook_cannot_be_started(service: RunningService) -> None:
    client = service.new_tenant("cancel-notice")
    job = client.submit({"prompt": "to cancel", "callback_url": "https://hooks.example.com/cancel"})
    with state_machine_missing(service):
        cancelled = client.cancel(job["id"])
    assert cancelled["id"] == job["id"]
    assert cancelled["status"] == "CANCELLED"
    assert client.get(job["id"])["status"] == "CANCELLED"
    # The lost notice is an error in the API's log, naming the job (the webhook can be redelivered).
    errors = [
        json.loads(line)
        for line in service.log_path.read_text().splitlines()
        if line.startswith("{") and "webhook notice not started" in line
    ]
    assert any(e["job_id"] == job["id"] and e["level"] == "ERROR" and e["attempts"] == 3 for e in errors)


def test_list_is_newest_first_with_cursor_pagination_and_status_filter(service: RunningService) -> None:
    client = service.new_tenant("list")
    ids = [client.submit({"prompt": f"fox {i}"})["id"] for i in range(5)]
    client.cancel(ids[1])
    seen: list[str] = []
    cursor = None
    while True:
        page = client.list(limit=2, cursor=cursor)
        assert len(page["jobs"]) <= 2
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    cancelled = client.list(status="CANCELLED")["jobs"]
    assert [j["id"] for j in cancelled] == [ids[1]]
    queued = client.list(status="QUEUED")["jobs"]
    assert [j["id"] for j in queued] == [i for i in reversed(ids) if i != ids[1]]


def test_a_cursor_cannot_list_another_tenants_jobs(service: RunningService) -> None:
    alice, bob = service.new_tenant("cur-a"), service.new_tenant("cur-b")
    for i in range(3):
        alice.submit({"prompt": f"a{i}"})
    cursor = alice.list(limit=1)["next_cursor"]
    with pytest.raises(ApiError) as info:
        bob.list(limit=1, cursor=cursor)
    assert info.value.status == 400
    with pytest.raises(ApiError) as info:
        bob.list(cursor="%%%garbage")
    assert info.value.status == 400


def _cursor(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_a_cursor_from_another_listing_or_with_the_wrong_keys_is_400(service: RunningService) -> None:
    tenant, client = service.new_named_tenant("cur-keys")
    ids = [client.submit({"prompt": f"k{i}"})["id"] for i in range(3)]
    unfiltered = client.list(limit=1)["next_cursor"]
    queued = client.list(status="QUEUED", limit=1)["next_cursor"]
    assert unfiltered
    assert queued
    bad = [
        ("QUEUED", unfiltered),  # made by the unfiltered listing (by_tenant keys)
        (None, queued),  # made by a filtered listing (by_tenant_status keys)
        ("CANCELLED", queued),  # made for another status
        (None, _cursor({})),
        (None, _cursor({"pk": "x"})),
        (None, _cursor({"pk": f"JOB#{ids[1]}", "tenant": tenant, "job_id": ids[1], "extra": "x"})),
        (None, _cursor({"pk": "JOB#other", "tenant": tenant, "job_id": ids[1]})),
        ("QUEUED", _cursor({"pk": f"JOB#{ids[1]}", "tenant_status": tenant, "job_id": ids[1]})),
    ]
    for status, cursor in bad:
        with pytest.raises(ApiError) as info:
            client.list(status=status, limit=1, cursor=cursor)
        assert info.value.status == 400, (status, cursor, info.value.body)
        assert info.value.code == "bad_request"
    # Each cursor still continues its own listing.
    assert [j["id"] for j in client.list(limit=1, cursor=unfiltered)["jobs"]] == [ids[1]]
    assert [j["id"] for j in client.list(status="QUEUED", limit=1, cursor=queued)["jobs"]] == [ids[1]]


INVALID_BODIES: list[tuple[str, Any, int, str]] = [
    ("100k prompt", {"prompt": "x" * 100_000}, 422, "prompt"),
    ("body over the cap", {"prompt": "x", "negative_prompt": "y" * 300_000}, 413, ""),
    ("long prompt", {"prompt": "x" * 2001}, 422, "prompt"),
    ("blank prompt", {"prompt": "   "}, 422, "prompt"),
    ("width 513", {"prompt": "x", "width": 513}, 422, "width"),
    ("steps 0", {"prompt": "x", "num_inference_steps": 0}, 422, "num_inference_steps"),
    ("unknown field", {"prompt": "x", "colour": "red"}, 422, "colour"),
    ("wrong type", {"prompt": "x", "width": "512"}, 422, "width"),
    ("wrong type seed", {"prompt": "x", "seed": 1.5}, 422, "seed"),
    ("metadata service callback", {"prompt": "x", "callback_url": "https://169.254.169.254/"}, 422, "callback_url"),
    # Checks across fields name the one to change, like a field's own check.
    ("strength without an image", {"prompt": "x", "strength": 0.5}, 422, "strength"),
    ("mask without an image", {"prompt": "x", "mask": "01KB0000000000000000000000"}, 422, "mask"),
    ("events without a callback", {"prompt": "x", "webhook_events": ["completed"]}, 422, "webhook_events"),
    ("not an object", [1, 2, 3], 422, ""),
]


@pytest.mark.parametrize(("name", "body", "status", "field"), INVALID_BODIES, ids=[b[0] for b in INVALID_BODIES])
def test_invalid_bodies_are_rejected_and_change_nothing(
    service: RunningService, name: str, body: Any, status: int, field: str
) -> None:
    items, depth = service.table_keys(), service.queue_depth()
    with service.http() as http:
        resp = http.post("/v1/jobs", json=body, headers={"x-api-key": service.api_key})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"code", "message", "details"}
    if field:
        assert any(field in d["loc"] for d in error["details"]), error
    assert service.table_keys() == items
    assert service.queue_depth() == depth


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"", "application/json", 422),
        (b"prompt=fox", "application/x-www-form-urlencoded", 415),
        (b'{"prompt": "fox"}', "text/plain", 415),
        (b"\xff\xfe\x00garbage", "application/json", 400),
        (b"[" * 5000 + b"]" * 5000, "application/json", 400),
        (b'{"prompt": "fox", "seed": ' + b"7" * 5000 + b"}", "application/json", 400),
    ],
    ids=["non-json", "empty", "form", "text-plain", "invalid-utf8", "nesting-bomb", "5000-digit-integer"],
)
def test_malformed_requests(service: RunningService, content: bytes, content_type: str, status: int) -> None:
    items, depth = service.table_items(), service.queue_depth()
    with service.http() as http:
        resp = http.post(
            "/v1/jobs",
            content=content,
            headers={"x-api-key": service.api_key, "Content-Type": content_type},
        )
    assert resp.status_code == status, resp.text
    assert "error" in resp.json()
    assert service.table_items() == items
    assert service.queue_depth() == depth


def test_health_openapi_and_docs(service: RunningService) -> None:
    with service.http() as http:
        assert http.get("/health").json() == {"status": "ok"}
        spec = http.get("/openapi.json").json()
        docs = http.get("/docs")
        missing = http.get("/v2/nothing")
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel"} <= set(spec["paths"])
    schema = spec["components"]["schemas"]["GenerationRequest"]
    assert schema["properties"]["width"]["maximum"] == 1024
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_cli_submit_and_status(service: RunningService, tmp_path: Any) -> None:
    import subprocess
    import sys

    from tests.integration.conftest import REPO

    env = {"SDQ_STATE_DIR": str(service.state_dir), "PATH": "/usr/bin:/bin"}
    submitted = subprocess.run(
        [sys.executable, "-m", "cli.main", "submit", "a red fox"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    job_id = submitted.stdout.strip().splitlines()[-1]
    status = subprocess.run(
        [sys.executable, "-m", "cli.main", "status", job_id],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(status.stdout)["status"] == "QUEUED"


def test_without_a_key_even_an_invalid_body_is_401(service: RunningService) -> None:
    with service.http() as http:
        invalid = http.post("/v1/jobs", json={"prompt": "", "width": 3})
        not_json = http.post("/v1/jobs", content=b"{oops", headers={"Content-Type": "application/json"})
    assert invalid.status_code == not_json.status_code == 401
    assert invalid.json() == not_json.json()


def test_rotating_the_webhook_secret_says_until_when_the_replaced_one_still_signs(service: RunningService) -> None:
    tenant = f"rotate-{time.monotonic_ns()}"
    auth = {"x-api-key": ApiKeyStore(service.boto("dynamodb"), service.table).create(tenant).plaintext}
    with service.http() as http:
        old = http.get("/v1/webhook-secret", headers=auth).json()
        before = time.time()
        rotated = http.post("/v1/webhook-secret/rotate", headers=auth)
        after = time.time()
        current = http.get("/v1/webhook-secret", headers=auth).json()
        spec = http.get("/openapi.json").json()
    assert rotated.status_code == 200
    body = rotated.json()
    assert set(body) == {"secret", "previous_secret_valid_until"}
    assert body["secret"] != old["secret"]
    assert current == {"secret": body["secret"]}  # GET keeps answering with the current secret alone
    until = datetime.fromisoformat(body["previous_secret_valid_until"])
    assert until.utcoffset() == timedelta(0)
    # The setting's default: the stack sets no SDQ_WEBHOOK_SECRET_OVERLAP_S.
    overlap = Settings.model_fields["webhook_secret_overlap_s"].default
    assert math.ceil(before) + overlap <= until.timestamp() <= math.ceil(after) + overlap

    # The schema says so: the rotation's answer has the time (a date-time, or null), the secret's does not.
    schemas = spec["components"]["schemas"]
    ok = spec["paths"]["/v1/webhook-secret/rotate"]["post"]["responses"]["200"]["content"]["application/json"]
    rotation_schema = schemas[ok["schema"]["$ref"].rsplit("/", 1)[-1]]
    field = rotation_schema["properties"]["previous_secret_valid_until"]
    assert {"type": "string", "format": "date-time"} in field["anyOf"]
    assert {"type": "null"} in field["anyOf"]
    assert "previous_secret_valid_until" in rotation_schema["required"]
    assert set(schemas["WebhookSecret"]["properties"]) == {"secret"}


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"prompt": "x", "guidance_scale": "7"}, ["body", "guidance_scale"]),
        ({"prompt": "x", "guidance_scale": True}, ["body", "guidance_scale"]),
        ({"prompt": "x", "guidance_scale": 10**400}, ["body", "guidance_scale"]),
    ],
    ids=["string", "boolean", "huge-integer"],
)
def test_a_number_field_given_no_number_is_one_error_naming_the_field(
    service: RunningService, body: dict[str, Any], loc: list[str]
) -> None:
    """A client reading `loc[-1]` finds the field, not a name of the validator's types."""
    with service.http() as http:
        resp = http.post("/v1/jobs", json=body, headers={"x-api-key": service.api_key})
    assert resp.status_code == 422, resp.text
    assert [d["loc"] for d in resp.json()["error"]["details"]] == [loc]
    # An integer is a number: 7 is taken as 7.0.
    with service.http() as http:
        ok = http.post("/v1/jobs", json={"prompt": "x", "guidance_scale": 7}, headers={"x-api-key": service.api_key})
    assert ok.status_code == 202, ok.text
    assert ok.json()["request"]["guidance_scale"] == 7.0
