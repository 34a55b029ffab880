"""In-process Lambda runtime for the local cloud.

A WSGI middleware placed in front of moto's application intercepts Lambda ``Invoke`` requests
(``POST /2015-03-31/functions/{name}/invocations``), whether they come from boto3 or from moto's ASL
interpreter, and runs the function's stored ``Handler`` in this process with its stored ``Environment``.
Errors are reported the way AWS Lambda reports them, so Step Functions Retry/Catch behave as on AWS. A function
with reserved concurrency (the template's ``ReservedConcurrentExecutions``, or ``PutFunctionConcurrency``) runs at
most that many invocations at once: a synchronous one past it is refused with Lambda's throttling error
(``TooManyRequestsException``, 429), which callers retry as on AWS; an asynchronous one runs anyway (AWS queues
it).

An ``Invoke`` that carries an X-Ray trace (its ``X-Amzn-Trace-Id`` header: the state machine's task Lambdas get
their execution's) runs with it as ``_X_AMZN_TRACE_ID``, as the Lambda runtime sets it per invocation, so the
handler's logs (Powertools' ``xray_trace_id``), tracer and outgoing calls join that trace. Invocations share this
process, so the variable is the invocation's own: ``os.environ`` answers it from the calling context
(:class:`_InvocationEnviron`). Each traced invocation ends with the platform's ``REPORT`` line, naming the
function and the trace as the Lambda service logs them.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from shared.tracing import LAMBDA_TRACE_ENV

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

LOG = logging.getLogger("sdq.localcloud.lambdas")

INVOKE_PATH = re.compile(r"^/2015-03-31/functions/(?P<function>[^/]+)/invocations/?$")
_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/(?P<region>[a-z0-9-]+)/")
_FUNCTION_ARN = re.compile(
    r"^arn:aws[a-z-]*:lambda:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):function:"
    r"(?P<name>[A-Za-z0-9_-]+)(?::(?P<qualifier>[A-Za-z0-9$_-]+))?$"
)
_PARTIAL_ARN = re.compile(r"^(?P<account>\d{12}):function:(?P<name>[A-Za-z0-9_-]+)(?::(?P<qualifier>.+))?$")
_NAME_WITH_QUALIFIER = re.compile(r"^(?P<name>[A-Za-z0-9_-]+):(?P<qualifier>[A-Za-z0-9$_-]+)$")


@dataclass(frozen=True)
class FunctionSpec:
    """What the runtime needs to know about one deployed function."""

    name: str
    arn: str
    handler: str
    environment: Mapping[str, str] = field(default_factory=dict)
    timeout_s: int = 3
    memory_mb: int = 128
    code_root: Path | None = None
    reserved_concurrency: int | None = None  # None: none reserved (no bound but the account's)


@dataclass(frozen=True)
class FunctionRef:
    """A function reference as it appears in an Invoke request."""

    name: str
    qualifier: str | None
    region: str
    account: str | None


FunctionResolver = Callable[[FunctionRef], "FunctionSpec | None"]


class LambdaContext:
    """The subset of the AWS Lambda context object that handlers and Powertools read."""

    def __init__(self, spec: FunctionSpec, request_id: str) -> None:
        self.function_name = spec.name
        self.function_version = "$LATEST"
        self.invoked_function_arn = spec.arn
        self.memory_limit_in_mb = spec.memory_mb
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{spec.name}"
        self.log_stream_name = f"local/{request_id}"
        self._deadline = time.monotonic() + spec.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the function's configured timeout (not enforced locally)."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass(frozen=True)
class InvocationResult:
    """The outcome of one invocation: the JSON payload and, for errors, the function-error kind."""

    payload: bytes
    function_error: str | None = None
    request_id: str = ""


class _HandlerLoadError(Exception):
    """Raised when a handler cannot be imported; carries the AWS runtime error type."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def _error_payload(error_type: str, message: str) -> bytes:
    body = {"errorType": error_type, "errorMessage": message, "stackTrace": []}
    return json.dumps(body).encode()


