"""Progress events with previews, through the running service: ``GET /v1/jobs/{id}/events`` streamed over real HTTP
by the local API, previews in S3 and on the job view, and ``job.started`` / ``job.progress`` webhooks from a real
worker process (tiny model on CPU), ordered before the terminal one."""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from PIL import Image

from cli.client import Endpoint, SdqClient
from localcloud.receiver import ScriptedReceiver
from shared.apikeys import ApiKeyStore
from shared.settings import Settings
from shared.tenants import TenantStore
from tests.integration.conftest import REPO, RunningService, service_fixture
from workflows.authorization import Authorizer

WORKER = {
    "SDQ_VISIBILITY_TIMEOUT_S": "30",
    "SDQ_HEARTBEAT_S": "5",
    "SDQ_RECEIVE_WAIT_S": "1",
    "SDQ_MAX_BATCH_WAIT_MS": "1000",
    "SDQ_PROGRESS_INTERVAL_S": "0.2",
}
# About 5 s on a 2-core CPU: long enough for several progress writes, previews and webhooks while it runs.
SLOW = {"width": 512, "height": 512, "num_inference_steps": 50}


# Three streams per tenant: every test opens its streams for a tenant of its own, one at a time but the bound's.
service = service_fixture(
    "sdq-events", {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "1000", "SDQ_EVENT_STREAMS_PER_TENANT": "3"}
)


@pytest.fixture(autouse=True)
def no_worker_left(service: RunningService) -> Iterator[None]:
    yield
    for worker in service.workers:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)


