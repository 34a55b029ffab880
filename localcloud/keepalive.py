"""The local cloud's HTTP server, with keep-alive connections for the clients that ask for them.

werkzeug's development server closes the connection after every response, so every AWS call opens a TCP
connection and the server starts a thread for it: in the profile of the loaded stack (docs/performance.md)
accepting connections and starting their threads held the cloud's GIL longer than any AWS operation but one.
Here a connection stays open for the client's next request, and its thread with it, as AWS does, when the client
says it lives as long as its process: its User-Agent carries ``app/sdq-keepalive`` (boto3 adds it when the
process has ``AWS_SDK_UA_APP_ID=sdq-keepalive``, :data:`KEEP_ALIVE_ENV`). The stack's own processes (the API
processes, the worker ``sdq up`` starts, the Step Functions process) set it. Other clients keep werkzeug's
behaviour: one dropped without being closed (a test's short-lived boto3 client, say) would otherwise leave an
open socket to the garbage collector, which warns.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import traceback
from collections.abc import Iterable
from typing import Any

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

_NO_BODY_STATUSES = frozenset({204, 304})
KEEP_ALIVE_APP_ID = "sdq-keepalive"
KEEP_ALIVE_ENV = {"AWS_SDK_UA_APP_ID": KEEP_ALIVE_APP_ID}  # for a process whose AWS clients live as long as it does
_KEEP_ALIVE_AGENT = f"app/{KEEP_ALIVE_APP_ID}"
LOG = logging.getLogger("sdq.localcloud")


class BodyReader:
    """``wsgi.input``: at most ``length`` bytes of ``stream``, counting what is read."""

    def __init__(self, stream: Any, length: int) -> None:
        self._stream = stream
        self.left = length

    def read(self, size: int | None = -1) -> bytes:
        if self.left <= 0:
            return b""
        want = self.left if size is None or size < 0 else min(size, self.left)
        data: bytes = self._stream.read(want)
        self.left -= len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        if self.left <= 0:
            return b""
        want = self.left if size is None or size < 0 else min(size, self.left)
        data: bytes = self._stream.readline(want)
        self.left -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def __iter__(self) -> Any:
        return iter(self.readline, b"")

    def drain(self) -> None:
        """Read off what the application left of the body."""
        while self.left > 0 and self.read(65536):
            pass


class KeepAliveRequestHandler(WSGIRequestHandler):
    """werkzeug's request handler, answering each request with its length and keeping the connection."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # a response's head and body go out at once, not a delayed ACK apart

    def setup(self) -> None:
        super().setup()
        register = getattr(self.server, "register", None)
        if register is not None:
            register(self.connection)

    def finish(self) -> None:
        unregister = getattr(self.server, "unregister", None)
        if unregister is not None:
            unregister(self.connection)
        super().finish()

    def run_wsgi(self) -> None:
        everyone = getattr(self.server, "keep_alive_for_all", False)
        if not (everyone or _KEEP_ALIVE_AGENT in self.headers.get("User-Agent", "")) or (
            self.headers.get("Transfer-Encoding", "").lower().strip() == "chunked"
        ):
            self.close_connection = True
            super().run_wsgi()  # werkzeug's own path, which closes the connection
            return
        if self.headers.get("Expect", "").lower().strip(" \t") == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        environ = self.environ = self.make_environ()
        try:
            length = max(0, int(self.headers.get("Content-Length") or 0))
        except ValueError:
            self.close_connection = True
            super().run_wsgi()
            return
        body = BodyReader(self.rfile, length)
        environ["wsgi.input"] = body
        status: list[str] = []
        headers: list[tuple[str, str]] = []

        def start_response(status_line: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[:] = [status_line]
            headers[:] = response_headers
            return lambda data: chunks.append(data)

        chunks: list[bytes] = []
        try:
            result: Iterable[bytes] = self.server.app(environ, start_response)
            try:
                chunks.extend(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            body.drain()
        except (TimeoutError, ConnectionError):
            self.close_connection = True
            return
        except Exception:
            self.close_connection = True
            self.server.log("error", "Error on request %s:\n%s", self.requestline, traceback.format_exc())
            self._send(500, "INTERNAL SERVER ERROR", [("Content-Type", "text/plain")], [b"Internal Server Error"])
            return
        code_text, _, reason = status[0].partition(" ")
        self._send(int(code_text), reason, headers, chunks)

    def _send(self, code: int, reason: str, headers: list[tuple[str, str]], chunks: list[bytes]) -> None:
        payload = b"".join(chunks)
        bodiless = self.command == "HEAD" or code < 200 or code in _NO_BODY_STATUSES
        self.send_response(code, reason)
        has_length = False
        for key, value in headers:
            lowered = key.lower()
            if lowered in ("connection", "transfer-encoding", "keep-alive"):
                continue
            has_length = has_length or lowered == "content-length"
            self.send_header(key, value)
        if not has_length and not bodiless:
            self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if payload and not bodiless:
            self.wfile.write(payload)
        self.wfile.flush()


class KeepAliveServer(ThreadedWSGIServer):
    """A threaded WSGI server with keep-alive connections (see the module) that ends them all when it stops."""

    def __init__(self, *args: Any, keep_alive_for_all: bool = False, **kwargs: Any) -> None:
        self.keep_alive_for_all = keep_alive_for_all  # else only for clients that say so (KEEP_ALIVE_ENV)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def register(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def unregister(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_all(self) -> None:
        """End every open connection (their threads then finish)."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


def moto_request_handler() -> type:
    """moto's request handler on keep-alive connections, with per-request access logs sent to our logger at DEBUG."""
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    class QuietRequestHandler(KeepAliveRequestHandler, MotoRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            LOG.debug('"%s" %s %s', self.requestline, code, size)

        def log(self, type: str, message: str, *args: Any) -> None:
            getattr(LOG, "error" if type == "error" else "debug")(message, *args)

    return QuietRequestHandler


def cache_moto_module_list() -> None:
    """moto's dispatcher lists its package folder on disk (a listdir and ~150 stats, under its global lock) for each
    request to find the service; the list never changes while we run, so it is read once."""
    from moto import backends

    if not getattr(backends.list_of_moto_modules, "sdq_cached", False):
        modules = tuple(backends.list_of_moto_modules())

        def cached() -> tuple[str, ...]:
            return modules

        cached.sdq_cached = True  # type: ignore[attr-defined]
        backends.list_of_moto_modules = cached
