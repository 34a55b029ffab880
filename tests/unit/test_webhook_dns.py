"""Webhook delivery when the callback host's DNS gives no answer: a retry, never a `blocked` verdict."""

from __future__ import annotations

import socket
from typing import Any

import pytest

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
