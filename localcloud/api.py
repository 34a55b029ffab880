"""Serves a Lambda API handler over HTTP on 127.0.0.1, the way API Gateway (REST, proxy) would call it.

Each HTTP request becomes an API Gateway proxy event; the handler's proxy response becomes the HTTP
response. Nothing in the handler knows it runs locally.

Routes that stream on AWS (``GET /v1/jobs/{id}/events``: its own function behind API Gateway's streaming
integration) go to a stream handler instead, outside the one-invocation-at-a-time lock (on AWS each stream holds
an execution environment of its own); its body is written to the socket chunk by chunk as it is produced.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.test import EnvironBuilder
from werkzeug.utils import redirect
from werkzeug.wrappers import Request, Response

from localcloud.gateway import LocalGateway

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]
# A handler whose answer streams: it returns an object with ``status``, ``headers`` and an iterable ``body`` of
# bytes (handlers.events.StreamedResponse).
StreamHandler = Callable[[dict[str, Any], Any], Any]
# The template's streaming route (its own resource, more specific than /v1/{proxy+}).
STREAM_ROUTE = re.compile(r"^/v1/jobs/(?P<job_id>[^/]+)/events$")
# API Gateway's longest streamed answer (15 minutes) is what a stream invocation gets; SDQ_LOCAL_STREAM_TIMEOUT_S
# shortens it on the local stack (the API fuzz test, whose jobs never finish, so each stream runs its whole time).
STREAM_TIMEOUT_MS = 15 * 60 * 1000
STREAM_TIMEOUT_VARIABLE = "SDQ_LOCAL_STREAM_TIMEOUT_S"

# API Gateway's own hard limit on payloads; larger bodies never reach the Lambda.
APIGW_MAX_BODY = 10 * 1024 * 1024
# An invocation running longer than this (a `Prefer: wait`) holds its process's accepting back (see
# LocalApiServer._accept_only_when_idle); a shorter one does not.
LONG_INVOCATION_S = 0.25


class LocalLambdaContext:
    """The parts of the Lambda context object that Powertools and handlers read."""

    function_name = "sdq-api-local"
    function_version = "$LATEST"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:sdq-api-local"

    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 29_000


class LocalStreamContext(LocalLambdaContext):
    """A streamed invocation's context: 15 minutes, like the events function's timeout."""

    function_name = "sdq-events-local"
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:sdq-events-local"

    def __init__(self) -> None:
        super().__init__()
        timeout_s = float(os.environ.get(STREAM_TIMEOUT_VARIABLE) or STREAM_TIMEOUT_MS / 1000)
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:  # type: ignore[override]
        return max(0, int((self._deadline - time.monotonic()) * 1000))


# API Gateway's largest request payload: a body decompressed past it is cut there (the API then answers 413 for
# anything over its own, smaller cap), so a small bomb of a body cannot fill the local API's memory.
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
# zlib's window bits for each content coding: gzip's header and trailer, deflate's zlib wrapper.
CONTENT_CODINGS: dict[str, int] = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _decompressed(raw: bytes, wbits: int) -> bytes:
    """``raw`` decoded, at most MAX_PAYLOAD_BYTES + 1 bytes of it; raises zlib.error for data not so encoded."""
    return zlib.decompressobj(wbits).decompress(raw, MAX_PAYLOAD_BYTES + 1)


def request_to_event(request: Request) -> dict[str, Any]:
    """An API Gateway REST proxy event for ``request``."""
    raw = request.get_data(cache=False)
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if raw and coding in CONTENT_CODINGS:
        # API Gateway decompresses a request body in a coding it supports before the integration sees it (the
        # template enables compression); a body that does not decompress reaches the handler as sent.
        with contextlib.suppress(zlib.error):
            raw = _decompressed(raw, CONTENT_CODINGS[coding])
    try:
        body: str | None = raw.decode("utf-8") if raw else None
        is_b64 = False
    except UnicodeDecodeError:
        body, is_b64 = base64.b64encode(raw).decode(), True
    headers = {k: v for k, v in request.headers.items()}
    multi_headers = {k: request.headers.getlist(k) for k in request.headers.keys()}  # noqa: SIM118
    query = {k: v for k, v in request.args.items()} or None
    multi_query = {k: request.args.getlist(k) for k in request.args} or None
    return {
        "resource": request.path,
        "path": request.path,
        "httpMethod": request.method,
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": query,
        "multiValueQueryStringParameters": multi_query,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "stage": "local",
            "httpMethod": request.method,
            "path": request.path,
            # As API Gateway fills it: the caller's address and its User-Agent header.
            "identity": {
                "sourceIp": request.remote_addr or "127.0.0.1",
                "userAgent": request.headers.get("User-Agent"),
            },
            "resourcePath": request.path,
        },
        "body": body,
        "isBase64Encoded": is_b64,
    }


def proxy_event(method: str, path: str, *, headers: Mapping[str, str], body: str | None = None) -> dict[str, Any]:
    """The event the local API passes the handler for this request from 127.0.0.1, for callers that invoke the
    handler in-process (the AWS-call counts of a submit, in a test and a benchmark)."""
    builder = EnvironBuilder(
        path=path, method=method, headers=list(headers.items()), data=body, environ_base={"REMOTE_ADDR": "127.0.0.1"}
    )
    try:
        return request_to_event(Request(builder.get_environ()))
    finally:
        builder.close()


def response_from_result(result: dict[str, Any]) -> Response:
    body = result.get("body") or ""
    data = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode("utf-8")
    response = Response(data, status=int(result.get("statusCode", 200)))
    for key, value in (result.get("headers") or {}).items():
        response.headers[key] = str(value)
    for key, values in (result.get("multiValueHeaders") or {}).items():
        response.headers.remove(key)
        for value in values:
            response.headers.add(key, str(value))
    return response


class LocalApiServer:
    """A threaded HTTP server on loopback in front of one Lambda handler.

    ``redirects`` maps exact paths to where a GET or HEAD redirects (``/`` to the playground, which API Gateway
    has no route for); everything else reaches the handler, which serves ``/playground`` and ``/docs`` itself.
    """

    def __init__(
        self,
        handler: LambdaHandler,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        redirects: dict[str, str] | None = None,
        fd: int | None = None,
        stream_handler: StreamHandler | None = None,
        gateway: LocalGateway | None = None,
    ) -> None:
        """``fd``: serve on this listening socket (bound by a parent, shared by several API processes) instead of
        binding ``host:port``. ``stream_handler`` answers the streaming route (``GET /v1/jobs/{id}/events``);
        without one that route reaches ``handler`` like any other. ``gateway``: API Gateway's authorizer in front of
        the routes it guards (:mod:`localcloud.gateway`); without one no request carries a caller."""
        self._gateway = gateway
        self._handler = handler
        self._stream_handler = stream_handler
        self._redirects = redirects or {}
        self._server: BaseWSGIServer = make_server(host, port, self._wsgi, threaded=True, fd=fd)
        self._thread: threading.Thread | None = None
        # One invocation at a time, as in one Lambda execution environment: the handler's router keeps the
        # current event on a module-level object, so concurrent calls would answer each other's requests.
        self._invoke_lock = threading.Lock()
        self._invoking_since: float | None = None
        if fd is not None:
            self._accept_only_when_idle()

    def _accept_only_when_idle(self) -> None:
        """On a socket shared by several API processes, take no connection while a long invocation runs here, as
        API Gateway hands a request only to an idle Lambda environment: a request held by `Prefer: wait` would
        otherwise stall every connection this process accepted meanwhile, for up to 25 s. A short invocation
        does not hold accepting back (the next request would wait milliseconds for it). Non-blocking, so that a
        process that loses the race for a connection to another gets EAGAIN (which the server ignores)."""
        self._server.socket.setblocking(False)
        accept = self._server.get_request

        def get_request() -> tuple[Any, Any]:
            since = self._invoking_since
            if since is not None and time.monotonic() - since > LONG_INVOCATION_S:
                with self._invoke_lock:  # wait until this process is idle
                    pass
            return accept()

        self._server.get_request = get_request  # type: ignore[method-assign]

    @property
    def url(self) -> str:
        return f"http://{self._server.host}:{self._server.port}"

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        if request.method in {"GET", "HEAD"} and request.path in self._redirects:
            return redirect(self._redirects[request.path], code=302)(environ, start_response)
        if (request.content_length or 0) > APIGW_MAX_BODY:
            too_big = Response(b'{"message":"Request Too Long"}', status=413, content_type="application/json")
            return too_big(environ, start_response)
        event = request_to_event(request)
        stream_match = STREAM_ROUTE.match(request.path) if request.method in {"GET", "HEAD"} else None
        if stream_match is not None and self._stream_handler is not None:
            event["resource"] = "/v1/jobs/{job_id}/events"
            event["pathParameters"] = {"job_id": stream_match.group("job_id")}
        refusal = self._gateway.admit(event) if self._gateway is not None else None
        if refusal is not None:
            return response_from_result(refusal)(environ, start_response)
        if stream_match is not None and self._stream_handler is not None:
            return self._stream(event)(environ, start_response)
        with self._invoke_lock:
            self._invoking_since = time.monotonic()
            try:
                result = self._handler(event, LocalLambdaContext())
            finally:
                self._invoking_since = None
        return response_from_result(result)(environ, start_response)

    def _stream(self, event: dict[str, Any]) -> Response:
        assert self._stream_handler is not None
        answer = self._stream_handler(event, LocalStreamContext())
        # direct_passthrough: werkzeug writes (and flushes) each chunk as the iterator yields it.
        response = Response(answer.body, status=int(answer.status), direct_passthrough=True)
        for key, value in answer.headers.items():
            response.headers[key] = str(value)
        return response

    def serve_forever(self) -> None:
        """Serve on this thread until ``stop()`` (from another thread)."""
        self._server.serve_forever()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="sdq-local-api", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
