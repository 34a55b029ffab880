"""The local cloud answers only requests addressed to it by a loopback name: a guard against DNS rebinding.

moto serves the local stack's tables, queues, objects and executions on a loopback port with no authentication.
A web page the developer opens cannot reach it by that address (the browser keeps the page's origin apart), but it
can through a name of its own that its DNS re-points at 127.0.0.1 (DNS rebinding): the browser then counts the
local cloud's answers as the page's own, and the page reads and writes the tables. Such a request still carries the
page's name in its ``Host`` header, so the local cloud's servers answer only a request whose Host is a loopback name
(``127.0.0.1``, ``localhost``, ``[::1]``, or the address the server bound) with one of their own ports, and refuse
any other with 403 and nothing done. The stack's own clients (boto3 with the cloud's endpoint URL, the Step
Functions process's callbacks, a browser opening a presigned URL) name ``127.0.0.1:<port>``.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

LOG = logging.getLogger("sdq.localcloud")
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})
REFUSAL = b"The local cloud answers only requests for 127.0.0.1, localhost or [::1] with its port.\n"


class LoopbackHostGuard:
    """WSGI middleware: ``app`` answers requests whose ``Host`` is one of ``names`` (the loopback ones, and the
    address bound) with a port in ``ports`` (filled once the server has bound its own); every other gets 403."""

    def __init__(self, app: WSGIApplication, *, bound_host: str = "127.0.0.1", ports: Iterable[int] = ()) -> None:
        self.app = app
        self.names = LOOPBACK_NAMES | _host_names(bound_host)
        self.ports: set[int] = set(ports)

    def allows(self, host: str) -> bool:
        name, sep, port = host.strip().lower().rpartition(":")
        return bool(sep) and port.isdigit() and name in self.names and int(port) in self.ports

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        host = str(environ.get("HTTP_HOST", ""))
        if self.allows(host):
            return self.app(environ, start_response)
        LOG.warning("local cloud refused a request for host %r (not a loopback name with its port)", host[:100])
        start_response(
            "403 Forbidden", [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(REFUSAL)))]
        )
        return [REFUSAL]


def _host_names(host: str) -> frozenset[str]:
    """How a Host header names the address a server bound (none for a wildcard one: it has no name of its own)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return frozenset({host.lower()}) if host else frozenset()
    if ip.is_unspecified:
        return frozenset()
    return frozenset({f"[{ip}]" if ip.version == 6 else str(ip)})
