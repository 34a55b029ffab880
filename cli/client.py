"""A small typed HTTP client for the sdq REST API (used by the CLI, the demo and the tests)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

LOCAL_STATE_FILE = "local.json"


class ApiError(Exception):
    """A non-2xx answer from the API, with its parsed error body."""

    def __init__(self, status: int, body: Any, headers: httpx.Headers) -> None:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"{status} {err.get('code', '')}: {err.get('message', body)}")
        self.status = status
        self.code = str(err.get("code", ""))
        self.body = body
        self.headers = headers


@dataclass(frozen=True)
class Endpoint:
    url: str
    api_key: str


def state_dir() -> Path:
    return Path(os.environ.get("SDQ_STATE_DIR", ".sdq"))


def resolve_endpoint(url: str | None = None, api_key: str | None = None) -> Endpoint:
    """Flags, then ``SDQ_API_URL``/``SDQ_API_KEY``, then the file ``sdq up`` writes in ``.sdq/``."""
    url = url or os.environ.get("SDQ_API_URL")
    api_key = api_key or os.environ.get("SDQ_API_KEY")
    if not (url and api_key):
        local = state_dir() / LOCAL_STATE_FILE
        if local.exists():
            data = json.loads(local.read_text())
            url = url or data.get("api_url")
            api_key = api_key or data.get("api_key")
    if not url or not api_key:
        raise SystemExit(
            "No API endpoint: run `sdq up` in this folder, or set SDQ_API_URL and SDQ_API_KEY (or pass "
            "--api-url/--api-key)."
        )
    return Endpoint(url.rstrip("/"), api_key)


class SdqClient:
    def __init__(self, endpoint: Endpoint, *, timeout: float = 30.0) -> None:
        self._http = httpx.Client(
            base_url=endpoint.url,
            # Both headers: the API accepts either, and API Gateway's usage plans meter x-api-key.
            headers={"Authorization": f"Bearer {endpoint.api_key}", "x-api-key": endpoint.api_key},
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SdqClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        resp = self._http.request(method, path, **kwargs)
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, body, resp.headers)
        if not isinstance(body, dict):
            raise ApiError(resp.status_code, body, resp.headers)
        return body

    def submit(self, request: dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._send("POST", "/v1/jobs", json=request, headers=headers)

    def get(self, job_id: str) -> dict[str, Any]:
        return self._send("GET", f"/v1/jobs/{job_id}")

    def list(self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        params = {k: v for k, v in {"status": status, "limit": limit, "cursor": cursor}.items() if v is not None}
        return self._send("GET", "/v1/jobs", params=params)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._send("POST", f"/v1/jobs/{job_id}/cancel")

    def redeliver(self, job_id: str) -> dict[str, Any]:
        return self._send("POST", f"/v1/jobs/{job_id}/webhook/redeliver")

    def webhook_secret(self) -> str:
        return str(self._send("GET", "/v1/webhook-secret")["secret"])

    def rotate_webhook_secret(self) -> str:
        return str(self._send("POST", "/v1/webhook-secret/rotate")["secret"])

    def download(self, url: str) -> bytes:
        # Presigned URLs carry their own auth; do not send the API key to the object store.
        resp = httpx.get(url, timeout=60.0)
        resp.raise_for_status()
        return resp.content
