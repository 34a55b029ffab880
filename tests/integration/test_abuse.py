"""Bad input and abuse over real HTTP: a clear error, nothing written, nothing enqueued."""

from __future__ import annotations

import gzip
import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from ulid import ULID

from cli.client import ApiError, Endpoint, SdqClient
from shared.apikeys import ApiKeyStore
from shared.jobs import JobsRepository
from tests.cases import INTERNAL_CALLBACK_URLS
from tests.integration.conftest import RunningService, start_service, stop_service, store_queued_job

RATE_LIMIT = 60
# A day-long window: the test's submissions never straddle a window boundary (fixed windows reset on it).
RATE_WINDOW_S = 86_400


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    running = start_service(
        tmp_path_factory.mktemp("sdq-abuse"),
        {
            "SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "1000",
            "SDQ_RATE_LIMIT_PER_WINDOW": str(RATE_LIMIT),
            "SDQ_RATE_LIMIT_WINDOW_S": str(RATE_WINDOW_S),
            # Loopback receivers off, as in AWS, so 127.0.0.1 and friends are refused like any private host.
            "SDQ_ALLOW_LOOPBACK_CALLBACKS": "false",
        },
    )
    yield running
    stop_service(running)


def post(service: RunningService, body: object) -> tuple[int, dict[str, object]]:
    with service.http() as http:
        resp = http.post("/v1/jobs", json=body, headers={"x-api-key": service.api_key})
    return resp.status_code, resp.json()


@pytest.mark.parametrize("url", INTERNAL_CALLBACK_URLS)
def test_internal_callback_urls_are_422_and_nothing_is_written(service: RunningService, url: str) -> None:
    items, depth = service.table_items(), service.queue_depth()
    status, body = post(service, {"prompt": "x", "callback_url": url})
    assert status == 422
    assert body["error"]["details"][0]["loc"] == ["body", "callback_url"]  # type: ignore[index]
    assert (service.table_items(), service.queue_depth()) == (items, depth)


# JSON text as sent (escapes kept: a lone surrogate cannot be encoded by a client's JSON library otherwise).
UNDELIVERABLE_CALLBACK_URLS = [
    r"https://hooks.example.com/\ud800",
    r" https://hooks.example.com/",
    r"https://hooks.example.com/ ",
    r"https://hooks.example.com/a\nb",
    r"https://hooks.example.com/a\u0000b",
    r"https://hooks.example.com/a\u00a0b",
    r"https://hooks.example.com:0/",
    r"https://hooks.example.com:65536/",
]


@pytest.mark.parametrize("url", UNDELIVERABLE_CALLBACK_URLS)
def test_undeliverable_callback_urls_are_422_before_the_rate_limit_is_charged(
    service: RunningService, url: str
) -> None:
    # A fresh tenant: a charged rate limit would show as its new counter item.
    key = ApiKeyStore(service.boto("dynamodb"), service.table).create(f"bad-callback-{ULID()}").plaintext
    items, depth = service.table_items(), service.queue_depth()
    with service.http() as http:
        resp = http.post(
            "/v1/jobs",
            content=f'{{"prompt": "x", "callback_url": "{url}"}}'.encode(),
            headers={"x-api-key": key, "Content-Type": "application/json"},
        )
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["details"][0]["loc"] == ["body", "callback_url"]
    assert (service.table_items(), service.queue_depth()) == (items, depth)  # no job, no rate-limit count


@pytest.mark.parametrize("prompt", ["fox\x00", "fox\x1b[2J", "\u200bfox\ufffe"])
def test_control_and_non_characters_in_prompts_are_422(service: RunningService, prompt: str) -> None:
    items = service.table_items()
    status, body = post(service, {"prompt": prompt})
    assert status == 422
    assert body["error"]["details"][0]["loc"] == ["body", "prompt"]  # type: ignore[index]
    assert service.table_items() == items


