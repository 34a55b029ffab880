"""The sync ``Client`` and the ``AsyncClient``: the same methods, one blocking, one awaitable."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from sdq_client._version import __version__
from sdq_client.errors import (
    ApiError,
    ConfigurationError,
    Conflict,
    InvalidArgument,
    RateLimited,
    SdqError,
    ServerError,
    UnexpectedAnswer,
    WaitTimeout,
    error_for,
    invalid_request,
    retry_after,
)
from sdq_client.models import (
    AuditEvent,
    AuditList,
    GenerationRequest,
    JobEvent,
    JobList,
    JobView,
    ModelList,
    RotatedWebhookSecret,
    Upload,
    WebhookSecret,
)
from sdq_client.sse import EventStreamParser, ServerSentEvent

# The longest `Prefer: wait` the API honours (a longer one is cut to this).
MAX_WAIT_S = 25
# How long to pause between polls when the API does not say (`Retry-After`).
DEFAULT_POLL_S = 1.0
# An event stream sends a comment at least this often while a job runs; silence longer than this is a dead line.
STREAM_READ_TIMEOUT_S = 90.0
# Retries of a request that is safe to repeat (a GET, a submit with its Idempotency-Key): how many after the first
# try, the first pause (doubled after each try, at most MAX_RETRY_BACKOFF_S, with jitter), and the longest
# `Retry-After` of a 429 (or 503) waited for: one asking longer is raised at once.
DEFAULT_RETRIES = 3
DEFAULT_RETRY_BACKOFF_S = 0.5
MAX_RETRY_BACKOFF_S = 8.0
DEFAULT_MAX_RETRY_AFTER_S = 30.0
# Answers that say nothing about the request itself: a gateway's or a load balancer's failure, or no room now.
RETRY_STATUSES = frozenset({502, 503, 504})
# Failures of the connection: the request may not have arrived, or its answer may have been lost.
RETRYABLE_TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# An event stream that broke after serving this long was healthy: its break starts the count of failures again.
HEALTHY_STREAM_S = 30.0
# Before a `wait()`/`run()` deadline, the time left free for a held answer (`Prefer: wait`) to come back once its
# wait ends: a wait asks the API to hold it at most until this long before the deadline, which cuts the request.
ANSWER_MARGIN_S = 1.0
# With no event seen, a stream that timed out asks for the job once, for this long at most (the client's own
# timeout when shorter), to raise WaitTimeout with it.
LAST_SEEN_TIMEOUT_S = 5.0

RequestLike = GenerationRequest | Mapping[str, Any]
Model = TypeVar("Model", bound=BaseModel)


def _endpoint(base_url: str | None, api_key: str | None) -> tuple[str, str]:
    url = base_url or os.environ.get("SDQ_API_URL")
    key = api_key or os.environ.get("SDQ_API_KEY")
    if not url or not key:
        raise ConfigurationError("Pass base_url and api_key, or set SDQ_API_URL and SDQ_API_KEY.")
    if not header_safe(key):
        raise ConfigurationError("An API key is printable ASCII (it is sent as an HTTP header).")
    return check_api_url(url), key


def check_api_url(url: str) -> str:
    """``url`` without its trailing slash, once it is an http:// or https:// URL with a host; else
    ConfigurationError, saying why (a URL without its scheme, ``127.0.0.1:8000``, is named with one)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ConfigurationError(f"{url!r} is not a URL: {exc}") from None
    if parsed.scheme not in {"http", "https"} or not parsed.host:
        hint = f" (http://{url}?)" if "://" not in url else ""
        raise ConfigurationError(f"{url!r} is not an http:// or https:// URL of the API{hint}")
    return url.rstrip("/")


def header_safe(value: str) -> bool:
    """Whether ``value`` can be sent as an HTTP header's value as it is: printable ASCII, no space at either end
    (one there would be dropped on the way)."""
    return value == value.strip(" ") and all(" " <= c <= "~" for c in value)


def _auth_headers(api_key: str) -> dict[str, str]:
    # x-api-key: the header API Gateway's authorizer reads (a key sent any other way is refused).
    return {"x-api-key": api_key, "User-Agent": f"sdq-client/{__version__}"}


def new_idempotency_key() -> str:
    """A fresh Idempotency-Key: what ``submit()`` sends when it is given none."""
    return str(uuid.uuid4())


