"""Step Functions in a process of its own, beside the local cloud's: the API and every execution's interpreter.

moto's ASL interpreter runs each execution in threads of the process that serves the Step Functions API. In the
local cloud's own process those threads held the GIL for about a third of the time under load (building each
execution's program, evaluating its states, a thread per state), and every AWS call of the API, the worker and
the Lambdas waited behind them. Here a second moto server serves Step Functions alone, with execution on, in a
process with a core and a GIL of its own; the local cloud forwards every Step Functions request to it
(:class:`StatesForwarder`, by the ``X-Amz-Target`` prefix every Step Functions call carries), so clients keep one
endpoint. The interpreter's own calls (Lambda ``Invoke``, DynamoDB ``UpdateItem``) go to the local cloud's port
(``MOTO_PORT``), where the Lambdas run in-process as before, over kept-alive connections.

The process (:mod:`localcloud.executionsprocess`) prints one line with its port once it serves; it exits when its
stdin closes, so a parent that dies takes it along, and it ignores Ctrl-C (its parent stops it).

An execution's X-Ray trace goes on as on AWS (:func:`carry_trace_headers`): ``StartExecution``'s ``traceHeader``
is kept with the execution (``DescribeExecution`` answers it), and each Lambda task's ``Invoke`` carries it as its
``X-Amzn-Trace-Id`` header, which the local Lambda runtime hands to the function (:mod:`localcloud.lambdas`).
"""

from __future__ import annotations

import http.client
import logging
import os
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from localcloud.keepalive import KEEP_ALIVE_ENV
from shared.tracing import HTTP_TRACE_HEADER

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

REPO_ROOT = Path(__file__).resolve().parent.parent
READY = "sdq-executions-ready"
TARGET_PREFIX = "AWSStepFunctions."
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"})
LOG = logging.getLogger("sdq.localcloud.executions")


class ExecutionsProcess:
    """The Step Functions process: started here, serving once :meth:`wait_ready` returns its port."""

    def __init__(self, *, host: str, cloud_port: int) -> None:
        self.host = host
        self._ready = threading.Event()
        self._port: int | None = None
        env = {**os.environ, **KEEP_ALIVE_ENV, "MOTO_PORT": str(cloud_port)}
        self._proc: subprocess.Popen[str] = subprocess.Popen(
            [sys.executable, "-m", "localcloud.executionsprocess", host],
            cwd=str(REPO_ROOT),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            process_group=0,  # Ctrl-C goes to the parent alone, which stops this one
        )
        threading.Thread(target=self._read_stdout, name="sdq-executions-out", daemon=True).start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _read_stdout(self) -> None:
        stdout: IO[str] = self._proc.stdout  # type: ignore[assignment]
        for line in stdout:
            if not self._ready.is_set() and line.startswith(READY):
                self._port = int(line.split()[1])
                self._ready.set()
                continue
            sys.stdout.write(line)

    def wait_ready(self, timeout_s: float = 120.0) -> int:
        """The port it serves on; raises when it exits or does not serve in time."""
        waited = 0.0
        while not self._ready.wait(0.1):
            waited += 0.1
            if self._proc.poll() is not None or waited >= timeout_s:
                raise RuntimeError(f"the Step Functions process did not start (exit code {self._proc.poll()})")
        assert self._port is not None
        return self._port

    def alive(self) -> bool:
        return self._proc.poll() is None

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                stream.close()


