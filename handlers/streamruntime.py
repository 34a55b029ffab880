"""The events function's runtime loop: the Lambda Runtime API, answered in streaming mode.

Lambda's managed Python runtime buffers a handler's return value; only a runtime that speaks the Runtime API
itself can stream (Lambda's response streaming docs: Node.js natively, otherwise a custom runtime or the Lambda
Web Adapter). This is that runtime, in the standard library alone: the function keeps the managed ``python3.12``
runtime for its interpreter and packages, and ``AWS_LAMBDA_EXEC_WRAPPER`` (``handlers/streamruntime.sh``) starts
this loop in place of the managed one.

Per invocation: ``GET .../invocation/next``, run :func:`handlers.events.stream_handler`, then ``POST
.../invocation/{id}/response`` with ``Lambda-Runtime-Function-Response-Mode: streaming`` and chunked transfer
encoding, in the form API Gateway's streaming Lambda proxy integration reads: a JSON prelude with the status and
headers, eight NUL bytes, then the body as it is produced. An error before the first byte is posted to
``.../error``; one after it ends the stream with the Runtime API's error trailers.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

RUNTIME_PATH = "/2018-06-01/runtime"
PRELUDE_CONTENT_TYPE = "application/vnd.awslambda.http-integration-response"
DELIMITER = b"\x00" * 8

StreamHandler = Callable[[dict[str, Any], Any], Any]


class InvocationContext:
    """The parts of the Lambda context object the handler reads."""

    def __init__(self, request_id: str, deadline_ms: int, function_arn: str) -> None:
        self.aws_request_id = request_id
        self.invoked_function_arn = function_arn
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "sdq-events")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "0") or 0)
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def prelude(status: int, headers: dict[str, str]) -> bytes:
    """API Gateway's streaming prelude: the status and headers as JSON, then the eight-NUL delimiter."""
    return json.dumps({"statusCode": status, "headers": headers}).encode() + DELIMITER


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _error_body(exc: BaseException) -> dict[str, Any]:
    return {
        "errorType": type(exc).__name__,
        "errorMessage": str(exc)[:1000],
        "stackTrace": traceback.format_exception(exc)[-5:],
    }


def post_stream(
    conn: http.client.HTTPConnection, request_id: str, status: int, headers: dict[str, str], body: Iterable[bytes]
) -> None:
    """Stream one invocation's answer; an exception while producing the body ends it with error trailers."""
    conn.putrequest("POST", f"{RUNTIME_PATH}/invocation/{request_id}/response", skip_accept_encoding=True)
    conn.putheader("Lambda-Runtime-Function-Response-Mode", "streaming")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.putheader("Content-Type", PRELUDE_CONTENT_TYPE)
    conn.putheader("Trailer", "Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body")
    conn.endheaders()
    conn.send(_chunk(prelude(status, headers)))
    trailers = b""
    try:
        for data in body:
            if data:
                conn.send(_chunk(data))
    except Exception as exc:  # the stream broke after its first bytes: the Runtime API's way to say so
        error = json.dumps(_error_body(exc)).encode()
        trailers = (
            f"Lambda-Runtime-Function-Error-Type: {type(exc).__name__}\r\n"
            f"Lambda-Runtime-Function-Error-Body: {base64.b64encode(error).decode()}\r\n"
        ).encode()
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()  # as a WSGI server does: a body that holds something (a stream's slot) gives it back
    conn.send(b"0\r\n" + trailers + b"\r\n")
    conn.getresponse().read()


def serve_one(api: str, handler: StreamHandler) -> None:
    """Take the next invocation and answer it (streamed, or as an invocation error)."""
    conn = http.client.HTTPConnection(api, timeout=None)
    conn.request("GET", f"{RUNTIME_PATH}/invocation/next")
    resp = conn.getresponse()
    event = json.loads(resp.read() or b"{}")
    request_id = resp.getheader("Lambda-Runtime-Aws-Request-Id", "")
    trace_id = resp.getheader("Lambda-Runtime-Trace-Id")
    if trace_id:
        os.environ["_X_AMZN_TRACE_ID"] = trace_id
    context = InvocationContext(
        request_id,
        int(resp.getheader("Lambda-Runtime-Deadline-Ms", "0") or 0),
        resp.getheader("Lambda-Runtime-Invoked-Function-Arn", ""),
    )
    try:
        answer = handler(event, context)
    except Exception as exc:
        conn.request(
            "POST",
            f"{RUNTIME_PATH}/invocation/{request_id}/error",
            body=json.dumps(_error_body(exc)),
            headers={"Lambda-Runtime-Function-Error-Type": type(exc).__name__},
        )
        conn.getresponse().read()
        return
    post_stream(conn, request_id, answer.status, answer.headers, answer.body)


def main() -> None:
    api = os.environ["AWS_LAMBDA_RUNTIME_API"]
    try:
        from handlers.events import stream_handler

        stream_handler_fn: StreamHandler = stream_handler
    except Exception as exc:  # the function cannot start: Lambda reports an init error
        conn = http.client.HTTPConnection(api)
        conn.request(
            "POST",
            f"{RUNTIME_PATH}/init/error",
            body=json.dumps(_error_body(exc)),
            headers={"Lambda-Runtime-Function-Error-Type": "Runtime.ImportError"},
        )
        conn.getresponse().read()
        raise
    while True:
        try:
            serve_one(api, stream_handler_fn)
        except (OSError, http.client.HTTPException) as exc:
            print(f"sdq events runtime: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            time.sleep(0.1)


if __name__ == "__main__":
    main()