@dataclass
class Stream:
    """One ``GET /v1/jobs/{id}/events``, read on a thread: every line with the time it arrived."""

    status: int | None = None
    content_type: str = ""
    lines: list[tuple[float, str]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    headers_at: float | None = None

    def events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        current: dict[str, Any] = {}
        for at, line in self.lines:
            if not line:
                if "event" in current:
                    out.append(current)
                current = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                current[name] = value.strip()
                current.setdefault("at", at)
        return out


def open_stream(service: RunningService, key: str, job_id: str, last_event_id: str | None = None) -> Stream:
    stream = Stream()
    headers = {"x-api-key": key, "Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id

    def read() -> None:
        try:
            with (
                httpx.Client(base_url=service.api_url, timeout=httpx.Timeout(10, read=60)) as http,
                http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as resp,
            ):
                stream.status = resp.status_code
                stream.content_type = resp.headers.get("content-type", "")
                stream.headers_at = time.monotonic()
                for line in resp.iter_lines():
                    stream.lines.append((time.monotonic(), line))
        finally:
            stream.done.set()

    threading.Thread(target=read, daemon=True).start()
    return stream


def new_tenant(service: RunningService, name: str) -> tuple[str, SdqClient]:
    """A fresh tenant: its API key and a client with it."""
    key = ApiKeyStore(service.boto("dynamodb"), service.table).create(f"{name}-{time.monotonic_ns()}").plaintext
    return key, SdqClient(Endpoint(service.api_url, key))


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def test_the_event_stream_is_streamed_live_until_the_job_finishes_and_resumes(service: RunningService) -> None:
    key, client = new_tenant(service, "events")
    job = client.submit({"prompt": "a stream", **SLOW})
    stream = open_stream(service, key, job["id"])
    # Headers and the reconnect delay arrive while the job still waits: the answer is streamed, not buffered.
    wait_for(lambda: any(line.startswith("retry:") for _, line in stream.lines), 20, "the stream's first line")
    assert stream.status == 200
    assert stream.content_type.startswith("text/event-stream")
    assert not stream.done.is_set()
    assert client.get(job["id"])["status"] == "QUEUED"

    previews: list[str] = []

    def preview_seen() -> bool:
        view = client.get(job["id"])
        if view["status"] == "RUNNING" and view["progress"]["preview_url"]:
            previews.append(view["progress"]["preview_url"])
        return bool(previews) or view["status"] in {"SUCCEEDED", "FAILED"}

    service.start_worker(env=WORKER)
    wait_for(preview_seen, 90, "a preview while the job runs")
    assert previews, "the job finished without a preview on its view while it ran"
    image = Image.open(io.BytesIO(httpx.get(previews[0], timeout=10).content))
    assert image.format == "JPEG"
    assert max(image.size) <= 256

    assert stream.done.wait(90), "the stream did not end after the job finished"
    events = stream.events()
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "job.succeeded"
    assert events[-1]["id"] == "final"
    assert set(kinds[:-1]) <= {"job.started", "job.progress"}
    assert "job.progress" in kinds
    steps = [tuple(int(p) for p in e["id"].split(".")) for e in events[:-1]]
    assert steps == sorted(set(steps)), "event ids must only grow"
    # Progress arrived while the job ran, well before its end: live, not at the close.
    first_progress = next(e for e in events if e["event"] == "job.progress")
    assert events[-1]["at"] - first_progress["at"] > 0.5
    body = json.loads(events[-1]["data"])
    assert body["type"] == "job.succeeded"
    assert body["data"]["id"] == job["id"]
    assert body["data"]["status"] == "SUCCEEDED"
    assert body["data"]["progress"]["preview_url"] is None  # only while RUNNING
    running_bodies = [json.loads(e["data"]) for e in events if e["event"] == "job.progress"]
    assert any(b["data"]["progress"]["preview_url"] for b in running_bodies)
    assert client.get(job["id"])["progress"]["preview_url"] is None

    # Resume: after a progress event only what is newer comes; after the end, nothing, at once.
    resumed = open_stream(service, key, job["id"], last_event_id=first_progress["id"])
    assert resumed.done.wait(20)
    assert [e["event"] for e in resumed.events()] == ["job.succeeded"]
    ended = open_stream(service, key, job["id"], last_event_id="final")
    assert ended.done.wait(20)
    assert ended.events() == []


def test_the_event_stream_needs_the_key_and_hides_other_tenants_jobs(service: RunningService) -> None:
    _, owner = new_tenant(service, "owner")
    other_key, _ = new_tenant(service, "other")
    job = owner.submit({"prompt": "mine", "width": 256, "height": 256, "num_inference_steps": 2})
    with httpx.Client(base_url=service.api_url, timeout=10) as http:
        path = f"/v1/jobs/{job['id']}/events"
        missing = http.get(path)
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "unauthorized"
        foreign = http.get(path, headers={"x-api-key": other_key})
        assert foreign.status_code == 404
        assert foreign.json()["error"]["code"] == "not_found"
        unknown = http.get("/v1/jobs/not-a-job/events", headers={"x-api-key": other_key})
        assert unknown.status_code == 404


def opens(http: httpx.Client, path: str, key: str) -> int:
    """The status of a stream opened and left at once (a 200 stream goes on server-side until it notices)."""
    with http.stream("GET", path, headers={"x-api-key": key}) as resp:
        return resp.status_code


def test_a_tenant_holds_at_most_its_bound_of_open_streams(service: RunningService) -> None:
    """Each open stream holds a Lambda execution for up to 15 minutes: one tenant holds at most
    SDQ_EVENT_STREAMS_PER_TENANT (3 here) at once, over real HTTP and across the local API's processes; one more is
    429 with Retry-After before anything streams, until a stream ends or its client leaves. Another tenant's are its
    own."""
    key, client = new_tenant(service, "streams")
    small = {"width": 256, "height": 256, "num_inference_steps": 2}
    waiting, ending = (client.submit({"prompt": f"held open {i}", **small}) for i in range(2))
    streams = [open_stream(service, key, waiting["id"]) for _ in range(2)] + [open_stream(service, key, ending["id"])]
    for stream in streams:
        wait_for(lambda s=stream: any(line.startswith("retry:") for _, line in s.lines), 20, "a stream's first line")
        assert stream.status == 200
    with httpx.Client(base_url=service.api_url, timeout=10) as http:
        path = f"/v1/jobs/{waiting['id']}/events"
        refused = http.get(path, headers={"x-api-key": key})
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) > 0
        assert refused.json()["error"]["code"] == "too_many_requests"
        assert "3 event streams open" in refused.json()["error"]["message"]
        other_key, other = new_tenant(service, "other-streams")
        theirs = other.submit({"prompt": "theirs", **small})
        assert opens(http, f"/v1/jobs/{theirs['id']}/events", other_key) == 200

        # A stream that ends (its job cancelled) gives its place back.
        client.cancel(ending["id"])
        assert streams[2].done.wait(20), "the cancelled job's stream did not end"
        with http.stream("GET", path, headers={"x-api-key": key}) as leaving:
            assert leaving.status_code == 200
            assert next(leaving.iter_lines()).startswith("retry:")
        # That client left: its place comes back once the stream notices, at its next write (15 s keep-alive).
        deadline = time.monotonic() + 40
        while (status := opens(http, path, key)) == 429:
            assert time.monotonic() < deadline, "a stream whose client left kept its place"
            time.sleep(1)
        assert status == 200
    client.cancel(waiting["id"])  # the two streams still open end with their job
    assert all(stream.done.wait(20) for stream in streams[:2])


def test_a_revoked_key_ends_its_open_stream_within_the_authorizer_cache_period(service: RunningService) -> None:
    """The suite's stack caches the authorizer's answer for 2 s (`sdq up --authorizer-cache-seconds 2`); a stream
    re-reads its key as often, so revoking the key ends it about as soon as a new request with it is refused."""
    store = ApiKeyStore(service.boto("dynamodb"), service.table)
    issued = store.create(f"revoked-stream-{time.monotonic_ns()}")
    job = SdqClient(Endpoint(service.api_url, issued.plaintext)).submit({"prompt": "never mind", "width": 256})
    stream = open_stream(service, issued.plaintext, job["id"])
    wait_for(lambda: any(line.startswith("retry:") for _, line in stream.lines), 20, "the stream's first line")
    assert not stream.done.wait(3), "the stream ended while its key was still active"
    store.revoke(issued.key_id)
    # 2 s and one poll after it, with room for a loaded machine; far inside the 60 s of the setting's default.
    assert stream.done.wait(12), "the stream outlived its revoked key"
    assert stream.events() == []


def test_started_and_progress_webhooks_are_signed_spaced_and_come_before_the_terminal_one(
    service: RunningService,
) -> None:
    receiver = ScriptedReceiver().start()
    try:
        _, client = new_tenant(service, "hooks")
        receiver.secret = client.webhook_secret()
        subscribed = client.submit(
            {
                "prompt": "tell me everything",
                "callback_url": receiver.url,
                "webhook_events": ["started", "progress", "completed"],
                **SLOW,
            }
        )
        plain = client.submit({"prompt": "only the end", "callback_url": receiver.url, **SLOW})
        service.start_worker(env=WORKER)

        def both_finished() -> bool:
            return all(
                any(d.json()["type"] == "job.succeeded" for d in receiver.by_job(j["id"])) for j in (subscribed, plain)
            )

        wait_for(both_finished, 120, "both terminal webhooks")
        time.sleep(2.0)  # anything sent late would have arrived by now
        deliveries = receiver.by_job(subscribed["id"])
        types = [d.json()["type"] for d in deliveries]
        assert types[0] == "job.started", types
        assert types[-1] == "job.succeeded", types
        assert types.count("job.succeeded") == 1
        assert "job.progress" in types, types
        assert all(d.verified for d in deliveries)
        assert len({d.webhook_id for d in deliveries}) == len(deliveries)  # one id per distinct message
        progress = [d.json() for d in deliveries if d.json()["type"] == "job.progress"]
        assert all(p["data"]["status"] == "RUNNING" for p in progress)
        assert any(p["data"]["progress"]["preview_url"] for p in progress)
        # At most one progress webhook per job every few seconds (3 s), the newest state in each.
        stamps = [datetime.fromisoformat(p["timestamp"]).timestamp() for p in progress]
        assert all(b - a >= 2.5 for a, b in itertools.pairwise(stamps)), stamps
        steps = [p["data"]["progress"]["step"] for p in progress]
        assert steps == sorted(steps)
        # The unsubscribed job hears only of its end.
        assert [d.json()["type"] for d in receiver.by_job(plain["id"])] == ["job.succeeded"]
        # The job view's webhook record is the terminal webhook's, untouched by the progress ones.
        record = client.get(subscribed["id"])["webhook"]
        assert record["state"] == "delivered"
        assert record["attempts"] == 1
        assert record["event"] == "job.succeeded"
    finally:
        receiver.stop()


class FakeRuntimeApi:
    """Lambda's Runtime API on loopback, as the events function's runtime loop sees it on AWS: it hands out the
    queued invocations and records each streamed answer chunk by chunk, with the time each arrived."""

    def __init__(self, invocations: list[tuple[dict[str, Any], int]]) -> None:
        self.invocations = list(invocations)  # (event, deadline in ms from now)
        self.answers: dict[str, list[tuple[float, bytes]]] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.finished: dict[str, threading.Event] = {}
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if not api.invocations:
                    time.sleep(3600)  # no more work: the loop waits here, as on AWS
                    return
                event, deadline_ms = api.invocations.pop(0)
                request_id = f"req-{len(api.finished)}"
                api.finished[request_id] = threading.Event()
                body = json.dumps(event).encode()
                self.send_response(200)
                self.send_header("Lambda-Runtime-Aws-Request-Id", request_id)
                self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + deadline_ms))
                self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:local:0:function:events")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                request_id = self.path.split("/")[-2]
                api.headers[request_id] = {k.lower(): v for k, v in self.headers.items()}
                chunks = api.answers.setdefault(request_id, [])
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b""):
                            pass
                        break
                    chunks.append((time.monotonic(), self.rfile.read(size)))
                    self.rfile.readline()
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()
                api.finished[request_id].set()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def answer(self, request_id: str) -> tuple[dict[str, Any], bytes]:
        raw = b"".join(data for _, data in self.answers[request_id])
        prelude, _, body = raw.partition(b"\x00" * 8)
        return json.loads(prelude), body


