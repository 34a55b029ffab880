"""Webhook delivery when the callback host's DNS gives no answer: a retry, never a `blocked` verdict."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from shared.netguard import LOOKUPS_PER_OWNER, RESOLVER_THREADS, HostUnresolved, resolve_public
from workflows.webhooks import send_once

URL = "https://hooks.example.com/sdq"


def _failing_dns(code: int, message: str) -> Any:
    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(code, message)

    return getaddrinfo


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (socket.EAI_AGAIN, "Temporary failure in name resolution"),
        (socket.EAI_NONAME, "Name or service not known"),
    ],
)
def test_a_host_that_does_not_resolve_now_is_retried_not_blocked(
    monkeypatch: pytest.MonkeyPatch, code: int, message: str
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _failing_dns(code, message))
    attempt = send_once(URL, "{}", {}, allow_loopback=False)
    assert attempt.outcome == "retry"
    assert attempt.status is None
    assert attempt.error is not None
    assert "does not resolve" in attempt.error
    assert message in attempt.error


def test_a_host_that_resolves_to_a_private_address_is_still_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    attempt = send_once(URL, "{}", {}, allow_loopback=False)
    assert attempt.outcome == "blocked"
    assert attempt.error is not None
    assert "non-public" in attempt.error


def hanging_dns(monkeypatch: pytest.MonkeyPatch, hangs: str, release: threading.Event) -> list[str]:
    """DNS whose name servers for hosts starting with ``hangs`` never answer (until ``release``); every other host
    resolves at once to a public address. Returns the hung lookups, as they start."""
    hung: list[str] = []

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host.startswith(hangs):
            hung.append(host)
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return hung


def test_a_host_whose_dns_hangs_holds_one_resolver_thread_not_the_other_hosts_lookups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tenant's callback host whose name server never answers: every delivery to it gives up after the DNS
    timeout, and the lookups of other tenants' hosts still run at once."""
    release = threading.Event()
    hung_lookups = hanging_dns(monkeypatch, "hangs.example.com", release)
    try:
        for _ in range(8):
            with pytest.raises(HostUnresolved, match="did not resolve within"):
                resolve_public("hangs.example.com", 443, allow_loopback=False, timeout_s=0.1)
        assert resolve_public("ok.example.com", 443, allow_loopback=False, timeout_s=2.0) == ["93.184.216.34"]
        assert hung_lookups == ["hangs.example.com"]
    finally:
        release.set()


def test_one_tenants_hosts_whose_dns_hangs_leave_resolver_threads_for_other_tenants(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tenant that points its jobs at many hosts whose name servers never answer holds at most
    LOOKUPS_PER_OWNER resolver threads: its further webhooks give up after the DNS timeout without taking a thread,
    and another tenant's webhook, to a host that answers, is delivered at once."""
    release = threading.Event()
    hung = hanging_dns(monkeypatch, "tarpit-", release)
    try:
        for n in range(RESOLVER_THREADS + 2):  # more hosts than the process has resolver threads
            url = f"https://tarpit-{n}.example.net/hook"
            attempt = send_once(url, "{}", {}, allow_loopback=False, timeout_s=0.2, owner="attacker")
            assert (attempt.outcome, "did not resolve within" in (attempt.error or "")) == ("retry", True)
        assert len(hung) == LOOKUPS_PER_OWNER
        started = time.monotonic()
        assert resolve_public("hooks.victim.example", 443, allow_loopback=False, timeout_s=2.0, owner="victim") == [
            "93.184.216.34"
        ]
        assert time.monotonic() - started < 1.0
    finally:
        release.set()
    # Once its lookups end, the tenant's webhooks resolve again.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            assert resolve_public("ok.example.com", 443, allow_loopback=False, timeout_s=0.2, owner="attacker")
            break
        except HostUnresolved:
            time.sleep(0.05)
    else:
        pytest.fail("the tenant's lookups never got their threads back")
