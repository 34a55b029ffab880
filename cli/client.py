"""Where the CLI finds the API, and the API as plain JSON dicts for the local tools (demo, soak, benchmarks, tests).

Both sit on the installable client, :mod:`sdq_client`: the same requests, the same typed errors
(``ApiError`` here is ``sdq_client.ApiError``, with ``status``, ``code``, ``body`` and ``headers``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdq_client import ApiError, Client, ConfigurationError, job_path
from sdq_client.client import check_api_url

LOCAL_STATE_FILE = "local.json"

__all__ = [
    "LOCAL_STATE_FILE",
    "ApiError",
    "BadEndpoint",
    "Endpoint",
    "NoEndpoint",
    "SdqClient",
    "read_local_state",
    "resolve_endpoint",
    "state_dir",
]


class NoEndpoint(ConfigurationError):
    """Neither flags, environment nor `.sdq/local.json` say where the API is."""


class BadEndpoint(ConfigurationError):
    """What says where the API is cannot be used: a URL that is not an http(s) URL, a `.sdq/local.json` that cannot
    be read."""


@dataclass(frozen=True)
class Endpoint:
    url: str
    api_key: str


def state_dir() -> Path:
    return Path(os.environ.get("SDQ_STATE_DIR", ".sdq"))


def read_local_state() -> dict[str, Any] | None:
    """The file ``sdq up`` writes in ``.sdq/`` (None when there is none); BadEndpoint, naming it, when it cannot be
    read or is not what ``sdq up`` writes (a JSON object, its ``api_url`` and ``api_key`` strings)."""
    local = state_dir() / LOCAL_STATE_FILE
    fix = "delete it (`sdq up` writes it again)"
    try:
        data = json.loads(local.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadEndpoint(f"Cannot read {local}: {exc.strerror or exc}.") from None
    except ValueError as exc:  # not JSON, or not UTF-8
        raise BadEndpoint(f"{local} is not the JSON `sdq up` writes ({exc}): {fix}.") from None
    if not isinstance(data, dict) or any(not isinstance(data.get(name), str | None) for name in ("api_url", "api_key")):
        raise BadEndpoint(f"{local} is not what `sdq up` writes (a JSON object of strings): {fix}.")
    return data


def resolve_endpoint(url: str | None = None, api_key: str | None = None) -> Endpoint:
    """Flags, then ``SDQ_API_URL``/``SDQ_API_KEY``, then the file ``sdq up`` writes in ``.sdq/``.

    The local stack's key goes only to the local stack: with a URL given elsewhere and no key, NoEndpoint names
    that URL rather than sending it the key of ``.sdq/local.json``. A URL that is not an http(s) URL, or a
    ``.sdq/local.json`` that cannot be read, is BadEndpoint, saying where it came from."""
    source = "--api-url" if url else "SDQ_API_URL"
    url = url or os.environ.get("SDQ_API_URL")
    api_key = api_key or os.environ.get("SDQ_API_KEY")
    local_url: str | None = None
    if not (url and api_key):
        data = read_local_state()
        if data is not None:
            local_url, local_key = data.get("api_url"), data.get("api_key")
            if not url:
                url, source = local_url, str(state_dir() / LOCAL_STATE_FILE)
            if not api_key and local_url and _same_api(url, local_url):
                api_key = local_key
    if url:
        try:
            check_api_url(url)
        except ConfigurationError as exc:
            raise BadEndpoint(f"{source}: {exc}.") from None
    if not url:
        raise NoEndpoint(
            "No API endpoint: run `sdq up` in this folder, or set SDQ_API_URL and SDQ_API_KEY (or pass "
            "--api-url/--api-key)."
        )
    if not api_key:
        local_note = f" (the key in {state_dir() / LOCAL_STATE_FILE} is for {local_url} only)" if local_url else ""
        raise NoEndpoint(f"No API key for {url}: set SDQ_API_KEY or pass --api-key{local_note}.")
    return Endpoint(url.rstrip("/"), api_key)


def _same_api(url: str | None, other: str) -> bool:
    return url is not None and url.rstrip("/").lower() == other.rstrip("/").lower()


class SdqClient:
    """The API with plain dicts in and out, for tools that keep or compare raw bodies. Typed code wants
    :class:`sdq_client.Client`, which this wraps (``.api``)."""

    def __init__(self, endpoint: Endpoint, *, timeout: float = 30.0) -> None:
        self.api = Client(endpoint.url, endpoint.api_key, timeout=timeout)

    def close(self) -> None:
        self.api.close()

    def __enter__(self) -> SdqClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        resp = self.api.request(method, path, **kwargs)
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
        if not isinstance(body, dict):
            raise ApiError(resp.status_code, body, resp.headers)
        return body

    def submit(
        self, request: dict[str, Any], *, idempotency_key: str | None = None, wait: float | None = None
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._send("POST", "/v1/jobs", json=request, headers=headers, wait=wait)

    def get(self, job_id: str, *, wait: float | None = None) -> dict[str, Any]:
        return self._send("GET", job_path(job_id), wait=wait)

    def list(self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        params = {k: v for k, v in {"status": status, "limit": limit, "cursor": cursor}.items() if v is not None}
        return self._send("GET", "/v1/jobs", params=params)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._send("POST", job_path(job_id, "cancel"))

    def redeliver(self, job_id: str) -> dict[str, Any]:
        return self._send("POST", job_path(job_id, "webhook", "redeliver"))

    def webhook_secret(self) -> str:
        return str(self._send("GET", "/v1/webhook-secret")["secret"])

    def rotate_webhook_secret(self) -> str:
        return str(self._send("POST", "/v1/webhook-secret/rotate")["secret"])

    def download(self, url: str) -> bytes:
        return self.api.download(url)
