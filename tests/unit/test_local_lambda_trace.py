"""The local Lambda runtime gives each invocation its own ``_X_AMZN_TRACE_ID``, as the Lambda runtime does per
execution environment, although the local invocations share one process and run at once."""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from localcloud.lambdas import FunctionSpec, invoke

_BOTH_INSIDE = threading.Barrier(2, timeout=10)


def report_trace(event: dict[str, Any], context: Any) -> str | None:
    """A handler that answers the trace it runs in, once the other invocation is running too."""
    if event.get("together"):
        _BOTH_INSIDE.wait()
    return os.environ.get("_X_AMZN_TRACE_ID")


SPEC = FunctionSpec(
    name="trace-probe",
    arn="arn:aws:lambda:us-east-1:123456789012:function:trace-probe",
    handler=f"{__name__}.report_trace",
)
A = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
B = "Root=1-5759e988-00000000000000000000000b;Parent=0000000000000001;Sampled=0"


def test_concurrent_invocations_each_see_their_own_trace() -> None:
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(invoke, SPEC, {"together": True}, trace_header=A)
        b = pool.submit(invoke, SPEC, {"together": True}, trace_header=B)
        answers = [json.loads(a.result().payload), json.loads(b.result().payload)]
    assert answers == [A, B]
    assert os.environ.get("_X_AMZN_TRACE_ID") is None


def test_an_untraced_invocation_sees_no_trace_and_reports_nothing(capsys: Any) -> None:
    assert json.loads(invoke(SPEC, {}).payload) is None
    assert "REPORT" not in capsys.readouterr().out


def test_a_traced_invocation_ends_with_the_platforms_report_line(capsys: Any) -> None:
    result = invoke(SPEC, {}, trace_header=A)
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"REPORT RequestId: {result.request_id}\tFunction: trace-probe\t")
    assert line.endswith(
        "XRAY TraceId: 1-5759e988-bd862e3fe1be46a994272793\tSegmentId: 53995c3f42cd8ad8\tSampled: true"
    )
