"""One webhook delivery attempt against real receivers on 127.0.0.1: its wall-clock deadline, its DNS bound,
the response cap and the ports a callback may use."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.netguard import ALLOWED_PORTS, UnsafeUrl, check_callback_url
from workflows.webhooks import MAX_RESPONSE_BYTES, send_once

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"


class DrippingReceiver:
    """Accepts connections, reads the request, then answers ``prefix`` at once and ``drip`` one byte every
    ``interval_s`` (a receiver that keeps every read under the per-read timeout)."""

    def __init__(self, prefix: bytes, drip: bytes, interval_s: float) -> None:
        self._prefix, self._drip, self._interval_s = prefix, drip, interval_s
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/hooks"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(self._prefix)
                for byte in self._drip:
                    if self._stop.wait(self._interval_s):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()


@pytest.fixture
def dripping(request: pytest.FixtureRequest) -> Iterator[DrippingReceiver]:
    prefix, drip = request.param
    receiver = DrippingReceiver(prefix, drip, interval_s=0.2)
    yield receiver
    receiver.stop()


# 60 bytes at 0.2 s: 12 s of dripping, every read well inside a 1.5 s per-read timeout.
SLOW_HEAD = (b"", HEAD + b"x" * (60 - len(HEAD)))
SLOW_BODY = (HEAD + b"content-length: 60\r\n\r\n", b"y" * 60)


@pytest.mark.parametrize("dripping", [SLOW_HEAD, SLOW_BODY], indirect=True, ids=["head", "body"])
def test_a_dripping_receiver_cannot_hold_an_attempt_past_its_deadline(dripping: DrippingReceiver) -> None:
    started = time.monotonic()
    attempt = send_once(dripping.url, "{}", {}, allow_loopback=True, timeout_s=1.5)
    took = time.monotonic() - started
    assert took < 3.0, f"the attempt took {took:.1f}s"
    assert attempt.outcome == "retry"
    assert attempt.error is not None
    assert "timeout" in attempt.error


def test_a_slow_dns_answer_ends_the_attempt_within_the_dns_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        time.sleep(6)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    started = time.monotonic()
    attempt = send_once("https://hooks.example.com/sdq", "{}", {}, allow_loopback=False)
    assert time.monotonic() - started < 4.5
    assert attempt.outcome == "retry"
    assert attempt.error is not None
    assert "did not resolve within" in attempt.error


def test_only_the_first_part_of_a_large_response_is_read() -> None:
    body = b"z" * (MAX_RESPONSE_BYTES * 64)  # 4 MiB, sent as fast as the socket takes it
    head = HEAD + f"content-length: {len(body)}\r\n\r\n".encode()
    receiver = DrippingReceiver(head + body, b"", interval_s=0)
    try:
        started = time.monotonic()
        attempt = send_once(receiver.url, "{}", {}, allow_loopback=True, timeout_s=5)
        assert attempt.outcome == "delivered"
        assert time.monotonic() - started < 5
    finally:
        receiver.stop()


@pytest.mark.parametrize("port", [22, 25, 80, 6379, 8080, 9200])
def test_a_public_receiver_on_another_port_is_refused_at_submit_and_send_time(port: int) -> None:
    url = f"https://hooks.example.com:{port}/sdq"
    with pytest.raises(UnsafeUrl, match="port must be one of 443, 8443"):
        check_callback_url(url, allow_loopback=False)
    attempt = send_once(url, "{}", {}, allow_loopback=False)
    assert attempt.outcome == "blocked"
    assert attempt.error is not None
    assert "port" in attempt.error


@pytest.mark.parametrize("url", ["https://hooks.example.com/sdq", "https://hooks.example.com:8443/sdq"])
def test_https_on_443_or_8443_is_accepted(url: str) -> None:
    assert ALLOWED_PORTS == (443, 8443)
    assert check_callback_url(url, allow_loopback=False) == url


def test_a_loopback_receiver_on_any_port_works_where_loopback_is_allowed() -> None:
    receiver = DrippingReceiver(HEAD + b"content-length: 2\r\n\r\nok", b"", interval_s=0)
    try:
        assert check_callback_url(receiver.url, allow_loopback=True) == receiver.url
        assert send_once(receiver.url, "{}", {}, allow_loopback=True).outcome == "delivered"
    finally:
        receiver.stop()
