"""The local API in processes of its own, beside the local cloud's: each serves the API Lambda handler, as one
Lambda execution environment does, on one listening socket that the parent binds and every process accepts on.

Apart from the local cloud (moto, the in-process Lambdas and the event pollers), the API has a core and a GIL of
its own, and several processes answer concurrent requests the way concurrent Lambda environments would.

A process imports the handler at once, then waits for one JSON line on stdin (its environment, known once the cloud
is provisioned), then serves; it exits when stdin closes, so a parent that dies takes its API processes along.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from localcloud.gateway import GatewayRules

REPO_ROOT = Path(__file__).resolve().parent.parent
READY = "sdq-api-ready"


def default_api_processes() -> int:
    """One API process per core, at least two (on 2 cores, two answered 4 clients' submits with a p99 of
    0.97 s against 1.3 s for one, with the worker generating: docs/performance.md), at most four."""
    return max(2, min(4, os.cpu_count() or 1))


class ApiProcesses:
    """``count`` API processes on one socket bound here (``port`` 0: any free port)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 8000, count: int = 1) -> None:
        try:
            self._socket = socket.create_server((host, port), backlog=128)
        except OSError as exc:
            # As werkzeug's own server answered a taken port: a line that says what to do, no traceback.
            print(exc.strerror, file=sys.stderr)
            if exc.errno == errno.EADDRINUSE:
                print(
                    f"Port {port} is in use by another program. Either identify and stop that program, or start the"
                    " server with a different port.",
                    file=sys.stderr,
                )
            raise SystemExit(1) from exc
        self.host = host
        self.port = int(self._socket.getsockname()[1])
        self._procs: list[subprocess.Popen[str]] = []
        fd = self._socket.fileno()
        try:
            for _ in range(max(1, count)):
                self._procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "localcloud.apiprocess", str(fd)],
                        cwd=str(REPO_ROOT),
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                        pass_fds=(fd,),
                        process_group=0,  # Ctrl-C goes to sdq up alone, which stops these (stdin closes)
                    )
                )
        except BaseException:
            self.stop()  # the processes started so far
            raise

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def serve(
        self, env: dict[str, str], *, redirects: dict[str, str], gateway: GatewayRules, timeout_s: float = 120.0
    ) -> None:
        """Hand every process its environment and the gateway's rules, and return once each serves; raises when one
        does not."""
        line = json.dumps({"env": env, "redirects": redirects, "gateway": gateway.as_json()}) + "\n"
        for proc in self._procs:
            stdin: IO[str] = proc.stdin  # type: ignore[assignment]
            stdin.write(line)
            stdin.flush()
        deadline = time.monotonic() + timeout_s
        for proc in self._procs:
            if not _await_ready(proc, deadline):
                raise RuntimeError(f"API process {proc.pid} did not start (exit code {proc.poll()})")

    def dead(self) -> list[int]:
        """Exit codes of the API processes that have exited."""
        return [code for code in (p.poll() for p in self._procs) if code is not None]

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        self._socket.close()


def _await_ready(proc: subprocess.Popen[str], deadline: float) -> bool:
    """Read the process's stdout until its READY line (its own output goes to ours meanwhile)."""
    stdout: IO[str] = proc.stdout  # type: ignore[assignment]
    found = threading.Event()

    def read() -> None:
        for text in stdout:
            if text.strip() == READY:
                found.set()
                break
            sys.stdout.write(text)
        # Whatever it prints later (before it exits) still reaches our stdout.
        for text in stdout:
            sys.stdout.write(text)

    threading.Thread(target=read, name=f"api-{proc.pid}-out", daemon=True).start()
    while time.monotonic() < deadline and proc.poll() is None:
        if found.wait(0.1):
            return True
    return found.is_set()


def _exit_when_orphaned() -> None:
    """The parent closed our stdin (stop, or it died): nothing else will stop us."""
    sys.stdin.read()
    os._exit(0)


def main(fd: int) -> None:
    # Ctrl-C reaches the whole process group: the parent stops us (SIGTERM, or closing stdin), with no traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from handlers import api, authorizer, events  # the slow import, done while the parent starts the cloud
    from localcloud.api import LocalApiServer, LocalLambdaContext
    from localcloud.gateway import GatewayRules, LocalGateway

    request = json.loads(sys.stdin.readline() or "{}")
    if "env" not in request:
        return
    os.environ.update(request["env"])
    from localcloud.service import quiet_local_logs

    quiet_local_logs()
    # Warm, as a provisioned Lambda would be: the clients and the router are built before the first request.
    api.services()
    api.lambda_handler(
        {"path": "/health", "httpMethod": "GET", "headers": {}, "requestContext": {}}, LocalLambdaContext()
    )
    gc.freeze()  # the handler's modules stay for good: out of the collector's full passes
    events.services()
    authorizer.deps()
    gateway = LocalGateway(GatewayRules.from_json(request["gateway"]), authorizer.lambda_handler, LocalLambdaContext)
    server = LocalApiServer(
        api.lambda_handler,
        fd=fd,
        redirects=request["redirects"],
        stream_handler=events.stream_handler,
        gateway=gateway,
    )
    threading.Thread(target=_exit_when_orphaned, name="orphan-watch", daemon=True).start()
    print(READY, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(int(sys.argv[1]))
