"""`stream()` against a small Server-Sent Events server on loopback (real HTTP, real sockets), and the event-stream
parser against the standard's own examples."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import sdq_client.client
from sdq_client import AsyncClient, Client, JobEvent, JobStatus, NotFound, RateLimited, SdqError, WaitTimeout
from sdq_client.sse import EventStreamParser, parse_lines

JOB_ID = "01KAXAAAAAAAAAAAAAAAAAAAAA"


def job(status: str, step: int = 0) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "id": JOB_ID,
        "status": status,
        "created_at": now,
        "started_at": None,
        "finished_at": now if status in {"SUCCEEDED", "FAILED", "CANCELLED"} else None,
        "attempt": 1,
        "progress": {"step": step, "total": 4, "preview_url": None},
        "timings": {"queued_s": None, "run_s": None, "total_s": None},
        "request": {"prompt": "a red fox", "width": 256, "height": 256, "seed": 1},
        "outputs": [],
        "outputs_expire_at": None,
        "error": None,
        "model_note": None,
        "metadata": {},
    }


def frame(event: str, data: dict[str, Any], event_id: str, *, split_data: bool = False) -> bytes:
    payload = json.dumps({"type": event, "timestamp": datetime.now(UTC).isoformat(), "data": data}, indent=1)
    lines = payload.splitlines() if split_data else [payload.replace("\n", "")]
    return ("".join(f"data: {line}\n" for line in lines) + f"event: {event}\nid: {event_id}\n\n").encode()


class EventServer(BaseHTTPRequestHandler):
    """Serves one job's events; the first connection drops after two events, the next resumes after the last id."""

    script: ClassVar[list[bytes]] = []
    requests: ClassVar[list[dict[str, str]]] = []
    drop_after: ClassVar[int | None] = None
    fail_connections: ClassVar[int] = 0  # this many connections are closed before any answer
    # Then, one connection each: "drop" (closed before any answer), a status ("503": a gateway's answer), a 429
    # asking to retry after N seconds ("429:N", the API's cap of open streams), or "empty" (a stream that ends
    # before any event, as one the server ends early does).
    plan: ClassVar[list[str]] = []
    # After the script: hold the connection this long, sending a keep-alive comment every `keepalive_s` (None: silent),
    # as the API does for a job that is still queued (its comments come every 15 s, for up to 15 minutes).
    hold_s: ClassVar[float] = 0.0
    keepalive_s: ClassVar[float | None] = None
    stop: ClassVar[threading.Event] = threading.Event()

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        cls = type(self)
        cls.requests.append({k.lower(): v for k, v in self.headers.items()} | {"path": self.path})
        if cls.fail_connections > 0:
            cls.fail_connections -= 1
            self.close_connection = True
            return
        step = cls.plan.pop(0) if cls.plan else None
        if step == "drop":
            self.close_connection = True
            return
        if step is not None and step.startswith("429:"):
            error = {"code": "too_many_requests", "message": "Too many open event streams.", "details": None}
            body = json.dumps({"error": error}).encode()
            self.send_response(429)
            self.send_header("Content-Type", "application/json")
            self.send_header("Retry-After", step.partition(":")[2])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if step is not None and step.isdigit():
            body = json.dumps({"message": "Service Unavailable"}).encode()
            self.send_response(int(step))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if step == "broken":  # opens, then breaks off mid-body (a chunked answer never finished)
            self.protocol_version = "HTTP/1.1"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"retry: 50\n\n"
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.close_connection = True
            return
        if step == "broken-late":  # serves keep-alives a while, then breaks off (a proxy cutting a long stream)
            self.protocol_version = "HTTP/1.1"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in (b"retry: 50\n\n", b": keep-alive\n\n"):
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
                time.sleep(0.3)
            self.close_connection = True
            return
        if step == "empty":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b"retry: 50\n\n: reconnect\n\n")
            self.close_connection = True
            return
        if self.path != f"/v1/jobs/{JOB_ID}/events":
            body = json.dumps({"error": {"code": "not_found", "message": "No such job.", "details": None}}).encode()
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.write(b"\xef\xbb\xbf: a comment keeps the line open\nretry: 50\n\n")
        last = self.headers.get("Last-Event-ID")
        start = int(last) if last is not None else 0
        for index in range(start, len(cls.script)):
            self.wfile.write(cls.script[index])
            self.wfile.flush()
            if cls.drop_after is not None and index + 1 == cls.drop_after and last is None:
                # Half of the next event, then the line drops: that event must not be dispatched.
                self.wfile.write(cls.script[index + 1][:20])
                return
        self._hold()
        self.close_connection = True

    def _hold(self) -> None:
        cls = type(self)
        until = time.monotonic() + cls.hold_s
        while time.monotonic() < until and not cls.stop.is_set():
            cls.stop.wait(cls.keepalive_s or 0.05)
            if cls.keepalive_s is not None:
                try:
                    self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
                except OSError:  # the client has gone
                    return


