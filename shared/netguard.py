"""SSRF guard for callback URLs: checked at submit time and again, after DNS resolution, at send time."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}

# The ports a public receiver may listen on: 443 (HTTPS) and 8443 (the usual alternate HTTPS port). Webhook
# receivers are web servers; any other port would let a callback URL knock on mail, database or admin ports of
# public hosts from the stack's addresses. Plain http (80) is never allowed to a public host. Loopback receivers
# (the local profile only) may use any port: test receivers bind ephemeral ones.
ALLOWED_PORTS = (443, 8443)
# The longest a callback host's DNS lookup may take at send time; past it the attempt is retried later.
DNS_TIMEOUT_S = 3.0


class UnsafeUrl(ValueError):
    """A callback URL that could reach something other than a public HTTPS receiver."""


class HostUnresolved(Exception):
    """The callback host has no address at this moment: DNS failed or answered that the name does not exist.

    Not a safety verdict (nothing was resolved to check), so the delivery is retried on the normal schedule.
    A temporary failure (``EAI_AGAIN``) and NXDOMAIN (``EAI_NONAME``) are treated alike: a resolver cannot
    tell a name that is about to exist (a record being created or propagating, a negative answer cached) from
    one that never will, and a retry costs little; a host that still does not resolve when the schedule runs
    out is given up as ``failed``.
    """


def parse_ip_literal(host: str) -> IPAddress | None:
    """Parse ``host`` as an IP address in any spelling a resolver would accept (decimal, hex, octal, short).

    ``inet_aton`` accepts ``2852039166``, ``0xA9FEA9FE``, ``0251.0376.0251.0376`` and ``169.254.43518``; all of
    them mean 169.254.169.254 to a socket, so all of them must be treated as that address.
    """
    candidate = host.strip("[]")
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        pass
    try:
        packed = socket.inet_aton(candidate)
    except OSError:
        return None
    return ipaddress.IPv4Address(packed)


def _effective(ip: IPAddress) -> IPAddress:
    """Unwrap IPv4-mapped / 6to4 / Teredo IPv6 forms to the IPv4 address they reach."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]
    return ip


def is_public(ip: IPAddress) -> bool:
    """True for globally routable unicast addresses only."""
    eff = _effective(ip)
    return bool(eff.is_global) and not (eff.is_multicast or eff.is_reserved or eff.is_unspecified)


def is_loopback(ip: IPAddress) -> bool:
    return _effective(ip).is_loopback