def _idempotency_key(key: str | None) -> str:
    """The Idempotency-Key a submit sends: ``key``, or a fresh one. One that cannot be sent as it is (not printable
    ASCII, a space at either end) is refused before anything is sent (InvalidArgument)."""
    if not key:
        return new_idempotency_key()
    if not isinstance(key, str) or not header_safe(key):
        raise InvalidArgument(f"an Idempotency-Key is printable ASCII with no space at either end, not {key!r}")
    return key


# A submit whose key's first request is still sending its job is answered 409 idempotency_key_in_use for at most the
# API's timeout (30 s), asking to retry after a second: asked again that long, whatever ``retries`` says, while each
# answer says when (Retry-After).
IN_USE_MAX_ATTEMPTS = 40


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed request is tried again, and after how long."""

    retries: int = DEFAULT_RETRIES
    backoff_s: float = DEFAULT_RETRY_BACKOFF_S
    max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S

    def pause(
        self, exc: Exception, attempt: int, *, keyed: bool, deadline: float | None, landed: bool = False
    ) -> float | None:
        """Seconds to wait before trying again after ``attempt`` tries failed with ``exc``; None: raise it.
        ``landed``: an earlier try of this request may have been carried out (its answer was lost)."""
        in_use = (
            isinstance(exc, Conflict)
            and keyed
            and exc.code == "idempotency_key_in_use"
            and retry_after(exc.headers) is not None  # the API says when: a second at a time
        )
        if attempt > (max(self.retries, IN_USE_MAX_ATTEMPTS) if in_use and self.retries else self.retries):
            return None
        backoff = min(MAX_RETRY_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        if isinstance(exc, RateLimited | ServerError):
            if isinstance(exc, ServerError) and exc.status not in RETRY_STATUSES:
                return None
            if isinstance(exc, RateLimited) and keyed and not landed:
                # A refused submit counts against the plan's rate as a submission does: retrying it by itself would
                # spend the window's slots. The caller decides (RateLimited.retry_after says when). Unless an earlier
                # try may have made the job: then only its key's replay answers with it (the caller, who may hold no
                # key, would make a second job).
                return None
            asked = retry_after(exc.headers)
            if asked is not None and asked > self.max_retry_after_s:
                return None
            pause = backoff if asked is None else asked
        elif isinstance(exc, Conflict):
            # A request with the same key is still being written or sent: its answer is about to exist. Nothing
            # else is. Its Retry-After says when to ask again.
            if not (keyed and exc.code == "idempotency_key_in_use"):
                return None
            asked = retry_after(exc.headers)
            if asked is not None and asked > self.max_retry_after_s:
                return None
            pause = backoff if asked is None else asked
        elif isinstance(exc, RETRYABLE_TRANSPORT_ERRORS):
            pause = backoff
        else:
            return None
        left = _time_left(deadline)
        if left is not None and pause >= left:
            return None
        return pause


def _may_have_landed(exc: Exception) -> bool:
    """Whether a failed try may have been carried out: its answer was lost or was a gateway's 5xx (a connection
    that was never made carried nothing)."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return False
    return isinstance(exc, ServerError | httpx.TransportError)


def _retryable(method: str, headers: Mapping[str, str]) -> tuple[bool, bool]:
    """Whether a request may be sent again (a GET; a POST carrying an Idempotency-Key), and whether it is keyed."""
    keyed = any(name.lower() == "idempotency-key" for name in headers)
    return method.upper() == "GET" or keyed, keyed


def request_body(request: RequestLike) -> dict[str, Any]:
    """The JSON body of a submit: only the fields set (the server fills the rest), fields this client does not
    know included. A mapping is checked first, with the API's types and no coercion: InvalidRequest (the API's
    422 shape, nothing sent) for a field the API would refuse as well."""
    if isinstance(request, GenerationRequest):
        model = request
    else:
        try:
            model = GenerationRequest.model_validate(dict(request) if isinstance(request, Mapping) else request)
        except ValidationError as exc:
            raise invalid_request(exc.errors()) from None
    return model.model_dump(mode="json", exclude_unset=True)


def job_path(job_id: str, *rest: str) -> str:
    """The path of a job's route, its id one path segment whatever it holds (``a/b``, ``?status=...``, ``..`` reach
    no other route: they are a job id the API does not know, a 404). An empty id is refused (InvalidArgument)."""
    if not isinstance(job_id, str) or not job_id:
        raise InvalidArgument(f"a job id is a non-empty string, not {job_id!r}")
    segment = quote(job_id, safe="")
    if segment in {".", ".."}:  # dot segments are resolved away by URL joining; encoded, they are plain text
        segment = segment.replace(".", "%2E")
    return "/".join(["/v1/jobs", segment, *rest])