@pytest.fixture
def server() -> Iterator[str]:
    EventServer.script = [
        frame("job.started", job("RUNNING"), "1"),
        frame("job.progress", job("RUNNING", step=2), "2", split_data=True),
        frame("job.progress", job("RUNNING", step=4), "3"),
        frame("job.succeeded", job("SUCCEEDED", step=4), "4"),
        frame("job.never", job("SUCCEEDED"), "5"),  # after the finishing event: never read
    ]
    EventServer.requests = []
    EventServer.drop_after = None
    EventServer.fail_connections = 0
    EventServer.plan = []
    EventServer.hold_s, EventServer.keepalive_s = 0.0, None
    EventServer.stop = threading.Event()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), EventServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    EventServer.stop.set()
    httpd.shutdown()
    httpd.server_close()


def test_stream_yields_the_job_events_until_the_job_finishes(server: str) -> None:
    with Client(server, "key") as client:
        events = list(client.stream(JOB_ID))
    assert [e.type for e in events] == ["job.started", "job.progress", "job.progress", "job.succeeded"]
    assert [e.event_id for e in events] == ["1", "2", "3", "4"]
    assert [e.data.progress.step for e in events] == [0, 2, 4, 4]
    assert events[-1].data.finished
    assert len(EventServer.requests) == 1
    sent = EventServer.requests[0]
    assert sent["accept"] == "text/event-stream"
    assert sent["x-api-key"] == "key"
    assert "authorization" not in sent


def test_a_dropped_stream_resumes_after_the_last_event(server: str) -> None:
    EventServer.drop_after = 2
    with Client(server, "key") as client:
        events = list(client.stream(JOB_ID))
    assert [e.event_id for e in events] == ["1", "2", "3", "4"]  # none lost, none twice
    assert [r.get("last-event-id") for r in EventServer.requests] == [None, "2"]


def test_a_stream_the_server_ends_early_is_reopened_until_the_timeout(server: str) -> None:
    EventServer.script = EventServer.script[:1]  # one event, then every stream ends with the job unfinished
    events: list[JobEvent] = []
    with Client(server, "key") as client, pytest.raises(WaitTimeout) as timed_out:
        events.extend(client.stream(JOB_ID, timeout=1.0))  # keeps what came before the timeout
    assert [e.event_id for e in events] == ["1"]  # reopened with Last-Event-ID: never the same event twice
    assert timed_out.value.job.status is JobStatus.RUNNING
    # The server's `retry: 50` paces the reconnects: a second's worth, each resuming after event 1.
    assert len(EventServer.requests) > 5
    assert {r.get("last-event-id") for r in EventServer.requests[1:]} == {"1"}


