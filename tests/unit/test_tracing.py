"""Worker tracing: off by default; with SDQ_XRAY on, segments and subsegments reach the X-Ray daemon (UDP)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from handlers.worker import worker_config
from shared.settings import get_settings
from shared.tracing import segment, subsegment


@pytest.fixture(scope="module")
def daemon() -> Iterator[socket.socket]:
    """A UDP socket standing in for the X-Ray daemon, shared by this module's tests."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    address = f"127.0.0.1:{sock.getsockname()[1]}"
    from aws_xray_sdk import global_sdk_config
    from aws_xray_sdk.core import xray_recorder

    # A Powertools Tracer built outside Lambda (importing a handler, as other test files in this process may)
    # turns the X-Ray SDK off process-wide; the worker's process builds none.
    was_enabled = global_sdk_config.sdk_enabled()
    global_sdk_config.set_sdk_enabled(True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_XRAY_DAEMON_ADDRESS", address)  # configure() prefers it to its argument
        xray_recorder.configure(daemon_address=address, sampling=False, context_missing="LOG_ERROR")
        yield sock
    global_sdk_config.set_sdk_enabled(was_enabled)
    sock.close()
    xray_recorder.emitter._socket.close()  # the SDK never closes its UDP socket


def test_the_worker_traces_only_with_sdq_xray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SDQ_XRAY", raising=False)
    assert worker_config().xray is False
    monkeypatch.setenv("SDQ_XRAY", "true")
    get_settings.cache_clear()
    assert worker_config().xray is True


def test_nothing_is_sent_when_off(daemon: socket.socket) -> None:
    with segment("sdq-worker-batch", enabled=False), subsegment("generate", enabled=False):
        pass
    with pytest.raises(TimeoutError):
        daemon.recv(65536)


def test_segments_reach_the_daemon_when_on(daemon: socket.socket) -> None:
    with segment("sdq-worker-batch", enabled=True), subsegment("generate", enabled=True):
        pass
    header, body = daemon.recv(65536).decode().split("\n", 1)
    assert json.loads(header)["format"] == "json"
    sent = json.loads(body)
    assert sent["name"] == "sdq-worker-batch"
    assert [s["name"] for s in sent.get("subsegments", [])] == ["generate"]
