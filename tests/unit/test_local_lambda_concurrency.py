"""The local Lambda runtime holds a function with reserved concurrency to it, as Lambda does: a synchronous
invocation past it is throttled (429 TooManyRequestsException, which callers and Step Functions retry); once
one ends, the next runs."""

from __future__ import annotations

import json
import threading
from typing import Any

from werkzeug.test import Client

from localcloud.lambdas import FunctionSpec, LambdaInvokeMiddleware

RELEASE = threading.Event()
STARTED = threading.Event()


def hold(event: dict[str, Any], context: Any) -> str:
    """A handler that runs until the test lets it end."""
    STARTED.set()
    RELEASE.wait(10)
    return "done"


SPEC = FunctionSpec(
    name="held",
    arn="arn:aws:lambda:us-east-1:123456789012:function:held",
    handler=f"{__name__}.hold",
    reserved_concurrency=1,
)


def no_app(environ: Any, start_response: Any) -> list[bytes]:
    raise AssertionError("every request here is an invocation")


def invoke(client: Client) -> Any:
    return client.post("/2015-03-31/functions/held/invocations", data=b"{}")


def test_a_synchronous_invocation_past_the_reserved_concurrency_is_throttled() -> None:
    client = Client(LambdaInvokeMiddleware(no_app, default_region="us-east-1", resolver=lambda ref: SPEC))
    answers: list[Any] = []
    first = threading.Thread(target=lambda: answers.append(invoke(client)))
    first.start()
    assert STARTED.wait(10)

    throttled = invoke(client)
    assert throttled.status_code == 429
    assert throttled.headers["x-amzn-ErrorType"] == "TooManyRequestsException"
    assert json.loads(throttled.data)["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"

    RELEASE.set()
    first.join(10)
    assert [a.status_code for a in answers] == [200]
    assert json.loads(invoke(client).data) == "done"  # its slot is free again