def check_callback_url(url: str, *, allow_loopback: bool) -> str:
    """Validate a callback URL's shape without network access; returns it unchanged or raises UnsafeUrl.

    Rules: ``https`` to a public host on one of :data:`ALLOWED_PORTS`; plain ``http`` (any port) only to a
    loopback host and only when ``allow_loopback`` (the local profile). No credentials in the URL, no IP
    literal that is not public.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in {"https", "http"}:
        raise UnsafeUrl("callback_url must use https")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("callback_url must not contain credentials")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise UnsafeUrl("callback_url has no host")
    if parse_ip_literal(host) is None:
        try:  # what the resolver, the TLS handshake and the HTTP client will need: an empty or over-long label,
            host.encode("idna")  # or an xn-- label that is no valid punycode, fails here
            _ = httpx.URL(url).host
        except (UnicodeError, httpx.InvalidURL) as exc:
            raise UnsafeUrl("callback_url has an invalid host name") from exc
    try:
        _ = parts.port
    except ValueError as exc:
        raise UnsafeUrl("callback_url has an invalid port") from exc
    ip = parse_ip_literal(host)
    loopback = host in _LOOPBACK_NAMES or host.endswith(".localhost") or (ip is not None and is_loopback(ip))
    if loopback:
        if not allow_loopback:
            raise UnsafeUrl("callback_url must not point at this host (loopback)")
        return url
    if scheme != "https":
        raise UnsafeUrl("callback_url must use https")
    if (parts.port or 443) not in ALLOWED_PORTS:
        raise UnsafeUrl(f"callback_url port must be one of {', '.join(map(str, ALLOWED_PORTS))}")
    if ip is not None and not is_public(ip):
        raise UnsafeUrl("callback_url must not point at a private, link-local or reserved address")
    return url


# Resolver threads in a process, and how many of them one owner's (a tenant's) lookups may hold at once.
RESOLVER_THREADS = 8
LOOKUPS_PER_OWNER = 2


@lru_cache(maxsize=1)
def _resolver() -> ThreadPoolExecutor:
    # getaddrinfo takes no timeout; a lookup runs here so the caller can stop waiting for it. A lookup that hangs
    # keeps its thread until the system resolver gives up (its own timeouts), never the caller.
    return ThreadPoolExecutor(max_workers=RESOLVER_THREADS, thread_name_prefix="sdq-dns")


_running: dict[tuple[str, int], Future[list[Any]]] = {}
_running_lock = threading.Lock()
_owner_slots: dict[str, threading.BoundedSemaphore] = {}


def _lookup(host: str, port: int, owner: str | None, timeout_s: float) -> Future[list[Any]]:
    """The lookup of ``host`` under way, or a new one: a host whose DNS hangs holds one resolver thread however
    many deliveries ask for it. A new lookup for ``owner`` first waits (up to ``timeout_s``) until fewer than
    ``LOOKUPS_PER_OWNER`` of that owner's are running, so one tenant's hosts whose DNS hangs hold at most that
    many threads, never the ones other tenants' lookups need. Raises HostUnresolved when the wait runs out."""
    key = (host, port)
    with _running_lock:
        running = _running.get(key)
        if running is not None and not running.done():
            return running
        slots = None if owner is None else _owner_slots.setdefault(owner, threading.BoundedSemaphore(LOOKUPS_PER_OWNER))
    if slots is not None and not slots.acquire(timeout=max(0.0, timeout_s)):
        raise HostUnresolved(
            f"callback host {host!r} did not resolve within {timeout_s:.0f}s: the tenant's other callback hosts"
            " are still being resolved"
        )
    with _running_lock:
        running = _running.get(key)
        if running is not None and not running.done():  # another caller started it while this one waited
            if slots is not None:
                slots.release()
            return running
        lookup = _resolver().submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        _running[key] = lookup
    lookup.add_done_callback(lambda done: _forget(key, done, slots))
    return lookup


def _forget(key: tuple[str, int], lookup: Future[list[Any]], slots: threading.BoundedSemaphore | None) -> None:
    with _running_lock:
        if _running.get(key) is lookup:
            del _running[key]
    if slots is not None:
        slots.release()


def resolve_public(
    host: str, port: int, *, allow_loopback: bool, timeout_s: float = DNS_TIMEOUT_S, owner: str | None = None
) -> list[str]:
    """Resolve ``host`` and return its addresses, refusing the lot if any of them is not public.

    Called right before each webhook delivery, so a DNS answer that changed since submit (rebinding)
    is caught. ``owner``: the tenant whose webhook it is (its lookups share a bound, :func:`_lookup`). Raises
    UnsafeUrl for a non-public address, HostUnresolved when DNS gives no answer now or none within ``timeout_s``.
    """
    started = time.monotonic()
    lookup = _lookup(host, port, owner, timeout_s)
    try:
        infos = lookup.result(timeout=max(0.0, timeout_s - (time.monotonic() - started)))
    except (FutureTimeout, CancelledError) as exc:  # cancelled: a caller sharing it gave up before it started
        lookup.cancel()
        raise HostUnresolved(f"callback host {host!r} did not resolve within {timeout_s:.0f}s") from exc
    except socket.gaierror as exc:
        raise HostUnresolved(f"callback host {host!r} does not resolve: {exc.strerror or exc}") from exc
    addresses = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if is_public(ip) or (allow_loopback and is_loopback(ip)):
            addresses.append(str(ip))
            continue
        raise UnsafeUrl(f"callback host {host!r} resolves to a non-public address")
    return addresses