def test_a_compressed_body_is_read_as_the_json_it_holds(service: RunningService) -> None:
    """As API Gateway does for an API with compression enabled: it decompresses before the function sees it."""
    with service.http() as http:
        resp = http.post(
            "/v1/jobs",
            content=gzip.compress(b'{"prompt": "squeezed", "width": 7}'),
            headers={"x-api-key": service.api_key, "Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["details"][0]["loc"] == ["body", "width"]


def test_a_compressed_body_too_large_once_decompressed_is_413(service: RunningService) -> None:
    """20 KB of gzip that would be 20 MB: cut where API Gateway's payload limit is, then over the API's cap."""
    items, depth = service.table_items(), service.queue_depth()
    with service.http() as http:
        resp = http.post(
            "/v1/jobs",
            content=gzip.compress(b'{"prompt": "' + b"x" * (20 * 1024 * 1024) + b'"}'),
            headers={"x-api-key": service.api_key, "Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
    assert resp.status_code == 413, resp.text
    assert (service.table_items(), service.queue_depth()) == (items, depth)


def test_a_revoked_key_is_401_like_any_wrong_key(service: RunningService) -> None:
    """Within the authorizer's cache period (2 s for this service; the template's AuthorizerCacheSeconds on AWS)."""
    store = ApiKeyStore(service.boto("dynamodb"), service.table)
    key = store.create("revoked-tenant")
    client = SdqClient(Endpoint(service.api_url, key.plaintext))
    assert client.list()["jobs"] == []
    store.revoke(key.key_id)
    revoked_at = time.monotonic()
    with pytest.raises(ApiError) as revoked:  # noqa: PT012 - polls until the cached answer expires
        while time.monotonic() - revoked_at < 4:
            client.list()
            time.sleep(0.2)
    assert time.monotonic() - revoked_at < 3.5
    with pytest.raises(ApiError) as wrong:
        SdqClient(Endpoint(service.api_url, "sdq_" + "x" * 43)).list()
    assert revoked.value.status == wrong.value.status == 401
    assert revoked.value.body == wrong.value.body


def test_foreign_guessed_and_malformed_ids_are_404_on_every_job_route(service: RunningService) -> None:
    alice, bob = service.new_tenant("a"), service.new_tenant("b")
    job = alice.submit({"prompt": "alice", "callback_url": "https://hooks.example.com/a"})
    for job_id in [job["id"], str(ULID()), "../../etc/passwd", "x" * 26, "x" * 65, job["id"] * 10]:
        for call in (bob.get, bob.cancel, bob.redeliver):
            with pytest.raises(ApiError) as info:
                call(job_id)
            assert info.value.status == 404
            assert "url" not in str(info.value.body)


def test_fifty_concurrent_replays_of_one_idempotency_key_make_one_job_and_one_message(
    service: RunningService,
) -> None:
    # A replay that comes while the first request still sends its job is 409 idempotency_key_in_use: the typed
    # client tries it again, as it would in use.
    client = service.new_tenant("replay").api
    depth = service.queue_depth()
    with ThreadPoolExecutor(25) as pool:
        ids = list(pool.map(lambda _: client.submit({"prompt": "once"}, idempotency_key="once").id, range(50)))
    assert len(set(ids)) == 1
    assert service.queue_depth() == depth + 1


def test_over_the_rate_limit_is_429_with_retry_after_and_nothing_enqueued(service: RunningService) -> None:
    client = service.new_tenant("rate")
    accepted = 0
    for _ in range(RATE_LIMIT):
        client.submit({"prompt": "steady"})
        accepted += 1
    depth, items = service.queue_depth(), service.table_items()
    with pytest.raises(ApiError) as info:
        client.submit({"prompt": "one too many"})
    assert info.value.status == 429
    assert 1 <= int(info.value.headers["Retry-After"]) <= RATE_WINDOW_S
    assert (service.queue_depth(), service.table_items()) == (depth, items)
    assert accepted == RATE_LIMIT
    # Another tenant is not affected.
    assert service.new_tenant("rate-other").submit({"prompt": "fine"})["status"] == "QUEUED"


def test_a_job_past_its_retention_is_404(service: RunningService) -> None:
    tenant, client = service.new_named_tenant("expired")
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    job = store_queued_job(repo, tenant, prompt="old", expires_at=int(time.time()) - 1)
    with pytest.raises(ApiError) as info:
        client.get(job.job_id)
    assert info.value.status == 404
    assert client.list()["jobs"] == []


def test_a_job_past_its_retention_cannot_be_cancelled(service: RunningService) -> None:
    tenant, client = service.new_named_tenant("expired-cancel")
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    job = store_queued_job(repo, tenant, prompt="old", expires_at=int(time.time()) - 1)
    with pytest.raises(ApiError) as info:
        client.cancel(job.job_id)
    assert info.value.status == 404
    assert info.value.code == "not_found"
    assert repo.get(job.job_id).status.value == "QUEUED"  # nothing written


def expire(service: RunningService, tenant: str, job_id: str, idempotency_key: str) -> None:
    """Time passes: the job and its Idempotency-Key record reach their retention (both carry one expires_at)."""
    ddb = service.boto("dynamodb")
    key_pk = f"IDEM#{tenant}#{hashlib.sha256(idempotency_key.encode()).hexdigest()}"
    for pk in (f"JOB#{job_id}", key_pk):
        ddb.update_item(
            TableName=service.table,
            Key={"pk": {"S": pk}},
            UpdateExpression="SET expires_at = :past",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 1)}},
        )


def test_an_idempotency_key_whose_job_expired_makes_a_new_job(service: RunningService) -> None:
    tenant, client = service.new_named_tenant("idem-expired")
    old = client.submit({"prompt": "kept a week"}, idempotency_key="weekly")
    expire(service, tenant, old["id"], "weekly")
    depth = service.queue_depth()
    new = client.submit({"prompt": "kept a week"}, idempotency_key="weekly")
    assert new["id"] != old["id"]
    assert client.get(new["id"])["status"] == "QUEUED"
    assert service.queue_depth() == depth + 1
    # The key now names the new job: a replay returns it, another body is the usual 409.
    assert client.submit({"prompt": "kept a week"}, idempotency_key="weekly")["id"] == new["id"]
    with pytest.raises(ApiError) as info:
        client.submit({"prompt": "another body"}, idempotency_key="weekly")
    assert info.value.status == 409


def test_an_idempotency_key_whose_job_was_swept_by_the_ttl_makes_a_new_job(service: RunningService) -> None:
    tenant, client = service.new_named_tenant("idem-swept")
    old = client.submit({"prompt": "swept"}, idempotency_key="sweep")
    expire(service, tenant, old["id"], "sweep")
    # DynamoDB's TTL sweep deletes items one by one: here the job went first, its key record not yet.
    service.boto("dynamodb").delete_item(TableName=service.table, Key={"pk": {"S": f"JOB#{old['id']}"}})
    new = client.submit({"prompt": "swept"}, idempotency_key="sweep")
    assert new["id"] != old["id"]
    assert client.get(new["id"])["status"] == "QUEUED"


@pytest.mark.parametrize("body", [{"prompt": "joined"}, {"prompt": "another body"}])
def test_an_idempotency_key_whose_job_ended_its_retention_before_the_key_makes_a_new_job(
    service: RunningService, body: dict[str, str]
) -> None:
    """A job that joined an identical one takes that one's retention, sooner than its key's record: once the job
    is past it, its key is free, with the same body or another (as when both expire together)."""
    _, client = service.new_named_tenant("idem-outlived")
    old = client.submit({"prompt": "joined"}, idempotency_key="outlived")
    service.boto("dynamodb").update_item(
        TableName=service.table,
        Key={"pk": {"S": f"JOB#{old['id']}"}},
        UpdateExpression="SET expires_at = :past",
        ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 5)}},
    )
    depth = service.queue_depth()
    new = client.submit(body, idempotency_key="outlived")
    assert new["id"] != old["id"]
    assert client.get(new["id"])["status"] == "QUEUED"
    assert service.queue_depth() == depth + 1
    assert client.submit(body, idempotency_key="outlived")["id"] == new["id"]  # the key names the new job now


def test_upload_tickets_count_against_the_rate_limit_like_submissions(service: RunningService) -> None:
    """A ticket lets a tenant store up to an input's size in the bucket: it is metered like a submission, in the
    same window, so tickets cannot be drawn without limit."""
    key = ApiKeyStore(service.boto("dynamodb"), service.table).create(f"uploads-{time.monotonic_ns()}").plaintext
    headers = {"x-api-key": key}
    with service.http() as http:
        issued = [http.post("/v1/uploads", headers=headers).status_code for _ in range(RATE_LIMIT)]
        assert issued == [201] * RATE_LIMIT
        over = http.post("/v1/uploads", headers=headers)
        assert over.status_code == 429, over.text
        assert 1 <= int(over.headers["Retry-After"]) <= RATE_WINDOW_S
        depth = service.queue_depth()
        assert http.post("/v1/jobs", json={"prompt": "a fox"}, headers=headers).status_code == 429
        assert service.queue_depth() == depth