@pytest.mark.parametrize("keepalive_s", [0.05, None], ids=["keep-alives", "silence"])
def test_the_timeout_bounds_a_stream_the_server_holds_open(server: str, keepalive_s: float | None) -> None:
    """A queued job's stream stays open (keep-alive comments, or nothing at all) far longer than the timeout: the
    timeout still ends it, with the job as last seen."""
    EventServer.script = EventServer.script[:1]
    EventServer.hold_s, EventServer.keepalive_s = 60.0, keepalive_s
    events: list[JobEvent] = []
    started = time.monotonic()
    with Client(server, "key") as client, pytest.raises(WaitTimeout) as timed_out:
        events.extend(client.stream(JOB_ID, timeout=1.0))
    assert time.monotonic() - started < 20  # the server would have held it for 60 s
    assert [e.event_id for e in events] == ["1"]
    assert timed_out.value.job.status is JobStatus.RUNNING
    assert len(EventServer.requests) == 1  # one connection, ended by the client


@pytest.mark.parametrize("keepalive_s", [0.05, None], ids=["keep-alives", "silence"])
def test_the_timeout_bounds_an_async_stream_the_server_holds_open(server: str, keepalive_s: float | None) -> None:
    EventServer.script = EventServer.script[:1]
    EventServer.hold_s, EventServer.keepalive_s = 60.0, keepalive_s
    events: list[JobEvent] = []

    async def read() -> None:
        async with AsyncClient(server, "key") as client:
            async for event in client.stream(JOB_ID, timeout=1.0):
                events.append(event)

    started = time.monotonic()
    with pytest.raises(WaitTimeout) as timed_out:
        asyncio.run(read())
    assert time.monotonic() - started < 20
    assert [e.event_id for e in events] == ["1"]
    assert timed_out.value.job.status is JobStatus.RUNNING


def test_failed_connections_are_retried_then_given_up(server: str) -> None:
    EventServer.fail_connections = 2
    with Client(server, "key") as client:
        assert [e.event_id for e in client.stream(JOB_ID, reconnects=2)][-1] == "4"
    EventServer.requests.clear()
    EventServer.fail_connections = 10
    with Client(server, "key") as client, pytest.raises(SdqError, match="failed 3 times in a row"):
        list(client.stream(JOB_ID, reconnects=2))
    assert len(EventServer.requests) == 3


def test_a_gateway_failure_on_a_reconnect_is_retried_like_a_dropped_connection(server: str) -> None:
    EventServer.plan = ["drop", "503", "502", "504"]
    with Client(server, "key") as client:
        assert [e.event_id for e in client.stream(JOB_ID, reconnects=4)] == ["1", "2", "3", "4"]
    assert len(EventServer.requests) == 5


def test_a_stream_the_server_ends_resets_the_count_of_failures_in_a_row(server: str) -> None:
    """Failures in a row are counted: each stream the server ends (even one that ends before any event) resets it."""
    EventServer.plan = ["drop", "empty", "503", "empty", "drop", "empty", "drop"]
    with Client(server, "key") as client:
        assert [e.event_id for e in client.stream(JOB_ID, reconnects=1)] == ["1", "2", "3", "4"]

    async def read() -> list[str | None]:
        async with AsyncClient(server, "key") as client:
            return [e.event_id async for e in client.stream(JOB_ID, reconnects=1)]

    EventServer.plan = ["drop", "empty", "503", "empty", "drop", "empty", "drop"]
    assert asyncio.run(read()) == ["1", "2", "3", "4"]


def test_streams_that_open_and_break_off_count_as_failures_in_a_row(server: str) -> None:
    """A stream that opens and breaks before any event (a proxy cutting it, a crashed events function) is a failed
    connection: without that, an unending stream would be reopened for ever."""
    EventServer.plan = ["broken"] * 5
    with Client(server, "key") as client, pytest.raises(SdqError, match="failed 3 times in a row"):
        list(client.stream(JOB_ID, reconnects=2))
    assert len(EventServer.requests) == 3

    async def read() -> list[str | None]:
        async with AsyncClient(server, "key") as client:
            return [e.event_id async for e in client.stream(JOB_ID, reconnects=2)]

    EventServer.requests.clear()
    EventServer.plan = ["broken"] * 5
    with pytest.raises(SdqError, match="failed 3 times in a row"):
        asyncio.run(read())
    assert len(EventServer.requests) == 3