def _parsed(model: type[Model], resp: httpx.Response) -> Model:
    """The answer as ``model``, or UnexpectedAnswer when it is not one."""
    try:
        return model.model_validate_json(resp.content)
    except ValidationError as exc:
        raise UnexpectedAnswer(f"a {model.__name__}", resp.status_code, resp.content, exc.errors()) from None


def _upload_form(ticket: Upload, data: bytes, content_type: str) -> dict[str, Any]:
    """The presigned POST's form: its fields, the Content-Type it allows, then the file."""
    return {
        "data": {**ticket.fields, "Content-Type": content_type},
        "files": {"file": ("input", data, content_type)},
    }


def _prefer(wait: float | None) -> dict[str, str]:
    return {} if wait is None else {"Prefer": f"wait={max(0, min(int(wait), MAX_WAIT_S))}"}


def _timeout(base: float, wait: float | None) -> float:
    """A request that asks the API to wait must itself wait longer than that."""
    return base if wait is None else max(base, min(wait, MAX_WAIT_S) + 10.0)


class _DeadlinePassed(SdqError):
    """A request cut short by the deadline of the ``wait()``/``run()`` that made it: raised by them as WaitTimeout,
    with the job as last seen."""


def _try_timeout(base: float, wait: float | None, deadline: float | None) -> tuple[float, bool]:
    """The timeout of one try: its own (``_timeout``), or the time left before ``deadline`` when that is shorter;
    and whether it is the deadline's (a try that then times out was cut by it). No time left: _DeadlinePassed."""
    own = _timeout(base, wait)
    left = _time_left(deadline)
    if left is None or own <= left:
        return own, False
    if left <= 0:
        raise _DeadlinePassed
    return left, True


def _decoded(resp: httpx.Response) -> Any:
    """The parsed body of an answer, or the typed error of a refusal."""
    try:
        body: Any = resp.json()
    except ValueError:
        body = resp.text
    if resp.status_code >= 400:
        raise error_for(resp.status_code, body, resp.headers)
    return body


def _poll_pause(headers: Mapping[str, str], remaining: float) -> float:
    asked = retry_after(headers)
    return max(0.0, min(DEFAULT_POLL_S if asked is None else asked, remaining))


def _hold(hold: float, remaining: float) -> int | None:
    """The ``Prefer: wait`` of a request made ``remaining`` seconds before a deadline: at most ``hold`` (and the
    API's 25 s), its answer due ``ANSWER_MARGIN_S`` before the deadline; None (a plain request, answered at once)
    when that leaves less than a second."""
    seconds = int(min(hold, MAX_WAIT_S, remaining - ANSWER_MARGIN_S))
    return seconds if seconds >= 1 else None


def _job_event(sse: ServerSentEvent) -> JobEvent:
    try:
        payload = json.loads(sse.data)
        if isinstance(payload, dict):
            payload.setdefault("type", sse.event)
        event = JobEvent.model_validate(payload)
    except ValueError as exc:  # not JSON, or not a job event (pydantic's ValidationError is a ValueError)
        errors = exc.errors() if isinstance(exc, ValidationError) else None
        raise UnexpectedAnswer("a job event", 200, sse.data, errors) from None
    event.event_id = sse.id
    return event