def load_handler(spec: FunctionSpec) -> Callable[[Any, LambdaContext], Any]:
    """Import ``module.attr`` from the spec's handler string, as the Python Lambda runtime does."""
    module_name, _, attr = spec.handler.rpartition(".")
    if not module_name or not attr:
        raise _HandlerLoadError("Runtime.MalformedHandlerName", f"Bad handler '{spec.handler}'")
    if spec.code_root is not None and str(spec.code_root) not in sys.path:
        sys.path.insert(0, str(spec.code_root))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, SyntaxError or an error raised at import time
        raise _HandlerLoadError("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise _HandlerLoadError("Runtime.HandlerNotFound", f"Handler '{attr}' missing on module '{module_name}'")
    return fn


class EnvJournal:
    """Applies variables to ``os.environ`` and remembers what they replaced, for one ``restore()``."""

    def __init__(self) -> None:
        self._saved: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def apply(self, values: Mapping[str, str]) -> None:
        """Set ``values`` in ``os.environ``, remembering each key's first previous value."""
        with self._lock:
            for key, value in values.items():
                self._saved.setdefault(key, os.environ.get(key))
                os.environ[key] = value

    def restore(self) -> None:
        """Put every touched variable back as it was before the first ``apply``."""
        with self._lock:
            for key, value in self._saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            self._saved.clear()


# The trace header of the traced invocation running in this context.
_invocation_trace: ContextVar[str | None] = ContextVar("sdq_invocation_trace", default=None)


class _InvocationEnviron(os._Environ[str]):
    """``os.environ`` whose ``_X_AMZN_TRACE_ID``, inside a traced invocation, is that invocation's; everything
    else, and everything outside traced invocations, is the process's (which sets no trace)."""

    def __getitem__(self, key: str) -> str:
        header = _invocation_trace.get() if key == LAMBDA_TRACE_ENV else None
        return header if header is not None else str(super().__getitem__(key))


@contextmanager
def _traced(header: str | None) -> Iterator[None]:
    """Run the code inside as one invocation with ``header`` as its trace (None: none)."""
    if type(os.environ) is os._Environ:
        os.environ.__class__ = _InvocationEnviron  # same layout, one more lookup rule
    token = _invocation_trace.set(header)
    try:
        yield
    finally:
        _invocation_trace.reset(token)


def _report(spec: FunctionSpec, request_id: str, started: float, header: str) -> None:
    """The platform's end-of-invocation line for a traced invocation (on AWS, in the function's log group)."""
    fields = dict(part.split("=", 1) for part in header.split(";") if "=" in part)
    duration_ms = (time.monotonic() - started) * 1000
    sampled = "true" if fields.get("Sampled") == "1" else "false"
    print(
        f"REPORT RequestId: {request_id}\tFunction: {spec.name}\tDuration: {duration_ms:.2f} ms\t"
        f"XRAY TraceId: {fields.get('Root', '')}\tSegmentId: {fields.get('Parent', '')}\tSampled: {sampled}",
        flush=True,
    )


def invoke(
    spec: FunctionSpec,
    event: Any,
    base_env: Mapping[str, str] | None = None,
    journal: EnvJournal | None = None,
    trace_header: str | None = None,
) -> InvocationResult:
    """Run the function's handler in-process; exceptions become AWS-shaped function errors.

    The function's Environment holds the same values the whole local process uses, so it is applied
    to ``os.environ`` and left there (a per-call restore would race across concurrent invocations);
    the journal undoes it when the local cloud stops. ``trace_header``: the invocation's X-Ray trace, its
    ``_X_AMZN_TRACE_ID`` while it runs.
    """
    started = time.monotonic()
    with _traced(trace_header):
        result = _run(spec, event, base_env, journal)
    if trace_header:
        _report(spec, result.request_id, started, trace_header)
    return result


def _run(
    spec: FunctionSpec, event: Any, base_env: Mapping[str, str] | None, journal: EnvJournal | None
) -> InvocationResult:
    request_id = str(uuid.uuid4())
    (journal or EnvJournal()).apply({**(base_env or {}), **spec.environment})
    try:
        fn = load_handler(spec)
        result = fn(event, LambdaContext(spec, request_id))
    except _HandlerLoadError as exc:
        LOG.warning("lambda %s: %s: %s", spec.name, exc.error_type, exc)
        return InvocationResult(_error_payload(exc.error_type, str(exc)), "Unhandled", request_id)
    except Exception as exc:
        LOG.warning("lambda %s raised %s\n%s", spec.name, type(exc).__name__, traceback.format_exc())
        return InvocationResult(_error_payload(type(exc).__name__, str(exc)), "Unhandled", request_id)
    except SystemExit as exc:  # the Lambda runtime process would exit; report it the way AWS does
        message = f"RequestId: {request_id} Error: Runtime exited with error: exit status {exc.code}"
        return InvocationResult(_error_payload("Runtime.ExitError", message), "Unhandled", request_id)
    try:
        payload = json.dumps(result).encode()
    except (TypeError, ValueError) as exc:
        message = f"Unable to marshal response: {exc}"
        return InvocationResult(_error_payload("Runtime.MarshalError", message), "Unhandled", request_id)
    return InvocationResult(payload, None, request_id)


def parse_function_ref(raw: str, region: str, qualifier: str | None) -> FunctionRef:
    """Split a name, partial ARN or full ARN (URL-decoded) into its parts."""
    value = unquote(raw)
    if match := _FUNCTION_ARN.match(value):
        return FunctionRef(match["name"], match["qualifier"] or qualifier, match["region"], match["account"])
    if match := _PARTIAL_ARN.match(value):
        return FunctionRef(match["name"], match["qualifier"] or qualifier, region, match["account"])
    if match := _NAME_WITH_QUALIFIER.match(value):
        return FunctionRef(match["name"], match["qualifier"], region, None)
    return FunctionRef(value, qualifier, region, None)


def moto_function_resolver(ref: FunctionRef) -> FunctionSpec | None:
    """Look a function up in moto's Lambda backend (same process); None when it does not exist."""
    from moto.awslambda.models import lambda_backends
    from moto.core.models import DEFAULT_ACCOUNT_ID

    account = ref.account or DEFAULT_ACCOUNT_ID
    try:
        fn = lambda_backends[account][ref.region].get_function(ref.name, ref.qualifier)
    except Exception:
        return None
    if not fn.handler:
        return None  # container-image functions have no Handler: leave them to moto
    return FunctionSpec(
        name=fn.function_name,
        arn=fn.function_arn,
        handler=fn.handler,
        # Strings, as Lambda has them: CloudFormation turns a Number parameter's Ref into a string, moto keeps it
        # a number (and a number in os.environ fails the invocation).
        environment={k: str(v) for k, v in (fn.environment_vars or {}).items()},
        timeout_s=int(fn.timeout or 3),
        memory_mb=int(fn.memory_size or 128),
        reserved_concurrency=None if fn.reserved_concurrency is None else int(fn.reserved_concurrency),
    )


class LambdaInvokeMiddleware:
    """WSGI middleware that serves Lambda ``Invoke`` in-process and passes everything else on."""

    def __init__(
        self,
        app: WSGIApplication,
        *,
        default_region: str,
        resolver: FunctionResolver = moto_function_resolver,
        base_env: Callable[[], Mapping[str, str]] | None = None,
        journal: EnvJournal | None = None,
    ) -> None:
        self.app = app
        self.default_region = default_region
        self.resolver = resolver
        self.base_env = base_env or dict
        self.journal = journal or EnvJournal()
        self._running: dict[str, int] = {}  # function name -> invocations running now
        self._running_lock = threading.Lock()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Dispatch one WSGI request."""
        match = INVOKE_PATH.match(environ.get("PATH_INFO", ""))
        if environ.get("REQUEST_METHOD") != "POST" or match is None:
            return self.app(environ, start_response)
        query = parse_qs(environ.get("QUERY_STRING", ""))
        scope = _CREDENTIAL_SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
        region = scope["region"] if scope else self.default_region
        ref = parse_function_ref(match["function"], region, (query.get("Qualifier") or [None])[0])
        spec = self.resolver(ref)
        if spec is None:
            return self.app(environ, start_response)  # moto answers ResourceNotFoundException
        return self._invoke(spec, environ, start_response)

    def _invoke(self, spec: FunctionSpec, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        try:
            event = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            return _respond(
                start_response,
                "400 Bad Request",
                json.dumps({"Type": "User", "message": f"Could not parse request body into json: {exc}"}),
                {"x-amzn-ErrorType": "InvalidRequestContentException"},
            )
        invocation_type = environ.get("HTTP_X_AMZ_INVOCATION_TYPE", "RequestResponse")
        trace_header = environ.get("HTTP_X_AMZN_TRACE_ID") or None
        if invocation_type == "DryRun":
            return _respond(start_response, "204 No Content", "", {})
        if invocation_type == "Event":
            thread = threading.Thread(
                target=self._counted,
                args=(spec, event, trace_header, False),
                name=f"lambda-{spec.name}",
                daemon=True,
            )
            thread.start()
            return _respond(start_response, "202 Accepted", "", {})
        result = self._counted(spec, event, trace_header, True)
        if result is None:
            body = {
                "Type": "User",
                "message": "Rate Exceeded.",
                "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
            }
            return _respond(
                start_response,
                "429 Too Many Requests",
                json.dumps(body),
                {"x-amzn-ErrorType": "TooManyRequestsException", "x-amzn-RequestId": str(uuid.uuid4())},
            )
        headers = {"X-Amz-Executed-Version": "$LATEST", "x-amzn-RequestId": result.request_id}
        if result.function_error:
            headers["X-Amz-Function-Error"] = result.function_error
        return _respond(start_response, "200 OK", result.payload, headers)

    def _counted(
        self, spec: FunctionSpec, event: Any, trace_header: str | None, refuse: bool
    ) -> InvocationResult | None:
        """:func:`invoke`, counted against the function's reserved concurrency; None (nothing ran) when it is all
        in use and ``refuse`` is set."""
        with self._running_lock:
            running = self._running.get(spec.name, 0)
            if refuse and spec.reserved_concurrency is not None and running >= spec.reserved_concurrency:
                return None
            self._running[spec.name] = running + 1
        try:
            return invoke(spec, event, self.base_env(), self.journal, trace_header)
        finally:
            with self._running_lock:
                self._running[spec.name] -= 1


def _respond(start_response: StartResponse, status: str, body: bytes | str, headers: Mapping[str, str]) -> list[bytes]:
    data = body.encode() if isinstance(body, str) else body
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers.items()],
    )
    return [data]
