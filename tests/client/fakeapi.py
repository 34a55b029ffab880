"""A stand-in for the sdq API on loopback (real HTTP over real sockets) for the client's and the CLI's tests.

It keeps jobs and Idempotency-Keys as the API does (a repeat of a key answers the job the first request made), and
answers with the failures a gateway or a network produces where a test asks for them: a status (`502` with a
gateway's body), a connection closed before the request is handled (``DROP``), or one closed after it was handled,
so that the job exists but its answer is lost (``LOST``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DROP = "drop"
LOST = "lost"

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


@dataclass
class Reply:
    status: int
    body: Any = None  # JSON-encoded unless bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Slow:
    """Handle the request, then answer only this much later (a client with a shorter timeout never sees it)."""

    delay_s: float


@dataclass
class Seen:
    method: str
    path: str  # as sent: percent-encoding and query included
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Fault:
    method: str
    prefix: str
    action: Reply | Slow | str
    times: int


def job_body(job_id: str, status: str, *, step: int = 0, request: dict[str, Any] | None = None) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "id": job_id,
        "status": status,
        "created_at": now,
        "started_at": None if status == "QUEUED" else now,
        "finished_at": now if status in TERMINAL else None,
        "attempt": 1,
        "progress": {"step": step, "total": 4, "preview_url": None},
        "timings": {"queued_s": None, "run_s": None, "total_s": None},
        "request": {"prompt": "a red fox", "width": 256, "height": 256, "seed": 1, **(request or {})},
        "outputs": [],
        "outputs_expire_at": None,
        "error": None,
        "model_note": None,
        "metadata": {},
    }


def gateway_502() -> Reply:
    """What API Gateway answers when the function behind it failed: not the API's error shape."""
    return Reply(502, {"message": "Internal server error"}, {"x-amzn-ErrorType": "InternalServerErrorException"})


class FakeApi:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.faults: list[Fault] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.keys: dict[str, str] = {}
        self.polls: dict[str, int] = {}
        # A job's GETs answered with it unfinished (RUNNING) before it SUCCEEDED; None: it never finishes.
        self.gets_until_done: int | None = 1
        # The outputs a job has once it SUCCEEDED (see output()).
        self.outputs: list[dict[str, Any]] = []
        # The Retry-After of an unfinished job: poll again at once by default.
        self.poll_after = "0"
        self.routes: dict[tuple[str, str], Callable[[Seen], Reply]] = {}
        self.url = ""
        self._lock = threading.Lock()

    # -- scripting --------------------------------------------------------------------------------

    def fault(self, method: str, prefix: str, action: Reply | Slow | str, times: int = 1) -> None:
        """The next ``times`` requests of ``method`` to a path starting with ``prefix`` get ``action``."""
        self.faults.append(Fault(method, prefix, action, times))

    def route(self, method: str, path: str, answer: Callable[[Seen], Reply]) -> None:
        self.routes[(method, path)] = answer

    def requests(self, method: str | None = None, prefix: str = "") -> list[Seen]:
        return [s for s in self.seen if (method is None or s.method == method) and s.path.startswith(prefix)]

    def output(self, index: int, path: str) -> dict[str, Any]:
        """An output whose URL is ``path`` on this server (a route serves it, or it is a 404)."""
        return {"index": index, "url": self.url + path, "content_type": "image/png", "width": 256, "height": 256,
                "bytes": 8, "sha256": "0" * 64}  # fmt: skip

    def add_job(self, status: str = "RUNNING", **kwargs: Any) -> str:
        job_id = self._new_id()
        self.jobs[job_id] = job_body(job_id, status, **kwargs)
        return job_id

    # -- answering --------------------------------------------------------------------------------

    def _new_id(self) -> str:
        return f"01KAX{len(self.jobs) + 1:021d}"

    def _fault_for(self, seen: Seen) -> Reply | Slow | str | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.method == seen.method and seen.path.startswith(fault.prefix):
                    fault.times -= 1
                    return fault.action
        return None

    def answer(self, seen: Seen) -> Reply:
        path = urlsplit(seen.path).path
        custom = self.routes.get((seen.method, path))
        if custom is not None:
            return custom(seen)
        if seen.method == "POST" and path == "/v1/jobs":
            return self._submit(seen)
        if seen.method == "GET" and path == "/v1/jobs":
            page = sorted(self.jobs.values(), key=lambda j: j["id"], reverse=True)
            return Reply(200, {"jobs": page, "next_cursor": None})
        parts = path.split("/")
        if len(parts) >= 4 and parts[:3] == ["", "v1", "jobs"]:
            job = self.jobs.get(unquote(parts[3]))
            if job is None or len(parts) > 5:
                return Reply(404, {"error": {"code": "not_found", "message": "No such job.", "details": None}})
            if seen.method == "GET" and len(parts) == 4:
                return self._get(job, seen)
            if seen.method == "POST" and parts[4:] == ["cancel"]:
                job.update(status="CANCELLED", finished_at=datetime.now(UTC).isoformat())
                return Reply(200, job)
        return Reply(404, {"error": {"code": "not_found", "message": "No such route.", "details": None}})

    def _submit(self, seen: Seen) -> Reply:
        key = seen.headers.get("idempotency-key")
        with self._lock:
            if key is not None and key in self.keys:
                job = self.jobs[self.keys[key]]
                return Reply(202, job, {"Idempotent-Replayed": "true", "Retry-After": "0"})
            job_id = self._new_id()
            job = self.jobs[job_id] = job_body(job_id, "QUEUED", request=seen.json())
            if key is not None:
                self.keys[key] = job_id
        return Reply(202, job, {"Location": f"/v1/jobs/{job_id}", "Idempotent-Replayed": "false", "Retry-After": "0"})

    def _get(self, job: dict[str, Any], seen: Seen) -> Reply:
        headers = {}
        if job["status"] in {"QUEUED", "RUNNING"}:
            self.polls[job["id"]] = polls = self.polls.get(job["id"], 0) + 1
            if self.gets_until_done is not None and polls > self.gets_until_done:
                job.update(status="SUCCEEDED", finished_at=datetime.now(UTC).isoformat(), outputs=self.outputs)
            else:
                job.update(status="RUNNING")
                headers["Retry-After"] = self.poll_after
        if "wait" in seen.headers.get("prefer", ""):
            headers["Preference-Applied"] = "wait=1"
        return Reply(200, job, headers)


class _Handler(BaseHTTPRequestHandler):
    api: FakeApi

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
        api = self.api
        api.seen.append(seen)
        action = api._fault_for(seen)
        if action == DROP:
            self.close_connection = True
            return
        reply = action if isinstance(action, Reply) else api.answer(seen)
        if action == LOST:
            self.close_connection = True
            return
        if isinstance(action, Slow):
            time.sleep(action.delay_s)
        body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            if not isinstance(reply.body, bytes):
                self.send_header("Content-Type", "application/json")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up waiting
            pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()


def query(seen: Seen) -> dict[str, list[str]]:
    return parse_qs(urlsplit(seen.path).query)


@contextmanager
def running(api: FakeApi | None = None) -> Iterator[FakeApi]:
    api = api or FakeApi()
    handler = type("Handler", (_Handler,), {"api": api})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    api.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield api
    finally:
        httpd.shutdown()
        httpd.server_close()
