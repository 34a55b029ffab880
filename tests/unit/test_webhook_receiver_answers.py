"""What one webhook attempt makes of a receiver's odd answers, over real HTTP on 127.0.0.1: the status line
decides, so a strange ``Retry-After`` or a body that does not decode never crashes the delivery (which would end
its whole retry schedule at once)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from workflows.webhooks import retry_after_s, send_once

ANSWERS: dict[str, tuple[int, dict[str, str], bytes]] = {
    "unicode-digit": (503, {"Retry-After": "\u00b2"}, b""),
    "endless-digits": (503, {"Retry-After": "9" * 5000}, b""),
    "seconds": (429, {"Retry-After": "120"}, b""),
    "http-date": (503, {"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}, b""),
    "broken-gzip": (200, {"Content-Encoding": "gzip"}, b"this is not gzip"),
    "broken-gzip-error": (500, {"Content-Encoding": "gzip"}, b"this is not gzip either"),
}


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        status, headers, body = ANSWERS[self.path.strip("/")]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value.encode("latin-1", "replace").decode("latin-1"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("answer", "outcome", "status", "retry_after"),
    [
        ("unicode-digit", "retry", 503, None),
        ("endless-digits", "retry", 503, None),
        ("seconds", "retry", 429, 120),
        ("http-date", "retry", 503, None),
        ("broken-gzip", "delivered", 200, None),
        ("broken-gzip-error", "retry", 500, None),
    ],
)
def test_the_status_line_decides_whatever_the_headers_and_body(
    receiver: str, answer: str, outcome: str, status: int, retry_after: int | None
) -> None:
    attempt = send_once(receiver + answer, "{}", {}, allow_loopback=True, timeout_s=5)
    assert (attempt.outcome, attempt.status, attempt.retry_after_s) == (outcome, status, retry_after)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0), ("30", 30), ("999999999", 999999999), ("1234567890", None), ("+5", None), ("٣", None), (None, None)],
)
def test_retry_after_takes_ascii_delta_seconds_only(value: str | None, seconds: int | None) -> None:
    assert retry_after_s(value) == seconds
