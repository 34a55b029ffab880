"""One exception class per kind of refusal, so callers branch on the class, never on message text."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

# How much of an unexpected body an error quotes.
SNIPPET_CHARS = 200


class SdqError(Exception):
    """Everything this client raises on purpose."""


class ConfigurationError(SdqError):
    """No API URL or key: pass them, or set SDQ_API_URL and SDQ_API_KEY."""


class InvalidArgument(SdqError, ValueError):
    """An argument refused before anything is sent: an empty job id, an Idempotency-Key that is not printable
    ASCII."""


class UnexpectedAnswer(SdqError):
    """A successful answer that is not what the API answers there (another service at that URL, a proxy's page,
    a broken body): ``status``, ``snippet`` (the body's start) and ``errors`` (what did not fit, pydantic's)."""

    def __init__(self, what: str, status: int, body: bytes | str, errors: Any = None) -> None:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        self.status = status
        self.snippet = text[:SNIPPET_CHARS]
        self.errors = errors
        super().__init__(f"the API's {status} answer is not {what}: {self.snippet!r}")


class ApiError(SdqError):
    """An answer of 400 or above. ``code``, ``message`` and ``details`` come from the body
    ``{"error": {"code", "message", "details"}}``; ``body`` is the whole parsed body (text if it was not JSON).
    A body of another shape (a gateway's ``{"message": ...}``, a proxy's page) gives ``message`` the status's
    reason and the start of the body instead."""

    def __init__(self, status: int, body: Any, headers: Mapping[str, str]) -> None:
        err = body.get("error") if isinstance(body, dict) else None
        err = err if isinstance(err, dict) else {}
        self.status = status
        self.code = str(err.get("code", "") or "")
        self.message = str(err.get("message", "") or "") or _other_message(status, body)
        self.details = err.get("details")
        self.body = body
        self.headers = headers
        super().__init__(f"{status} {self.code}: {self.message}" if self.code else f"{status}: {self.message}")


class BadRequest(ApiError):
    """400: the body is not JSON, or a cursor this listing did not give."""


class Unauthorized(ApiError):
    """401: no API key, or one the API does not know."""


class NotFound(ApiError):
    """404: no such job for this key (another tenant's jobs look the same), or no such route."""


class Conflict(ApiError):
    """409: an Idempotency-Key reused with another body (``idempotency_key_reused``) or still in use, a cancel of
    a finished job, a webhook that cannot be redelivered, a secret rotation in progress."""


class PayloadTooLarge(ApiError):
    """413: the request body is larger than the API accepts."""


class UnsupportedMediaType(ApiError):
    """415: the body was not sent as application/json."""


@dataclass(frozen=True)
class FieldError:
    """One refused field: where (``loc``, as the API gives it), why, and the pydantic error type."""

    loc: tuple[str, ...]
    msg: str
    type: str

    @property
    def field(self) -> str:
        """The field's dotted path in the request body (``width``, ``metadata.k``), or its header name."""
        parts = self.loc[1:] if self.loc and self.loc[0] in {"body", "header", "query", "path"} else self.loc
        return ".".join(parts)


class InvalidRequest(ApiError):
    """422: the request broke a rule; ``fields`` says which field and why. Also raised before sending, with the
    API's own body shape, for a request whose fields do not have the API's JSON types (``headers`` then empty)."""

    @property
    def fields(self) -> list[FieldError]:
        found = self.details if isinstance(self.details, list) else []
        return [
            FieldError(tuple(str(p) for p in d.get("loc", ())), str(d.get("msg", "")), str(d.get("type", "")))
            for d in found
            if isinstance(d, dict)
        ]


class RateLimited(ApiError):
    """429: too many submissions, or too many unfinished jobs; ``retry_after`` says when to retry (seconds)."""

    @property
    def retry_after(self) -> float | None:
        return retry_after(self.headers)


class ServerError(ApiError):
    """500 and above: the API failed (503: the queue could not take the job; it was not made, so retry)."""


class WaitTimeout(SdqError):
    """``run()``, ``wait()`` or ``stream()`` ran out of time before the job finished; ``job`` is the job as last
    seen, None when no answer came before the timeout (``run()``: the job may have been made; a submit with the
    same Idempotency-Key answers with it)."""

    def __init__(self, job: Any, timeout_s: float) -> None:
        if job is None:
            super().__init__(f"no answer from the API within {timeout_s:g} s")
        else:
            super().__init__(f"job {job.id} is still {job.status} after {timeout_s:g} s")
        self.job = job
        self.timeout_s = timeout_s


class WebhookVerificationError(SdqError):
    """A webhook whose signature, timestamp or headers do not verify: do not trust its body."""


class UnusableWebhookSecret(WebhookVerificationError):
    """None of the secrets given to verify_webhook() can be used (empty, not base64): fix the configuration."""


ERRORS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidRequest,
    429: RateLimited,
}


def _other_message(status: int, body: Any) -> str:
    """What an answer not in the API's error shape says: its reason phrase and the start of its body."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    if isinstance(body, dict) and isinstance(body.get("message"), str):  # API Gateway's own answers
        said = body["message"]
    elif isinstance(body, str):
        said = body
    else:
        said = json.dumps(body) if body not in (None, "") else ""
    said = " ".join(said.split())
    said = said if len(said) <= SNIPPET_CHARS else said[: SNIPPET_CHARS - 3] + "..."
    return f"{reason}: {said}" if reason and said else reason or said


# As the API's 422 has them: at most this many errors, each path part and message cut to these lengths.
MAX_ERROR_DETAILS = 20
MAX_ERROR_LOC_CHARS = 64
MAX_ERROR_MSG_CHARS = 200


def _cut(text: object, limit: int) -> str:
    value = str(text)
    return value if len(value) <= limit else value[: limit - 3] + "..."


def invalid_request(errors: Iterable[Mapping[str, Any]], where: str = "body") -> InvalidRequest:
    """The InvalidRequest of a request the client refuses before sending, shaped as the API's 422 is: ``errors``
    as pydantic gives them (``loc``, ``msg``, ``type``), each path under ``where``."""
    found = list(errors)
    details = [
        {
            "loc": [_cut(part, MAX_ERROR_LOC_CHARS) for part in (where, *e.get("loc", ()))],
            "msg": _cut(e.get("msg", ""), MAX_ERROR_MSG_CHARS),
            "type": _cut(e.get("type", ""), MAX_ERROR_LOC_CHARS),
        }
        for e in found[:MAX_ERROR_DETAILS]
    ]
    fields = ", ".join(".".join(d["loc"][1:] or d["loc"]) for d in details)
    if len(found) > MAX_ERROR_DETAILS:
        fields += f" and {len(found) - MAX_ERROR_DETAILS} more"
    body = {"error": {"code": "validation_error", "message": f"Invalid request: {fields}", "details": details}}
    return InvalidRequest(422, body, {})


def error_for(status: int, body: Any, headers: Mapping[str, str]) -> ApiError:
    """The exception of a refused request: the class of its status, ServerError for 5xx, else ApiError."""
    cls = ERRORS.get(status) or (ServerError if status >= 500 else ApiError)
    return cls(status, body, headers)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds (the API sends whole seconds), or None when absent or not a number."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