def test_a_stream_that_served_a_while_before_it_broke_starts_the_count_again(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queued job's stream sends keep-alives only: breaks far apart, each after a healthy while, are not failures
    in a row (30 s in the client, shortened here)."""
    monkeypatch.setattr(sdq_client.client, "HEALTHY_STREAM_S", 0.2)
    EventServer.plan = ["broken-late"] * 4
    with Client(server, "key") as client:
        assert [e.event_id for e in client.stream(JOB_ID, reconnects=1)] == ["1", "2", "3", "4"]
    assert len(EventServer.requests) == 5


def read_ids(server: str, kind: str) -> list[str | None]:
    """The ids of the job's events, read with the sync or the async client."""
    if kind == "sync":
        with Client(server, "key") as client:
            return [e.event_id for e in client.stream(JOB_ID)]

    async def read() -> list[str | None]:
        async with AsyncClient(server, "key") as client:
            return [e.event_id async for e in client.stream(JOB_ID)]

    return asyncio.run(read())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stream_refused_with_a_short_retry_after_is_opened_again_after_it(server: str, kind: str) -> None:
    """The API caps a tenant's open streams, answering 429 with `Retry-After: 10`: a stream waits it out, as every
    GET does (at most `max_retry_after`, within the retries), then reads the job's events."""
    EventServer.plan = ["429:1"]
    started = time.monotonic()
    assert read_ids(server, kind) == ["1", "2", "3", "4"]
    assert time.monotonic() - started >= 1.0  # after the second it asked for
    assert len(EventServer.requests) == 2


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stream_refused_for_longer_than_the_client_waits_raises_rate_limited(server: str, kind: str) -> None:
    EventServer.plan = ["429:3600"]
    with pytest.raises(RateLimited) as refused:
        read_ids(server, kind)
    assert refused.value.retry_after == 3600
    assert len(EventServer.requests) == 1


def test_a_refused_stream_raises_the_typed_error(server: str) -> None:
    with Client(server, "key") as client, pytest.raises(NotFound):
        list(client.stream("01KAXBBBBBBBBBBBBBBBBBBBBB"))


def test_the_async_stream_reads_the_same_events(server: str) -> None:
    async def read() -> list[str]:
        async with AsyncClient(server, "key") as client:
            return [e.type async for e in client.stream(JOB_ID)]

    assert asyncio.run(read()) == ["job.started", "job.progress", "job.progress", "job.succeeded"]


def test_the_parser_follows_the_standard() -> None:
    # The examples of the WHATWG HTML standard, section 9.2.4 and 9.2.6.
    text = "data: YHOO\ndata: +2\ndata: 10\n\n: test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
    text += "data:  third event\n\nevent: add\ndata: 73857293\n\ndata\n\ndata\ndata\n\ndata:\n\nretry: 10x\ndata: z"
    events = list(parse_lines(text.split("\n")))
    assert [(e.event, e.data, e.id) for e in events] == [
        ("message", "YHOO\n+2\n10", None),
        ("message", "first event", "1"),
        ("message", "second event", ""),  # a bare `id` resets the last event id
        ("message", " third event", ""),  # only one space after the colon is dropped
        ("add", "73857293", ""),
        ("message", "", ""),
        ("message", "\n", ""),
        ("message", "", ""),
    ]  # the last, unterminated event is never dispatched; `retry: 10x` is ignored
    parser = EventStreamParser()
    for line in ["retry: 2500", "id: a\0b", "data: x", ""]:
        parser.feed(line)
    assert parser.retry_ms == 2500
    assert parser.last_event_id is None  # an id holding NUL is ignored
