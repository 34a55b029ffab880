"""Worker tracing: off by default; with SDQ_XRAY on, segments and subsegments reach the X-Ray daemon (UDP)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from shared.tracing import segment, subsegment, tracing_enabled


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    address = f"127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("AWS_XRAY_DAEMON_ADDRESS", address)
    from aws_xray_sdk.core import xray_recorder

    xray_recorder.configure(daemon_address=address, sampling=False, context_missing="LOG_ERROR")
    yield sock
    sock.close()
    xray_recorder.emitter._socket.close()  # the SDK never closes its UDP socket


def test_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SDQ_XRAY", raising=False)
    assert not tracing_enabled()
    with segment("batch"), subsegment("generate"):
        pass


def test_segments_reach_the_daemon_when_on(monkeypatch: pytest.MonkeyPatch, daemon: socket.socket) -> None:
    monkeypatch.setenv("SDQ_XRAY", "true")
    with segment("sdq-worker-batch"), subsegment("generate"):
        pass
    header, body = daemon.recv(65536).decode().split("\n", 1)
    assert json.loads(header)["format"] == "json"
    sent = json.loads(body)
    assert sent["name"] == "sdq-worker-batch"
    assert [s["name"] for s in sent.get("subsegments", [])] == ["generate"]