def proxy_event(service: RunningService, job_id: str, key: str) -> dict[str, Any]:
    """What API Gateway's streaming Lambda proxy integration sends the events function: with the authorizer's
    answer for a valid key; without one for a key the gateway would refuse (a call that bypassed it)."""
    ddb = service.boto("dynamodb")
    caller = Authorizer(ApiKeyStore(ddb, service.table), TenantStore(ddb, service.table, Settings())).authorize(key)
    authorizer = {"authorizer": caller.context()} if caller is not None else {}
    return {
        "resource": "/v1/jobs/{job_id}/events",
        "path": f"/v1/jobs/{job_id}/events",
        "httpMethod": "GET",
        "headers": {"x-api-key": key, "Accept": "text/event-stream"},
        "pathParameters": {"job_id": job_id},
        "queryStringParameters": None,
        "requestContext": {"stage": "prod", "path": f"/prod/v1/jobs/{job_id}/events", **authorizer},
        "body": None,
        "isBase64Encoded": False,
    }


def test_the_aws_runtime_loop_streams_through_the_runtime_api(service: RunningService) -> None:
    """handlers/streamruntime.sh, the events function's exec wrapper, against a Runtime API and the local cloud:
    each invocation's answer is API Gateway's streaming format (JSON prelude, eight NULs, the SSE body), sent
    while it is produced, and a stream ends before the invocation's deadline."""
    key, client = new_tenant(service, "runtime")
    waiting = client.submit({"prompt": "never runs here", "width": 256, "height": 256, "num_inference_steps": 2})
    cancelled = client.submit({"prompt": "cancelled", "width": 256, "height": 256, "num_inference_steps": 2})
    client.cancel(cancelled["id"])
    runtime = FakeRuntimeApi(
        [
            (proxy_event(service, waiting["id"], key), 16_000),  # 16 s: the stream gets 6 s, then ends itself
            (proxy_event(service, cancelled["id"], key), 60_000),
            (proxy_event(service, cancelled["id"], "not-a-key"), 60_000),
        ]
    )
    env = {
        **os.environ,
        **service.env,
        "AWS_LAMBDA_RUNTIME_API": runtime.address,
        "LAMBDA_TASK_ROOT": str(REPO),
        "LAMBDA_PYTHON": sys.executable,
    }
    proc = subprocess.Popen([str(REPO / "handlers" / "streamruntime.sh")], env=env, cwd="/")
    try:
        wait_for(lambda: "req-0" in runtime.finished, 30, "the first invocation")
        assert runtime.finished["req-0"].wait(40)
        prelude, body = runtime.answer("req-0")
        assert prelude["statusCode"] == 200
        assert prelude["headers"]["Content-Type"].startswith("text/event-stream")
        assert runtime.headers["req-0"]["lambda-runtime-function-response-mode"] == "streaming"
        assert runtime.headers["req-0"]["transfer-encoding"] == "chunked"
        assert body.startswith(b"retry: ")
        assert b"reconnect with Last-Event-ID" in body  # ended by its deadline, the job still queued
        chunks = runtime.answers["req-0"]
        assert chunks[-1][0] - chunks[1][0] > 4.0  # the first line went out seconds before the last: streamed

        wait_for(lambda: "req-1" in runtime.finished, 30, "the second invocation")
        assert runtime.finished["req-1"].wait(30)
        prelude, body = runtime.answer("req-1")
        assert prelude["statusCode"] == 200
        assert b"id: final\nevent: job.cancelled\n" in body

        wait_for(lambda: "req-2" in runtime.finished, 30, "the third invocation")
        assert runtime.finished["req-2"].wait(30)
        prelude, body = runtime.answer("req-2")
        assert prelude["statusCode"] == 401
        assert json.loads(body)["error"]["code"] == "unauthorized"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        runtime.server.shutdown()
