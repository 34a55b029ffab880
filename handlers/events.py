"""``GET /v1/jobs/{id}/events``: the job's events as a Server-Sent Events stream (API Gateway REST proxy events).

A streamed answer cannot come from an ordinary Python Lambda handler (its runtime buffers the return value), so
:func:`stream_handler` returns the status, headers and a body iterator, and whoever runs it writes them as they
come: on AWS this function's own runtime loop (:mod:`handlers.streamruntime`, behind API Gateway's streaming
integration); locally the local API server (:mod:`localcloud.api`). The stream itself is
:func:`workflows.jobevents.stream`.

Each open stream holds an execution for up to 15 minutes, so a tenant holds at most
``Settings.event_streams_per_tenant`` at once: a lease (:class:`shared.deliveryslots.StreamSlots`) taken before the
stream starts, given back when it ends or its client leaves, and ending by itself a little after the longest
stream should its execution die. One more stream is refused with 429 and ``Retry-After``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError

from shared.apikeys import ApiKeyStore
from shared.aws import AwsClients
from shared.contracts import Job, JobView
from shared.deliveryslots import StreamSlots
from shared.errors import JobNotFound, ServiceError, TooManyRequests, Unauthorized
from shared.jobs import JobsRepository, is_valid_job_id
from shared.media import MediaStore
from shared.settings import Settings, get_settings
from workflows import jobevents
from workflows.authorization import Authorization, KeyCheck
from workflows.jobview import job_view

logger = Logger(service="sdq-events")

PATH = re.compile(r"^(?:/[^/]+)?/v1/jobs/(?P<job_id>[^/]+)/events/?$")
# The stream ends this long before the invocation's own end (the function's timeout, at most API Gateway's
# 15 minutes for a streamed answer), so it closes cleanly and the client reconnects with Last-Event-ID.
END_MARGIN_S = 10.0
LOCAL_STREAM_S = 14 * 60.0
# A stream's lease on one of its tenant's stream slots outlives the stream by this much: one whose execution died
# (a timeout, a crash) holds its slot that long after its end at most.
LEASE_MARGIN_S = 60.0
# When a tenant's streams are all open: a stream ends with its job, so a slot frees within seconds to minutes.
STREAMS_RETRY_AFTER_S = 10


@dataclass
class StreamedResponse:
    """A response whose body is written chunk by chunk as the iterator yields."""

    status: int
    headers: dict[str, str]
    body: Iterable[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class EventServices:
    settings: Settings
    repo: JobsRepository
    media: MediaStore
    keys: ApiKeyStore
    slots: StreamSlots


@lru_cache(maxsize=1)
def services() -> EventServices:
    settings = get_settings()
    aws = AwsClients(settings)
    return EventServices(
        settings=settings,
        repo=JobsRepository(aws.dynamodb(), settings.table_name),
        media=MediaStore(aws.s3(), settings.bucket),
        keys=ApiKeyStore(aws.dynamodb(), settings.table_name),
        slots=StreamSlots(aws.dynamodb(), settings.table_name),
    )


def _headers(event: dict[str, Any]) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}


def _caller(event: dict[str, Any]) -> Authorization | None:
    """The caller from the authorizer's answer (API Gateway runs it before this function), or None."""
    return Authorization.from_context((event.get("requestContext") or {}).get("authorizer"))


def _error(error: ServiceError, headers: dict[str, str] | None = None) -> StreamedResponse:
    return StreamedResponse(
        error.status,
        {"Content-Type": "application/json", **(headers or {})},
        [json.dumps(error.body()).encode()],
    )


class _Leased:
    """A stream's body that gives its lease back once: when it ends, fails, or is closed (its client left)."""

    def __init__(self, body: Iterator[bytes], release: Callable[[], None]) -> None:
        self._body = body
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> _Leased:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._body)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        release, self._release = self._release, None
        if release is None:
            return
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            release()


def _job_id(event: dict[str, Any]) -> str | None:
    params = event.get("pathParameters") or {}
    if params.get("job_id"):
        return str(params["job_id"])
    match = PATH.match(str(event.get("path", "")))
    return match.group("job_id") if match else None


def _last_event_id(event: dict[str, Any], headers: dict[str, str]) -> str | None:
    """``Last-Event-ID`` (EventSource sends it when it reconnects), or ``?last_event_id=`` for clients that
    cannot set headers on a first connection."""
    query = event.get("queryStringParameters") or {}
    return headers.get("last-event-id") or query.get("last_event_id") or None


def stream_handler(event: dict[str, Any], context: Any) -> StreamedResponse:
    """Authenticate, find the tenant's job (404 for unknown and foreign ones alike), then stream its events.

    The stream ends after the job's terminal event or shortly before the invocation runs out of time.
    """
    headers = _headers(event)
    caller = _caller(event)
    if caller is None:
        return _error(Unauthorized())
    tenant = caller.tenant
    job_id = _job_id(event)
    s = services()
    try:
        if not job_id or not is_valid_job_id(job_id):
            raise JobNotFound(job_id or "")
        job = s.repo.get(job_id, tenant=tenant)
    except JobNotFound as exc:
        return _error(exc)
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    budget_s = remaining_ms() / 1000 - END_MARGIN_S if remaining_ms else LOCAL_STREAM_S
    deadline = time.monotonic() + max(1.0, budget_s)
    holder = str(getattr(context, "aws_request_id", "") or uuid.uuid4())
    limit = s.settings.event_streams_per_tenant
    lease_s = max(1.0, budget_s) + END_MARGIN_S + LEASE_MARGIN_S
    if not s.slots.acquire(tenant, holder, limit=limit, lease_s=lease_s, now=time.time()):
        logger.info("event stream refused: the tenant's streams are all open", job_id=job.job_id, limit=limit)
        refused = TooManyRequests(
            f"This tenant has {limit} event streams open, the most allowed; close one, or retry when one ends.",
            retry_after_s=STREAMS_RETRY_AFTER_S,
        )
        return _error(refused, {"Retry-After": str(refused.retry_after_s)})

    def release() -> None:
        try:
            s.slots.release(tenant, holder)
        except (ClientError, BotoCoreError) as exc:
            # The lease ends by itself LEASE_MARGIN_S after the stream's longest end.
            logger.warning("event stream's slot not given back", job_id=job.job_id, error=type(exc).__name__)

    def view(current: Job) -> JobView:
        return job_view(current, s.media, s.settings.presign_expiry_s)

    key = KeyCheck(s.keys, caller.key_id, every_s=s.settings.authorizer_cache_s)

    def read() -> Job:
        # A stream outlives the authorizer's cached answer: its key is re-read as often as that answer lasts, and a
        # revoked or expired key ends the stream as a job gone does (the client's reconnect is then refused).
        if not key.still_active():
            logger.info("event stream ended: its API key is no longer active", job_id=job.job_id)
            raise JobNotFound(job.job_id)
        return s.repo.get(job.job_id, tenant=tenant)

    body: Iterator[bytes] = jobevents.stream(
        job,
        read,
        view,
        last_event_id=_last_event_id(event, headers),
        deadline=deadline,
    )
    logger.info("event stream", job_id=job.job_id, status=job.status.value, budget_s=round(budget_s, 1))
    return StreamedResponse(200, dict(jobevents.SSE_HEADERS), _Leased(body, release))
