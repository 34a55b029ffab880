"""Where ``GET /v1/jobs/{id}/events`` is answered: the local API streams it chunk by chunk outside the one-invocation
lock, and the API function (when a request reaches it instead of the streaming function) answers the stream's
current state at once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import pytest

from handlers.events import StreamedResponse
from localcloud.api import LocalApiServer, LocalLambdaContext
from localcloud.gateway import GatewayRules, LocalGateway
from localcloud.service import TEMPLATE
from shared.apikeys import ApiKeyStore
from shared.contracts import GenerationRequest, Job, JobStatus, utcnow
from shared.deliveryslots import StreamSlots
from shared.jobs import JobsRepository
from shared.media import MediaStore
from shared.settings import get_settings
from shared.tenants import TenantStore
from tests.tablegrants import TableCalls, refused
from tests.unit.conftest import JOBS_TABLE, make_job
from workflows.authorization import Authorizer

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


def test_the_local_api_streams_the_events_route_without_holding_other_requests() -> None:
    release = threading.Event()
    seen: list[dict[str, Any]] = []

    def handler(event: dict[str, Any], _context: Any) -> dict[str, Any]:
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": '"plain"'}

    def stream_handler(event: dict[str, Any], context: Any) -> StreamedResponse:
        seen.append(event)
        assert context.get_remaining_time_in_millis() > 14 * 60 * 1000  # a stream's 15 minutes, not 29 s

        def body() -> Iterator[bytes]:
            yield b"retry: 2000\n\n"
            release.wait(10)
            yield b"id: final\nevent: job.succeeded\ndata: {}\n\n"

        return StreamedResponse(200, {"Content-Type": "text/event-stream"}, body())

    api = LocalApiServer(handler, port=0, stream_handler=stream_handler)
    api.start()
    try:
        lines: list[tuple[float, str]] = []
        with (
            httpx.Client(base_url=api.url, timeout=10) as http,
            http.stream("GET", "/v1/jobs/01J/events", headers={"x-api-key": "k", "Last-Event-ID": "1.2"}) as resp,
        ):
            assert resp.headers["content-type"] == "text/event-stream"
            chunks = resp.iter_lines()
            assert next(chunks) == "retry: 2000"  # arrived while the body is still being produced
            # Meanwhile an ordinary request is answered: the stream does not hold the invocation lock.
            assert httpx.get(api.url + "/v1/jobs", timeout=5).json() == "plain"
            released_at = time.monotonic()
            release.set()
            lines = [(time.monotonic(), line) for line in chunks]
        assert [line for _, line in lines if line] == ["id: final", "event: job.succeeded", "data: {}"]
        assert all(at >= released_at for at, _ in lines)
        (event,) = seen
        assert event["pathParameters"] == {"job_id": "01J"}
        assert event["resource"] == "/v1/jobs/{job_id}/events"
        assert {k.lower(): v for k, v in event["headers"].items()}["last-event-id"] == "1.2"
    finally:
        release.set()
        api.stop()


@pytest.fixture
def api_env(jobs_table: DynamoDBClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[DynamoDBClient]:
    from handlers import api

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("SDQ_TABLE_NAME", JOBS_TABLE)
    monkeypatch.setenv("SDQ_BUCKET", "media")
    api.services.cache_clear()
    yield jobs_table
    api.services.cache_clear()


def test_the_api_function_answers_the_events_route_with_the_current_state(api_env: DynamoDBClient) -> None:
    from handlers import api, authorizer

    key = ApiKeyStore(api_env, JOBS_TABLE).create("t-1").plaintext
    authorizer.deps.cache_clear()
    gateway = LocalGateway(GatewayRules.from_template(TEMPLATE), authorizer.lambda_handler, LocalLambdaContext)
    repo = JobsRepository(api_env, JOBS_TABLE)
    request = GenerationRequest.model_validate({"prompt": "a fox", "seed": 1}, context={"trusted": True})
    stored, _ = repo.create(
        Job(
            job_id="01KB0000000000000000000000",
            tenant="t-1",
            status=JobStatus.QUEUED,
            request=request,
            created_at=utcnow(),
            cache_key="k",
            expires_at=2**40,
        )
    )
    repo.claim(stored.job_id, "t-1", worker_id="w", lease_s=60, now=time.time())
    repo.record_progress(stored.job_id, worker_id="w", step=3, total=30)

    def call(job_id: str, query: dict[str, str] | None = None, **headers: str) -> dict[str, Any]:
        event = {
            "path": f"/v1/jobs/{job_id}/events",
            "httpMethod": "GET",
            "headers": {"x-api-key": key, **headers},
            "multiValueHeaders": {},
            "queryStringParameters": query,
            "requestContext": {"stage": "prod", "path": f"/prod/v1/jobs/{job_id}/events"},
            "body": None,
            "isBase64Encoded": False,
        }
        assert gateway.admit(event) is None  # API Gateway's authorizer lets the key through
        return api.lambda_handler(event, LocalLambdaContext())

    now = call(stored.job_id)
    assert now["statusCode"] == 200
    multi = {k.lower(): v[-1] for k, v in (now.get("multiValueHeaders") or {}).items()}
    headers = {k.lower(): v for k, v in (now.get("headers") or {}).items()} | multi
    assert headers["content-type"].startswith("text/event-stream")
    assert not now.get("isBase64Encoded")
    assert now["body"].startswith("retry: 2000\n\n")
    assert "id: 1.3\nevent: job.progress\ndata: " in now["body"]
    seen = call(stored.job_id, **{"Last-Event-ID": "1.3"})
    assert seen["body"] == "retry: 2000\n\n"  # nothing newer: EventSource reconnects after `retry`
    # A client that cannot set the header says it in the query, as the streaming route takes it.
    assert call(stored.job_id, {"last_event_id": "1.3"})["body"] == "retry: 2000\n\n"
    assert call("01KB0000000000000000000001")["statusCode"] == 404


class ShortStream:
    """A Lambda context whose invocation ends 11.5 s from now: the stream's own end comes 1.5 s from now."""

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 11_500


