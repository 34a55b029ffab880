"""With SDQ_XRAY on, the worker's segment of a job continues the job's trace (the message's AWSTraceHeader) and
hands its own id on as the parent of what it calls (StartExecution's traceHeader). Sent to a UDP socket standing
in for the X-Ray daemon, as the ECS task's sidecar would receive it."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from aws_xray_sdk.core.models.trace_header import TraceHeader

from shared.tracing import current_header, segment

ROOT = "1-5759e988-bd862e3fe1be46a994272793"
PARENT = "53995c3f42cd8ad8"


@pytest.fixture
def daemon() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    address = f"127.0.0.1:{sock.getsockname()[1]}"
    from aws_xray_sdk import global_sdk_config
    from aws_xray_sdk.core import xray_recorder
    from aws_xray_sdk.core.emitters.udp_emitter import UDPEmitter

    # A Powertools Tracer built outside Lambda turns the X-Ray SDK off process-wide; the worker builds none. An
    # emitter of its own: another test module may have closed the recorder's.
    was_enabled, was_emitter = global_sdk_config.sdk_enabled(), xray_recorder.emitter
    global_sdk_config.set_sdk_enabled(True)
    emitter = UDPEmitter(daemon_address=address)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_XRAY_DAEMON_ADDRESS", address)
        patch.delenv("_X_AMZN_TRACE_ID", raising=False)
        xray_recorder.configure(emitter=emitter, sampling=False, context_missing="LOG_ERROR")
        yield sock
    xray_recorder.configure(emitter=was_emitter)
    global_sdk_config.set_sdk_enabled(was_enabled)
    emitter._socket.close()
    sock.close()


def test_the_worker_segment_continues_the_message_trace(daemon: socket.socket) -> None:
    with segment("sdq-worker", enabled=True, trace_header=f"Root={ROOT};Parent={PARENT};Sampled=1") as out:
        assert out is not None
        assert current_header() == out
    sent = json.loads(daemon.recv(65536).decode().split("\n", 1)[1])
    assert (sent["name"], sent["trace_id"], sent["parent_id"]) == ("sdq-worker", ROOT, PARENT)
    passed_on = TraceHeader.from_header_str(out)
    assert (passed_on.root, passed_on.parent) == (ROOT, sent["id"])
    assert current_header() is None


def test_without_tracing_the_message_trace_is_passed_on_unchanged(daemon: socket.socket) -> None:
    header = f"Root={ROOT};Parent={PARENT};Sampled=1"
    with segment("sdq-worker", enabled=False, trace_header=header) as out:
        assert out == header == current_header()
    assert current_header() is None
    with pytest.raises(TimeoutError):
        daemon.recv(65536)