def _time_left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _passed(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _stream_args(
    job_id: str, parser: EventStreamParser, timeout: float, deadline: float | None
) -> tuple[str, dict[str, Any]]:
    """The path and options of one connection to a job's event stream, resuming after the last event seen. With a
    deadline, no single wait of the connection (to connect, for the next line) lasts past it."""
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if parser.last_event_id:
        headers["Last-Event-ID"] = parser.last_event_id
    left = _time_left(deadline)
    cap = float("inf") if left is None else max(left, 0.001)
    return job_path(job_id, "events"), {
        "headers": headers,
        "timeout": httpx.Timeout(min(timeout, cap), read=min(STREAM_READ_TIMEOUT_S, cap)),
    }


def _reconnect_pause(parser: EventStreamParser, deadline: float | None) -> float:
    """The stream's ``retry:`` delay (1 s when it gave none), ending at the deadline at the latest."""
    pause = (parser.retry_ms if parser.retry_ms is not None else 1000) / 1000
    left = _time_left(deadline)
    return pause if left is None else max(0.0, min(pause, left))


def _check_stream(resp: httpx.Response) -> None:
    content_type = resp.headers.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        raise UnexpectedAnswer(f"an event stream (Content-Type {content_type!r})", resp.status_code, "")


class Client:
    """The sdq API over HTTP, blocking. ``base_url``/``api_key`` default to ``SDQ_API_URL``/``SDQ_API_KEY``.

    Every method raises a subclass of :class:`~sdq_client.ApiError` for a refused request (NotFound,
    InvalidRequest, RateLimited, ...) and httpx's errors when the API cannot be reached.

    Requests that are safe to repeat (every GET, and a submit, which always carries an Idempotency-Key) are tried
    again after a failed connection, a timeout, a 502, 503 or 504, or a 429 whose ``Retry-After`` is at most
    ``max_retry_after`` seconds: ``retries`` times after the first try, pausing ``retry_backoff`` seconds, doubled
    after each try (``retries=0``: never).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        retries: int = DEFAULT_RETRIES,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF_S,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER_S,
    ) -> None:
        self.base_url, api_key = _endpoint(base_url, api_key)
        self.timeout = timeout
        self.retry_policy = RetryPolicy(max(0, retries), retry_backoff, max_retry_after)
        self._http = httpx.Client(
            base_url=self.base_url, headers=_auth_headers(api_key), timeout=timeout, transport=transport
        )
        # Presigned output URLs carry their own authorisation: the API key never goes to the object store.
        self._plain = httpx.Client(timeout=60.0, transport=transport)

    def close(self) -> None:
        self._http.close()
        self._plain.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- the routes --------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, *, wait: float | None = None, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One request to the API (``wait``: its ``Prefer: wait``; ``timeout``: seconds, by default the client's,
        longer for a wait); raises the typed error of a refusal."""
        headers = {**kwargs.pop("headers", {}), **_prefer(wait)}
        timeout = _timeout(self.timeout, wait) if timeout is None else timeout
        resp = self._http.request(method, path, headers=headers, timeout=timeout, **kwargs)
        _decoded(resp)
        return resp

    def _send(self, method: str, path: str, *, deadline: float | None = None, **kwargs: Any) -> httpx.Response:
        """``request()``, tried again as the retry policy allows where that is safe (no later than ``deadline``,
        and no try lasting past it: one it cuts raises _DeadlinePassed)."""
        retry, keyed = _retryable(method, kwargs.get("headers") or {})
        attempt, landed = 0, False
        while True:
            attempt += 1
            timeout, cut = _try_timeout(self.timeout, kwargs.get("wait"), deadline)
            try:
                return self.request(method, path, timeout=timeout, **kwargs)
            except (ApiError, *RETRYABLE_TRANSPORT_ERRORS) as exc:
                if cut and isinstance(exc, httpx.TimeoutException):
                    raise _DeadlinePassed from None
                policy = self.retry_policy
                pause = policy.pause(exc, attempt, keyed=keyed, deadline=deadline, landed=landed) if retry else None
                if pause is None:
                    raise
                landed = landed or _may_have_landed(exc)
            time.sleep(pause)

    def _call(self, model: type[Model], method: str, path: str, **kwargs: Any) -> tuple[Model, httpx.Headers]:
        resp = self._send(method, path, **kwargs)
        return _parsed(model, resp), resp.headers

    def submit(self, request: RequestLike, *, idempotency_key: str | None = None, wait: float | None = None) -> JobView:
        """Submit a job; with ``wait`` (seconds, at most 25) the answer comes once it has finished or then.

        It carries ``idempotency_key``, or a fresh one, so a submit tried again after a lost answer answers with the
        job the first try made instead of making another. Pass your own key to be able to repeat the call itself
        (after a crash, or once the retries gave up) without a duplicate."""
        return self._submit(request, idempotency_key, wait)[0]

    def _submit(
        self, request: RequestLike, idempotency_key: str | None, wait: float | None, deadline: float | None = None
    ) -> tuple[JobView, httpx.Headers]:
        body = request_body(request)
        headers = {"Idempotency-Key": _idempotency_key(idempotency_key)}
        return self._call(JobView, "POST", "/v1/jobs", json=body, headers=headers, wait=wait, deadline=deadline)

    def get(self, job_id: str, *, wait: float | None = None) -> JobView:
        """The job; with ``wait`` (seconds, at most 25) once it has finished or that time has passed."""
        return self._call(JobView, "GET", job_path(job_id), wait=wait)[0]

    def list(self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None) -> JobList:
        """One page of your jobs, newest first; pass ``next_cursor`` back for the next page."""
        params = {k: v for k, v in {"status": status, "limit": limit, "cursor": cursor}.items() if v is not None}
        return self._call(JobList, "GET", "/v1/jobs", params=params)[0]

    def iter_jobs(self, *, status: str | None = None, page_size: int | None = None) -> Iterator[JobView]:
        """All your jobs, newest first, page after page."""
        cursor: str | None = None
        while True:
            page = self.list(status=status, limit=page_size, cursor=cursor)
            yield from page.jobs
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def cancel(self, job_id: str) -> JobView:
        """Cancel a job that has not finished (Conflict when it has)."""
        return self._call(JobView, "POST", job_path(job_id, "cancel"))[0]

    def redeliver_webhook(self, job_id: str) -> JobView:
        """Send a finished job's webhook again (same webhook-id)."""
        return self._call(JobView, "POST", job_path(job_id, "webhook", "redeliver"))[0]

    def webhook_secret(self) -> WebhookSecret:
        return self._call(WebhookSecret, "GET", "/v1/webhook-secret")[0]

    def models(self) -> ModelList:
        """The models you may name, the default first, each with what a job of it runs with by default."""
        return self._call(ModelList, "GET", "/v1/models")[0]

    def audit(self, *, limit: int | None = None, cursor: str | None = None) -> AuditList:
        """One page of your audit log (every state-changing call made for you), newest first."""
        params = {k: v for k, v in {"limit": limit, "cursor": cursor}.items() if v is not None}
        return self._call(AuditList, "GET", "/v1/audit", params=params)[0]

    def iter_audit(self, *, page_size: int | None = None) -> Iterator[AuditEvent]:
        """Your whole audit log, newest first, page after page."""
        cursor: str | None = None
        while True:
            page = self.audit(limit=page_size, cursor=cursor)
            yield from page.entries
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def rotate_webhook_secret(self) -> RotatedWebhookSecret:
        return self._call(RotatedWebhookSecret, "POST", "/v1/webhook-secret/rotate")[0]

    def download(self, url: str) -> bytes:
        """The bytes of an output or thumbnail URL (presigned; fetched without the API key)."""
        resp = self._plain.get(url)
        resp.raise_for_status()
        return resp.content

    def upload(self, data: bytes, content_type: str = "image/png") -> Upload:
        """Send an input image (PNG, JPEG or WebP) through a presigned POST; name the answer's ``id`` in a
        request's ``image`` or ``mask``. The object store's refusal (too large, past expiry) is httpx's
        HTTPStatusError; the image itself is checked when a job names it."""
        ticket = self._call(Upload, "POST", "/v1/uploads")[0]
        self._plain.post(ticket.url, **_upload_form(ticket, data, content_type)).raise_for_status()
        return ticket

    # -- waiting -----------------------------------------------------------------------------------

    def wait(self, job_id: str, *, timeout: float = 600.0) -> JobView:
        """The job once it has finished, asking the API to hold each answer (``Prefer: wait``) so that a long
        job costs one request per 25 s. Raises WaitTimeout (with the job as last seen, None if no answer came)
        after ``timeout`` s: no request lasts past it."""
        deadline = time.monotonic() + timeout
        path = job_path(job_id)
        job: JobView | None = None
        try:
            job, headers = self._call(JobView, "GET", path, wait=_hold(timeout, timeout), deadline=deadline)
            while not job.finished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(job, timeout)
                if "preference-applied" not in headers:  # an API that did not wait: poll at its pace
                    time.sleep(_poll_pause(headers, remaining))
                    remaining = deadline - time.monotonic()
                job, headers = self._call(JobView, "GET", path, wait=_hold(remaining, remaining), deadline=deadline)
        except _DeadlinePassed:
            raise WaitTimeout(job, timeout) from None
        return job

    def run(
        self,
        request: RequestLike,
        *,
        timeout: float = 600.0,
        idempotency_key: str | None = None,
        on_update: Callable[[JobView], None] | None = None,
        hold: float = MAX_WAIT_S,
    ) -> JobView:
        """Submit and return the finished job (SUCCEEDED, FAILED or CANCELLED: check ``status``).

        The submit asks the API to hold its answer up to ``hold`` seconds (``Prefer: wait``); a job still
        unfinished then is polled, pausing as each answer's ``Retry-After`` says, and ``on_update`` sees every
        answer (for progress: a shorter ``hold`` shows it sooner). Raises WaitTimeout (with the job as last seen)
        after ``timeout`` seconds: no request lasts past it. A submit that got no answer by then raises it with
        ``job`` None: the job may have been made, and a submit with the same ``idempotency_key`` answers with it.
        """
        deadline = time.monotonic() + timeout
        job: JobView | None = None
        try:
            job, headers = self._submit(request, idempotency_key, _hold(hold, timeout), deadline)
            while True:
                if on_update is not None:
                    on_update(job)
                if job.finished:
                    return job
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(job, timeout)
                time.sleep(_poll_pause(headers, remaining))
                job, headers = self._call(JobView, "GET", job_path(job.id), deadline=deadline)
        except _DeadlinePassed:
            raise WaitTimeout(job, timeout) from None

    def stream(
        self,
        job_id: str,
        *,
        last_event_id: str | None = None,
        timeout: float | None = None,
        reconnects: int = 3,
    ) -> Iterator[JobEvent]:
        """The job's events as they happen (``GET /v1/jobs/{id}/events``, Server-Sent Events), ending with the one
        that finishes it.

        A stream the server ends early (its time is up, or it answered with a snapshot) is reopened after its
        ``retry:`` delay with ``Last-Event-ID``, so no event comes twice; a connection that fails (or is answered
        502, 503 or 504, or breaks before the server ends it) is retried the same way, ``reconnects`` times in a
        row at most (an event, a stream the server ends, or one that served ``HEALTHY_STREAM_S`` before it broke, starts
        the count again), then SdqError. A 429 (the API's cap of open streams) is waited out as a GET's is: after
        its ``Retry-After`` when that is at most ``max_retry_after``, ``retries`` times in a row, else RateLimited. With
        ``timeout`` (seconds), WaitTimeout once it passes with the job unfinished: it is checked at every line the
        stream sends (keep-alive comments included), and a read waits at most the time that was left when its
        connection opened, so a stream the server holds open ends at the next line after the timeout (the API
        sends one every 15 s), or when that read gives up.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        parser = EventStreamParser()
        parser.last_event_id = last_event_id
        failures = limited = 0
        last: JobView | None = None
        while True:
            parser.restart()
            opened_at: float | None = None
            pause: float | None = None
            try:
                path, options = _stream_args(job_id, parser, self.timeout, deadline)
                with self._http.stream("GET", path, **options) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        _decoded(resp)
                    _check_stream(resp)
                    opened_at, limited = time.monotonic(), 0
                    lines = resp.iter_lines()
                    # The deadline is checked before every line (a keep-alive comment too), and each read waits
                    # no longer than the time left when the connection opened (_stream_args).
                    while not _passed(deadline):
                        line = next(lines, None)
                        if line is None:
                            failures = 0  # ended by the server, cleanly: the failures counted are those in a row
                            break
                        sse = parser.feed(line)
                        if sse is None:
                            continue
                        event = _job_event(sse)
                        failures = 0  # an event came: so does the stream
                        last = event.data
                        yield event
                        if event.data.finished:
                            return
            except RateLimited as exc:  # too many open streams: waited out as a GET's 429 is (the retry policy)
                limited += 1
                pause = self.retry_policy.pause(exc, limited, keyed=False, deadline=deadline)
                if pause is None:
                    raise
            except (httpx.TransportError, ServerError) as exc:
                if isinstance(exc, ServerError) and exc.status not in RETRY_STATUSES:
                    raise
                if not _passed(deadline):  # a read cut short by the deadline is the timeout, not a failure
                    if opened_at is not None and time.monotonic() - opened_at >= HEALTHY_STREAM_S:
                        failures = 0  # it served a while (a queued job's stream sends keep-alives only)
                    failures += 1
                    if failures > reconnects:
                        raise SdqError(f"the event stream of job {job_id} failed {failures} times in a row") from None
            if _passed(deadline):
                raise WaitTimeout(last or self._last_seen(job_id), timeout or 0.0)
            time.sleep(_reconnect_pause(parser, deadline) if pause is None else pause)

    def _last_seen(self, job_id: str) -> JobView | None:
        """The job for the WaitTimeout of a stream that saw none of its events: asked for ``LAST_SEEN_TIMEOUT_S``
        at most, None when no answer comes (the timeout has passed already)."""
        deadline = time.monotonic() + min(self.timeout, LAST_SEEN_TIMEOUT_S)
        try:
            return self._call(JobView, "GET", job_path(job_id), deadline=deadline)[0]
        except (_DeadlinePassed, ServerError, *RETRYABLE_TRANSPORT_ERRORS):
            return None


class AsyncClient:
    """The same API as :class:`Client`, awaitable (``async with AsyncClient(...) as sdq: await sdq.run(...)``)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        retries: int = DEFAULT_RETRIES,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF_S,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER_S,
    ) -> None:
        self.base_url, api_key = _endpoint(base_url, api_key)
        self.timeout = timeout
        self.retry_policy = RetryPolicy(max(0, retries), retry_backoff, max_retry_after)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=_auth_headers(api_key), timeout=timeout, transport=transport
        )
        self._plain = httpx.AsyncClient(timeout=60.0, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._plain.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def request(
        self, method: str, path: str, *, wait: float | None = None, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {**kwargs.pop("headers", {}), **_prefer(wait)}
        timeout = _timeout(self.timeout, wait) if timeout is None else timeout
        resp = await self._http.request(method, path, headers=headers, timeout=timeout, **kwargs)
        _decoded(resp)
        return resp

    async def _send(self, method: str, path: str, *, deadline: float | None = None, **kwargs: Any) -> httpx.Response:
        retry, keyed = _retryable(method, kwargs.get("headers") or {})
        attempt, landed = 0, False
        while True:
            attempt += 1
            timeout, cut = _try_timeout(self.timeout, kwargs.get("wait"), deadline)
            try:
                return await self.request(method, path, timeout=timeout, **kwargs)
            except (ApiError, *RETRYABLE_TRANSPORT_ERRORS) as exc:
                if cut and isinstance(exc, httpx.TimeoutException):
                    raise _DeadlinePassed from None
                policy = self.retry_policy
                pause = policy.pause(exc, attempt, keyed=keyed, deadline=deadline, landed=landed) if retry else None
                if pause is None:
                    raise
                landed = landed or _may_have_landed(exc)
            await asyncio.sleep(pause)

    async def _call(self, model: type[Model], method: str, path: str, **kwargs: Any) -> tuple[Model, httpx.Headers]:
        resp = await self._send(method, path, **kwargs)
        return _parsed(model, resp), resp.headers

    async def submit(
        self, request: RequestLike, *, idempotency_key: str | None = None, wait: float | None = None
    ) -> JobView:
        return (await self._submit(request, idempotency_key, wait))[0]

    async def _submit(
        self, request: RequestLike, idempotency_key: str | None, wait: float | None, deadline: float | None = None
    ) -> tuple[JobView, httpx.Headers]:
        body = request_body(request)
        headers = {"Idempotency-Key": _idempotency_key(idempotency_key)}
        return await self._call(JobView, "POST", "/v1/jobs", json=body, headers=headers, wait=wait, deadline=deadline)

    async def get(self, job_id: str, *, wait: float | None = None) -> JobView:
        return (await self._call(JobView, "GET", job_path(job_id), wait=wait))[0]

    async def list(self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None) -> JobList:
        params = {k: v for k, v in {"status": status, "limit": limit, "cursor": cursor}.items() if v is not None}
        return (await self._call(JobList, "GET", "/v1/jobs", params=params))[0]

    async def iter_jobs(self, *, status: str | None = None, page_size: int | None = None) -> AsyncIterator[JobView]:
        cursor: str | None = None
        while True:
            page = await self.list(status=status, limit=page_size, cursor=cursor)
            for job in page.jobs:
                yield job
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def cancel(self, job_id: str) -> JobView:
        return (await self._call(JobView, "POST", job_path(job_id, "cancel")))[0]

    async def redeliver_webhook(self, job_id: str) -> JobView:
        return (await self._call(JobView, "POST", job_path(job_id, "webhook", "redeliver")))[0]

    async def webhook_secret(self) -> WebhookSecret:
        return (await self._call(WebhookSecret, "GET", "/v1/webhook-secret"))[0]

    async def models(self) -> ModelList:
        """The models you may name, the default first, each with what a job of it runs with by default."""
        return (await self._call(ModelList, "GET", "/v1/models"))[0]

    async def audit(self, *, limit: int | None = None, cursor: str | None = None) -> AuditList:
        params = {k: v for k, v in {"limit": limit, "cursor": cursor}.items() if v is not None}
        return (await self._call(AuditList, "GET", "/v1/audit", params=params))[0]

    async def iter_audit(self, *, page_size: int | None = None) -> AsyncIterator[AuditEvent]:
        cursor: str | None = None
        while True:
            page = await self.audit(limit=page_size, cursor=cursor)
            for entry in page.entries:
                yield entry
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def rotate_webhook_secret(self) -> RotatedWebhookSecret:
        return (await self._call(RotatedWebhookSecret, "POST", "/v1/webhook-secret/rotate"))[0]

    async def download(self, url: str) -> bytes:
        resp = await self._plain.get(url)
        resp.raise_for_status()
        return resp.content

    async def upload(self, data: bytes, content_type: str = "image/png") -> Upload:
        ticket = (await self._call(Upload, "POST", "/v1/uploads"))[0]
        (await self._plain.post(ticket.url, **_upload_form(ticket, data, content_type))).raise_for_status()
        return ticket

    async def wait(self, job_id: str, *, timeout: float = 600.0) -> JobView:
        deadline = time.monotonic() + timeout
        path = job_path(job_id)
        job: JobView | None = None
        try:
            job, headers = await self._call(JobView, "GET", path, wait=_hold(timeout, timeout), deadline=deadline)
            while not job.finished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(job, timeout)
                if "preference-applied" not in headers:
                    await asyncio.sleep(_poll_pause(headers, remaining))
                    remaining = deadline - time.monotonic()
                job, headers = await self._call(
                    JobView, "GET", path, wait=_hold(remaining, remaining), deadline=deadline
                )
        except _DeadlinePassed:
            raise WaitTimeout(job, timeout) from None
        return job

    async def run(
        self,
        request: RequestLike,
        *,
        timeout: float = 600.0,
        idempotency_key: str | None = None,
        on_update: Callable[[JobView], Awaitable[None] | None] | None = None,
        hold: float = MAX_WAIT_S,
    ) -> JobView:
        """:meth:`Client.run`, awaitable; ``on_update`` may be a plain function or an async one (awaited)."""
        deadline = time.monotonic() + timeout
        job: JobView | None = None
        try:
            job, headers = await self._submit(request, idempotency_key, _hold(hold, timeout), deadline)
            while True:
                if on_update is not None:
                    update = on_update(job)
                    if inspect.isawaitable(update):  # an async callback: awaited before the next poll
                        await update
                if job.finished:
                    return job
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(job, timeout)
                await asyncio.sleep(_poll_pause(headers, remaining))
                job, headers = await self._call(JobView, "GET", job_path(job.id), deadline=deadline)
        except _DeadlinePassed:
            raise WaitTimeout(job, timeout) from None

    async def stream(
        self,
        job_id: str,
        *,
        last_event_id: str | None = None,
        timeout: float | None = None,
        reconnects: int = 3,
    ) -> AsyncIterator[JobEvent]:
        deadline = None if timeout is None else time.monotonic() + timeout
        parser = EventStreamParser()
        parser.last_event_id = last_event_id
        failures = limited = 0
        last: JobView | None = None
        while True:
            parser.restart()
            opened_at: float | None = None
            pause: float | None = None
            try:
                path, options = _stream_args(job_id, parser, self.timeout, deadline)
                async with self._http.stream("GET", path, **options) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        _decoded(resp)
                    _check_stream(resp)
                    opened_at, limited = time.monotonic(), 0
                    lines = resp.aiter_lines()
                    while not _passed(deadline):
                        try:
                            # Only the read is bounded: the caller's code between events runs outside it.
                            async with asyncio.timeout(_time_left(deadline)):
                                line = await anext(lines)
                        except StopAsyncIteration:
                            failures = 0  # ended by the server, cleanly
                            break
                        except TimeoutError:
                            break
                        sse = parser.feed(line)
                        if sse is None:
                            continue
                        event = _job_event(sse)
                        failures = 0
                        last = event.data
                        yield event
                        if event.data.finished:
                            return
            except RateLimited as exc:
                limited += 1
                pause = self.retry_policy.pause(exc, limited, keyed=False, deadline=deadline)
                if pause is None:
                    raise
            except (httpx.TransportError, ServerError) as exc:
                if isinstance(exc, ServerError) and exc.status not in RETRY_STATUSES:
                    raise
                if not _passed(deadline):
                    if opened_at is not None and time.monotonic() - opened_at >= HEALTHY_STREAM_S:
                        failures = 0
                    failures += 1
                    if failures > reconnects:
                        raise SdqError(f"the event stream of job {job_id} failed {failures} times in a row") from None
            if _passed(deadline):
                raise WaitTimeout(last or await self._last_seen(job_id), timeout or 0.0)
            await asyncio.sleep(_reconnect_pause(parser, deadline) if pause is None else pause)

    async def _last_seen(self, job_id: str) -> JobView | None:
        deadline = time.monotonic() + min(self.timeout, LAST_SEEN_TIMEOUT_S)
        try:
            return (await self._call(JobView, "GET", job_path(job_id), deadline=deadline))[0]
        except (_DeadlinePassed, ServerError, *RETRYABLE_TRANSPORT_ERRORS):
            return None