class StatesForwarder:
    """WSGI middleware: Step Functions requests go to the Step Functions process, everything else to ``app``."""

    def __init__(self, app: WSGIApplication, target: ExecutionsProcess | None = None) -> None:
        self.app = app
        self.target = target  # set once the process is started (it needs the local cloud's port)
        self._idle: list[http.client.HTTPConnection] = []  # kept open between requests, each used by one at a time
        self._lock = threading.Lock()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith(TARGET_PREFIX):
            return self.app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {key[5:].replace("_", "-"): value for key, value in environ.items() if key.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        headers["Content-Length"] = str(len(body))
        path = environ.get("PATH_INFO", "/") or "/"
        if environ.get("QUERY_STRING"):
            path += "?" + environ["QUERY_STRING"]
        status, reason, response_headers, data = self._send(environ["REQUEST_METHOD"], path, body, headers)
        kept = [(k, v) for k, v in response_headers if k.lower() not in _HOP_BY_HOP]
        start_response(f"{status} {reason}", kept)
        return [data]

    def _send(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """One request over an idle connection to the Step Functions process (a new one if none is idle, or if the
        idle one was closed)."""
        for attempt in (1, 2):
            with self._lock:
                connection = self._idle.pop() if self._idle and attempt == 1 else None
            if connection is None:
                if self.target is None:
                    raise RuntimeError("the Step Functions process is not started")
                port = self.target.wait_ready()
                connection = http.client.HTTPConnection(self.target.host, port, timeout=300)
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except (ConnectionError, http.client.BadStatusLine):
                connection.close()
                if attempt == 2:
                    raise
                continue
            if response.will_close:
                connection.close()
            else:
                with self._lock:
                    self._idle.append(connection)
            return response.status, response.reason, response.getheaders(), data
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


# -- the execution's trace, carried to its Lambda tasks ----------------------------------------------------------

_EXECUTIONS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()  # ARN -> moto's execution
_INVOKING: ContextVar[str | None] = ContextVar("sdq_sfn_trace_header", default=None)
_trace_saved: dict[str, Any] = {}
# Held while an execution starts and is registered: its thread may reach its first Lambda task before
# StartExecution returns, and that task waits here until the execution's trace header can be found.
_STARTING = threading.Lock()


def _start_execution(self: Any) -> Any:
    """moto's StartExecution, with the request's ``traceHeader`` given to the execution (moto drops it)."""
    from moto.core.responses import ActionResult

    with _STARTING:
        execution = self.stepfunction_backend.start_execution(
            self._get_param("stateMachineArn"),
            self._get_param("name"),
            self._get_param("input", if_none="{}"),
            trace_header=self._get_param("traceHeader"),
        )
        if getattr(execution, "trace_header", None):
            _EXECUTIONS[execution.exec_arn] = execution
    return ActionResult({"executionArn": execution.execution_arn, "startDate": execution.start_date})


def _describe_execution(self: Any) -> Any:
    result = _trace_saved["describe_execution"](self)
    execution = _EXECUTIONS.get(self._get_param("executionArn"))
    if execution is not None:
        result.result["traceHeader"] = execution.trace_header
    return result


def _lambda_integration(original: Callable[..., None]) -> Callable[..., None]:
    """A Lambda task's invocation, made while its execution's trace header is the one :func:`_add_trace_header`
    puts on the request."""

    def invoke(env: Any, *args: Any, **kwargs: Any) -> None:
        with _STARTING:  # an execution started a moment ago is registered by now
            pass
        execution = _EXECUTIONS.get(env.states.context_object.context_object_data["Execution"]["Id"])
        token = _INVOKING.set(execution.trace_header if execution is not None else None)
        try:
            original(env, *args, **kwargs)
        finally:
            _INVOKING.reset(token)

    return invoke


def _add_trace_header(request: Any, **_: Any) -> None:
    header = _INVOKING.get()
    if header:
        request.headers[HTTP_TRACE_HEADER] = header


def _traced_client_for(original: Callable[..., Any]) -> Callable[..., Any]:
    def client_for(*args: Any, **kwargs: Any) -> Any:
        client = original(*args, **kwargs)
        client.meta.events.register("before-sign.lambda.Invoke", _add_trace_header, unique_id="sdq-trace-header")
        return client

    return client_for


def carry_trace_headers() -> None:
    """Keep each execution's ``traceHeader`` and send it with its Lambda tasks' invocations, as Step Functions
    does for a traced state machine (on AWS the header's Parent is then the task's own segment; here it is the
    starter's, which carries the same trace id)."""
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
    from moto.stepfunctions.responses import StepFunctionResponse

    if _trace_saved:
        return
    _trace_saved.update(
        start_execution=StepFunctionResponse.start_execution,
        describe_execution=StepFunctionResponse.describe_execution,
        integration=lambda_eval_utils.execute_lambda_function_integration,
        client_for=lambda_eval_utils.boto_client_for,
    )
    StepFunctionResponse.start_execution = _start_execution  # type: ignore[method-assign]
    StepFunctionResponse.describe_execution = _describe_execution  # type: ignore[method-assign]
    lambda_eval_utils.execute_lambda_function_integration = _lambda_integration(_trace_saved["integration"])
    lambda_eval_utils.boto_client_for = _traced_client_for(_trace_saved["client_for"])