def test_an_events_stream_reads_only_items_its_role_may_read(
    api_env: DynamoDBClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On AWS the stream function's role limits its reads to item kinds (dynamodb:LeadingKeys). A stream reads its
    job and re-reads the caller's key as often as the authorizer's answer is cached: each item it reads must be one
    the template lets it read, or AWS ends every stream at its first key check."""
    from handlers import events

    monkeypatch.setenv("SDQ_AUTHORIZER_CACHE_S", "0")  # the key re-read at each of the stream's reads
    settings = get_settings()
    keys = ApiKeyStore(api_env, JOBS_TABLE)
    issued = keys.create("t-1")
    caller = Authorizer(keys, TenantStore(api_env, JOBS_TABLE, settings)).authorize(issued.plaintext)
    assert caller is not None
    repo = JobsRepository(api_env, JOBS_TABLE)
    job, _ = repo.create(make_job())
    media = MediaStore(boto3.client("s3", region_name="us-east-1"), "media")
    services = events.EventServices(
        settings=settings, repo=repo, media=media, keys=keys, slots=StreamSlots(api_env, JOBS_TABLE)
    )
    monkeypatch.setattr(events, "services", lambda: services)
    reads = TableCalls(api_env)
    answer = events.stream_handler(
        {"path": f"/v1/jobs/{job.job_id}/events", "requestContext": {"authorizer": caller.context()}}, ShortStream()
    )
    assert answer.status == 200
    body = b"".join(answer.body)
    assert b"reconnect with Last-Event-ID" in body  # it ran to its end, reading all along
    assert ("dynamodb:GetItem", f"APIKEY#{issued.key_id}") in reads.calls
    assert ("dynamodb:GetItem", f"JOB#{job.job_id}") in reads.calls
    assert refused("EventsFunctionRole", reads.calls) == []


def test_a_tenant_holds_at_most_its_bound_of_open_streams_and_each_gives_its_place_back(
    api_env: DynamoDBClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each open stream holds an execution for up to 15 minutes: past the tenant's bound one more is refused with 429
    and Retry-After before anything streams; a stream that ends, fails or is closed (its client gone) gives its
    place back; other tenants are not counted."""
    from handlers import events

    monkeypatch.setenv("SDQ_EVENT_STREAMS_PER_TENANT", "2")
    settings = get_settings()
    keys = ApiKeyStore(api_env, JOBS_TABLE)
    tenants = TenantStore(api_env, JOBS_TABLE, settings)
    repo = JobsRepository(api_env, JOBS_TABLE)
    media = MediaStore(boto3.client("s3", region_name="us-east-1"), "media")
    slots = StreamSlots(api_env, JOBS_TABLE)
    services = events.EventServices(settings=settings, repo=repo, media=media, keys=keys, slots=slots)
    monkeypatch.setattr(events, "services", lambda: services)

    def opener(tenant: str) -> Any:
        caller = Authorizer(keys, tenants).authorize(keys.create(tenant).plaintext)
        assert caller is not None
        job, _ = repo.create(make_job(tenant=tenant))

        def open_one() -> StreamedResponse:
            event = {"path": f"/v1/jobs/{job.job_id}/events", "requestContext": {"authorizer": caller.context()}}
            return events.stream_handler(event, ShortStream())

        return open_one

    mine, theirs = opener("t-1"), opener("t-2")
    first, second = mine(), mine()
    assert (first.status, second.status) == (200, 200)
    refused = mine()
    assert refused.status == 429
    assert refused.headers["Retry-After"] == str(events.STREAMS_RETRY_AFTER_S)
    error = json.loads(b"".join(refused.body))["error"]
    assert error["code"] == "too_many_requests"
    assert "2 event streams open" in error["message"]
    assert theirs().status == 200  # another tenant's streams are its own
    # A client that leaves: the server closes the body (as werkzeug does), before or after its first bytes.
    next(iter(first.body))
    first.body.close()  # type: ignore[attr-defined]
    third = mine()
    assert third.status == 200
    assert mine().status == 429
    second.body.close()  # type: ignore[attr-defined]  # never read at all
    fourth = mine()
    assert fourth.status == 200
    # A stream that runs to its end (here its deadline, 1.5 s) gives its place back too.
    assert b"reconnect with Last-Event-ID" in b"".join(third.body)
    assert mine().status == 200
    assert mine().status == 429
    assert not slots.acquire("t-1", "check", limit=2, lease_s=60, now=time.time())  # the two open ones hold both
