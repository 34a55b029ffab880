"""Signed webhooks (Standard Webhooks): signing with the tenant's secrets, one delivery attempt, its classification.

The retry schedule is ``Settings.webhook_retry_schedule_s`` and this module applies it: it makes one attempt,
records it on the job with when the next one is due, and returns that time; the state machine waits for it (a
Wait state, so no Lambda runs meanwhile) and calls again with the attempt's number. ``WebhookRetryable`` is
for the service's own trouble (the job table, a progress send in flight): the ASL ``Retry`` retries it soon.

A tenant sends at most ``Settings.webhook_deliveries_per_tenant`` terminal webhooks at once (leases in the jobs
table, :class:`shared.deliveryslots.DeliverySlots`), so one tenant's slow receiver and many finished jobs cannot
fill Notify's reserved concurrency and hold up other tenants' webhooks. A delivery past the bound sends nothing:
it returns a time to try again (:func:`slot_wait_s`, growing with each wait) through the same Wait state, with
its attempt count unchanged.

``job.started`` and ``job.progress`` (for requests whose ``webhook_events`` name them) take another path: the
worker sends them itself, one attempt each, off its GPU thread (:class:`EventNotifier`); a newer event replaces a
failed one, so they are never retried. They are recorded apart from the terminal webhook (``event_webhook_*``
attributes, never ``webhook_*``), and they never arrive after it: an event is only sent while the job is RUNNING
under the sending worker, which marks the send in flight with the same conditional write, and the terminal
webhook waits (a state-machine retry) while such a mark stands.
"""

from __future__ import annotations

import math
import random
import re
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpcore
import httpx
from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError
from standardwebhooks import Webhook

from shared.contracts import TERMINAL_EVENTS, Job, WorkflowInput, webhook_id
from shared.deliveryslots import DeliverySlots
from shared.errors import TooManyRequests, WebhookDeliveryInProgress
from shared.eventrecords import EventRecords
from shared.netguard import DNS_TIMEOUT_S, HostUnresolved, UnsafeUrl, check_callback_url, resolve_public
from shared.settings import MAX_WEBHOOK_DELIVERY_S, Settings
from shared.tracing import continued
from shared.webhooksecrets import WebhookSecrets
from workflows.jobevents import SUBSCRIPTION, event_body
from workflows.jobview import job_view

if TYPE_CHECKING:
    from shared.jobs import JobsRepository
    from shared.media import MediaStore
    from shared.orchestration import Orchestrator
    from shared.ratelimit import RateLimiter

logger = Logger(service="sdq-notify", child=True)
# The line of a delivery the state machine gave up because Notify itself kept failing (its CountWebhookGivenUp
# task): WebhookFailuresAlarm counts it (template.yaml WebhookGivenUpMetricFilter) beside Notify's own give-ups.
WEBHOOK_GIVEN_UP = "webhook given up"

# One attempt's wall-clock deadline: DNS, connect, TLS, sending and the response, all together.
TIMEOUT_S = 10.0
# At most this much of a receiver's response body is read (the rest is never downloaded).
MAX_RESPONSE_BYTES = 64 * 1024
# Starting a notice execution from a request that has already changed the job (a cancel): a few quick tries,
# so a Step Functions blip costs the client well under a second and never the answer.
NOTICE_START_ATTEMPTS = 3
NOTICE_START_BACKOFF_S = 0.1
# started/progress events: a short timeout (the terminal webhook waits for a send in flight), one attempt.
EVENT_TIMEOUT_S = 5.0
# How long a send marks itself in flight (signed before): its timeout plus the mark's write and clock skew.
EVENT_IN_FLIGHT_S = EVENT_TIMEOUT_S + 3.0
# Less time than this left for a started/progress POST inside its in-flight mark: it is not sent at all.
MIN_EVENT_SEND_S = 1.0
INTERIM_SUBSCRIPTIONS = frozenset({"started", "progress"})
# A delivery's lease on one of its tenant's slots: past the Notify function's timeout (45 s), so a delivery that
# died holding one frees it by then.
SLOT_LEASE_S = 60
# Waits of a delivery for a free slot: the first about 2 s, each next twice as long, up to 2 min, each drawn
# between half and all of that (jitter, so waiting deliveries do not come back together). The ceiling bounds
# what a backlog costs: each waiting delivery wakes Notify about once in 90 s, so 5,000 of them take about 55
# invocations a second, a few of the reserved concurrency's 20 (at 30 s they took about 220, enough to throttle
# other tenants' deliveries); while few wait, a freed slot is taken again within seconds.
SLOT_WAIT_FIRST_S = 2
SLOT_WAIT_MAX_S = 120
WAITING = "waiting"  # the outcome of a delivery that found its tenant's slots taken (nothing was sent)


class WebhookRetryable(Exception):
    """The receiver may accept a later attempt (429, 5xx, timeout, connection error)."""


# -- signing ---------------------------------------------------------------------------------------


def signature_header(secrets_now: list[str], msg_id: str, timestamp: datetime, body: str) -> str:
    """The ``webhook-signature`` value: one ``v1,<sig>`` per secret, space-separated (Standard Webhooks), each
    made by the library's own ``sign``; a receiver verifying with any one of the secrets accepts it."""
    return " ".join(Webhook(secret).sign(msg_id, timestamp, body) for secret in secrets_now)


def signed_headers(secrets_now: list[str], msg_id: str, body: str) -> dict[str, str]:
    """The headers of one webhook POST, signed now with each of ``secrets_now`` (:func:`signature_header`)."""
    now = datetime.now(UTC)
    return {
        "content-type": "application/json",
        "user-agent": "sdq-webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature_header(secrets_now, msg_id, now, body),
    }


# -- the network path ------------------------------------------------------------------------------


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the attempt's deadline: httpx's timeouts are per read,
    so a receiver that drips a byte at a time would otherwise hold the attempt for as long as it likes."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline

    def _left(self, timeout: float | None, error: type[Exception]) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise error("webhook attempt deadline reached")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        left = self._left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, left), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _GuardedBackend(httpcore.SyncBackend):
    """Resolves the host at connect time and connects only to an address that passed the SSRF check, so a
    DNS answer that changes between the check and the connection (rebinding) cannot slip through; the lookup,
    the connection and every read and write after it end by ``deadline`` (``time.monotonic()``)."""

    def __init__(self, allow_loopback: bool, deadline: float, owner: str | None = None) -> None:
        self._allow_loopback = allow_loopback
        self._deadline = deadline
        self._owner = owner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        left = self._deadline - time.monotonic()
        addresses = resolve_public(
            host, port, allow_loopback=self._allow_loopback, timeout_s=min(DNS_TIMEOUT_S, left), owner=self._owner
        )
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ConnectTimeout("webhook attempt deadline reached")
        timeout = left if timeout is None else min(timeout, left)
        stream = super().connect_tcp(addresses[0], port, timeout, local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)


def guarded_client(allow_loopback: bool, timeout_s: float = TIMEOUT_S, owner: str | None = None) -> httpx.Client:
    """A client for one attempt: no redirects, no retries, SSRF-checked connections, and ``timeout_s`` as the
    whole attempt's wall-clock deadline (DNS, connect, TLS, sending, the response), counted from now. ``owner``:
    the tenant whose webhook it sends (its DNS lookups share a bound: :func:`shared.netguard.resolve_public`)."""
    transport = httpx.HTTPTransport(retries=0)
    # httpx exposes no hook for the network backend; replace the pool with one that uses the guarded one.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        network_backend=_GuardedBackend(allow_loopback, time.monotonic() + timeout_s, owner),
    )
    return httpx.Client(transport=transport, follow_redirects=False, timeout=timeout_s)


@dataclass(frozen=True)
class Attempt:
    outcome: str  # delivered | retry | gave_up | blocked | waiting (WAITING: nothing sent, not an attempt)
    status: int | None
    error: str | None
    retry_after_s: int | None = None
    retry_at: datetime | None = None  # when the retry schedule sends the next attempt (outcome retry)


def delivery_span_s(schedule_s: list[int]) -> int:
    """How long after its execution's start a delivery may still schedule an attempt: the schedule's waits, and
    its longest wait again for what the receiver's ``Retry-After``s add and the attempts' own time, at most
    ``MAX_WEBHOOK_DELIVERY_S`` (the last attempt and the execution's end then fit in its timeout)."""
    return min(sum(schedule_s) + max(schedule_s), MAX_WEBHOOK_DELIVERY_S)


def next_attempt_at(
    schedule_s: list[int], made: int, retry_after_s: int | None, now: datetime, started_at: datetime | None = None
) -> datetime | None:
    """When the attempt after the ``made``-th of a delivery is due, or None when the schedule is spent. A
    receiver's ``Retry-After`` longer than the scheduled wait is honoured up to the schedule's longest wait; an
    attempt that would then be due more than :func:`delivery_span_s` after ``started_at`` (when the delivery's
    execution began) is not made either, so the delivery always ends before its execution's timeout."""
    if made > len(schedule_s):
        return None
    wait = schedule_s[made - 1]
    if retry_after_s is not None:
        wait = max(wait, min(retry_after_s, max(schedule_s)))
    due = now.replace(microsecond=0) + timedelta(seconds=wait)  # whole seconds: the ASL Wait's timestamp
    if started_at is not None and due > started_at + timedelta(seconds=delivery_span_s(schedule_s)):
        return None
    return due


def slot_wait_s(waits: int, rng: Callable[[], float] = random.random) -> int:
    """Whole seconds before a delivery that found its tenant's slots taken ``waits`` times before tries again."""
    ceiling = min(SLOT_WAIT_MAX_S, SLOT_WAIT_FIRST_S * 2 ** min(waits, 8))
    return max(1, math.ceil(ceiling * (0.5 + rng() / 2)))


def classify(status: int) -> str:
    if 200 <= status < 300:
        return "delivered"
    if status == 429 or status >= 500:
        return "retry"
    return "gave_up"  # 410 Gone, redirects (never followed), other 4xx


def retry_after_s(value: str | None) -> int | None:
    """A ``Retry-After`` of delta-seconds (ASCII digits, at most 9 of them); None for anything else (an HTTP date,
    other digits, a number too long to mean anything)."""
    return int(value) if value and _RETRY_AFTER.fullmatch(value) else None


_RETRY_AFTER = re.compile(r"[0-9]{1,9}")


def send_once(
    url: str,
    body: str,
    headers: dict[str, str],
    *,
    allow_loopback: bool,
    timeout_s: float = TIMEOUT_S,
    owner: str | None = None,
) -> Attempt:
    """One POST of a signed payload, all of it within ``timeout_s``; never raises for receiver problems.

    The URL is checked again first (:func:`check_callback_url`: scheme, port, literal addresses), so a job stored
    before a rule changed is held to today's rules. The outcome is the response's status, unless the attempt times
    out or the connection breaks before the body is read (a retry, as for any timeout): a body that cannot be
    decoded does not change it. ``owner``: the tenant whose webhook it is (:func:`guarded_client`).
    """
    host = urlsplit(url).hostname or ""
    try:
        check_callback_url(url, allow_loopback=allow_loopback)
        with (
            guarded_client(allow_loopback, timeout_s, owner) as client,
            client.stream("POST", url, content=body, headers=headers) as r,
        ):
            outcome = classify(r.status_code)
            retry_after = r.headers.get("retry-after")
            error = None if outcome == "delivered" else f"HTTP {r.status_code}"
            if retry_after and error:
                error = f"{error} (Retry-After: {retry_after[:40]})"
            if 300 <= r.status_code < 400:
                error = f"HTTP {r.status_code} redirect not followed"
            try:
                read = 0
                for chunk in r.iter_bytes():
                    read += len(chunk)
                    if read >= MAX_RESPONSE_BYTES:
                        break
            except httpx.DecodingError:  # the status decided; only the body (ignored) did not decode
                pass
            return Attempt(outcome, r.status_code, error, retry_after_s(retry_after))
    except UnsafeUrl as exc:
        return Attempt("blocked", None, f"blocked: {exc}")
    except HostUnresolved as exc:
        return Attempt("retry", None, str(exc)[:200])
    except httpx.TimeoutException:
        return Attempt("retry", None, f"timeout after {timeout_s:.0f}s")
    except (httpx.HTTPError, socket.gaierror) as exc:
        return Attempt("retry", None, f"{type(exc).__name__}: {str(exc)[:200] or host}")


# -- the notifier -----------------------------------------------------------------------------------


class Notifier:
    def __init__(
        self,
        repo: JobsRepository,
        media: MediaStore,
        secrets_store: WebhookSecrets,
        settings: Settings,
        *,
        events: EventRecords | None = None,
        slots: DeliverySlots | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: Callable[[], float] = random.random,
    ) -> None:
        """``events``: where started/progress sends mark themselves in flight; with it, a job's terminal webhook
        waits while one is in flight (see the module's docstring). ``slots``: the tenants' delivery leases; with
        them, a tenant sends at most ``webhook_deliveries_per_tenant`` at once. ``now``: the clock the retry
        schedule and the leases count from; ``rng``: the jitter of a wait for a slot."""
        self._events = events
        self._slots = slots
        self._now = now
        self._rng = rng
        self._repo = repo
        self._media = media
        self._secrets = secrets_store
        self._settings = settings

    def payload(self, job: Job, event: str) -> str:
        return event_body(event, job_view(job, self._media, self._settings.presign_expiry_s))

    def deliver(
        self, job_id: str, tenant: str, made: int = 0, waits: int = 0, started_at: datetime | None = None
    ) -> Attempt | None:
        """:meth:`notify`, with the table's own failures (throttling, 5xx, network, after botocore's retries)
        raised as WebhookRetryable too, so the state machine retries them like a receiver's 503.

        Reading the job or the secret, or recording an attempt, can fail after the POST went through; the
        retry sends again with the same webhook-id (receivers dedupe) and records it, so a delivered webhook
        is not left recorded as failed.
        """
        try:
            return self.notify(job_id, tenant, made, waits, started_at)
        except (BotoCoreError, ClientError) as exc:
            logger.warning("webhook bookkeeping failed; retrying", job_id=job_id, error=type(exc).__name__)
            raise WebhookRetryable(f"job store unavailable: {type(exc).__name__}") from exc

    def notify(
        self, job_id: str, tenant: str, made: int = 0, waits: int = 0, started_at: datetime | None = None
    ) -> Attempt | None:
        """Send the job's terminal event once, record the attempt; None when there is nothing to send.

        ``made``: the attempts this delivery (one execution) made before this one; ``started_at``: when that
        execution began. A retryable failure with the schedule not spent comes back with ``retry_at`` set (also
        recorded, and shown by GET); once it is spent, or the next attempt would be due past the delivery's span
        from ``started_at`` (:func:`next_attempt_at`), the attempt is recorded as given up (``failed``). With the
        tenant's delivery slots all taken nothing is sent or recorded: the outcome is ``WAITING``, with
        ``retry_at`` after :func:`slot_wait_s` of ``waits`` (the waits this delivery made before). Raises
        WebhookRetryable while a started/progress send is in flight.
        """
        # Past its retention too: a job that expired while queued is failed then, and its webhook says so.
        job = self._repo.get(job_id, tenant=tenant, within_retention=False)
        event = TERMINAL_EVENTS.get(job.status)
        url = job.request.callback_url
        if event is None or not url or not job.request.wants_webhook("completed"):
            return None
        if (
            self._events is not None
            and INTERIM_SUBSCRIPTIONS & set(job.request.webhook_events)
            and self._events.in_flight_until(job.job_id) > time.time()
        ):
            # Never before a started/progress event still on its way to the same receiver: the state machine's
            # retry comes back after that send has ended (it is bounded by EVENT_IN_FLIGHT_S).
            raise WebhookRetryable("a job.progress webhook to this receiver is still in flight")
        holder = f"{job.job_id}:{uuid.uuid4().hex}"
        if self._slots is not None and not self._slots.acquire(
            job.tenant,
            holder,
            limit=self._settings.webhook_deliveries_per_tenant,
            lease_s=SLOT_LEASE_S,
            now=self._now().timestamp(),
        ):
            due = self._now().replace(microsecond=0) + timedelta(seconds=slot_wait_s(waits, self._rng))
            logger.info("webhook waits for a delivery slot", job_id=job.job_id, waits=waits + 1, due=due.isoformat())
            return Attempt(WAITING, None, None, retry_at=due)
        msg_id = webhook_id(job.job_id, event)
        try:
            body = self.payload(job, event)
            headers = signed_headers(self._secrets.signing_secrets(job.tenant), msg_id, body)
            attempt = send_once(
                url, body, headers, allow_loopback=self._settings.allow_loopback_callbacks, owner=job.tenant
            )
        finally:
            self._release(job.tenant, holder)
        if attempt.outcome == "retry":
            schedule = self._settings.webhook_retry_schedule_s
            retry_at = next_attempt_at(schedule, made + 1, attempt.retry_after_s, self._now(), started_at)
            error = attempt.error
            if retry_at is None and made + 1 <= len(schedule):
                error = f"{error}; not retried: the next attempt would come after the delivery's time ran out"
            attempt = replace(attempt, outcome="retry" if retry_at else "gave_up", retry_at=retry_at, error=error)
        self._repo.record_webhook_attempt(
            job.job_id,
            event=event,
            webhook_id=msg_id,
            outcome=attempt.outcome,
            status=attempt.status,
            error=attempt.error,
            next_attempt_at=attempt.retry_at,
        )
        logger.info(
            "webhook attempt",
            job_id=job.job_id,
            event=event,
            attempt=made + 1,
            outcome=attempt.outcome,
            status=attempt.status,
            retry_at=attempt.retry_at.isoformat() if attempt.retry_at else None,
        )
        return attempt

    def _release(self, tenant: str, holder: str) -> None:
        """Give the delivery's slot back; a failure to is only logged (the lease ends by itself)."""
        if self._slots is None:
            return
        try:
            self._slots.release(tenant, holder)
        except (BotoCoreError, ClientError) as exc:
            logger.warning("webhook delivery slot not released; its lease ends it", error=type(exc).__name__)


def start_notice(orchestrator: Orchestrator, job: Job, reason: str, *, once: bool = False) -> str | None:
    """Run the state machine's webhook path alone for ``job`` (a cancel, a redelivery, a dead letter), with its
    retries.

    ``once`` names the execution after the job and reason alone, so a retried start cannot send the webhook
    twice: Step Functions refuses a second execution of that name, which counts as started. Without it every
    call is a new execution (a redelivery the client asks for). Raises AWS errors. Returns the execution ARN,
    or None when the job sends no terminal webhook (no callback URL, or ``completed`` not in its
    ``webhook_events``).
    """
    if not job.request.wants_webhook("completed"):
        return None
    from ulid import ULID

    with continued(job.trace_header):  # the job's own trace, not the one of the request or event that caused it
        return orchestrator.start(
            f"{job.job_id}-{reason}" if once else f"{job.job_id}-{reason}-{ULID()}",
            WorkflowInput.notice(job, reason=reason),
        )


# The window both redelivery limits count in (Settings.webhook_redeliveries_per_job, ..._per_tenant).
REDELIVERY_WINDOW_S = 3600
# A delivery recorded ``retrying`` whose next attempt is this overdue is taken for stopped (its execution was
# aborted): a redelivery may replace it. Until then the attempt may still be on its way (waiting for a free slot
# of its tenant, or for the state machine's retries of a throttled or failing Notify).
OVERDUE_RETRY_S = 3600


class Redeliveries:
    """``POST /v1/jobs/{id}/webhook/redeliver``: a new delivery of a finished job's webhook (with the whole retry
    schedule), at most ``webhook_redeliveries_per_job`` times per job and ``webhook_redeliveries_per_tenant``
    times per tenant in an hour, so a client cannot turn the service into a webhook cannon."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        limiter: RateLimiter,
        settings: Settings,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._orchestrator = orchestrator
        self._limiter = limiter
        self._settings = settings
        self._now = now

    def start(self, job: Job) -> str | None:
        """Start the redelivery; raises WebhookDeliveryInProgress (409) while the job's webhook is still being
        retried on its schedule (a second delivery would only race it), TooManyRequests (429, with Retry-After)
        past a limit, AWS errors as they come. Returns the execution ARN, or None when the job has no callback
        URL."""
        now = self._now()
        record = job.webhook
        if (
            record is not None
            and record.state == "retrying"
            and record.next_attempt_at is not None
            and record.next_attempt_at.timestamp() + OVERDUE_RETRY_S > now
        ):
            raise WebhookDeliveryInProgress(record.next_attempt_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        per_job, per_tenant = (
            self._settings.webhook_redeliveries_per_job,
            self._settings.webhook_redeliveries_per_tenant,
        )
        job_key, tenant_key = f"redeliver#{job.tenant}#{job.job_id}", f"redeliver#{job.tenant}"
        wait = self._limiter.hit(job_key, limit=per_job, window_s=REDELIVERY_WINDOW_S, now=now)
        if wait is not None:
            raise TooManyRequests(
                f"This job's webhook was redelivered {per_job} times in the last hour; try again later.",
                retry_after_s=math.ceil(wait),
            )
        wait = self._limiter.hit(tenant_key, limit=per_tenant, window_s=REDELIVERY_WINDOW_S, now=now)
        if wait is not None:
            self._limiter.release(job_key, window_s=REDELIVERY_WINDOW_S, now=now)  # this one was not made
            raise TooManyRequests(
                f"More than {per_tenant} webhook redeliveries in an hour; try again later.",
                retry_after_s=math.ceil(wait),
            )
        return start_notice(self._orchestrator, job, "redeliver")


def start_finished_notice(orchestrator: Orchestrator, job: Job) -> str | None:
    """The webhook of a job finished outside its own execution (a dead letter, a failed execution), once per job
    and status: the execution is named ``<job id>-<status>``, so every handler that may start it (the DLQ
    handler, the failed-execution handler, their retries) starts the same one."""
    return start_notice(orchestrator, job, job.status.value.lower(), once=True)


def start_notice_retrying(
    orchestrator: Orchestrator,
    job: Job,
    reason: str,
    *,
    log: Logger = logger,
    attempts: int = NOTICE_START_ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
    once: bool = False,
) -> str | None:
    """:func:`start_notice` for a caller whose outcome must not depend on it (the cancel is already written, an
    abandoned job already failed).

    Retries AWS errors ``attempts`` times with a short doubling backoff and never raises them. Returns the
    execution ARN, or None when the job has no callback URL or every attempt failed; the latter is logged as
    an error on ``log`` (the webhook can still be sent with ``POST /v1/jobs/{id}/webhook/redeliver``). ``once``:
    as :func:`start_notice`'s, every attempt under one name.
    """
    for attempt in range(1, max(1, attempts) + 1):
        try:
            return start_notice(orchestrator, job, reason, once=once)
        except (ClientError, BotoCoreError) as exc:
            if attempt >= attempts:
                log.error(
                    "webhook notice not started",
                    job_id=job.job_id,
                    reason=reason,
                    attempts=attempt,
                    error=type(exc).__name__,
                )
                return None
            log.warning("webhook notice start failed", job_id=job.job_id, attempt=attempt, error=type(exc).__name__)
            sleep(NOTICE_START_BACKOFF_S * 2 ** (attempt - 1))
    return None


# -- started and progress events (sent by the worker) ----------------------------------------------


def event_webhook_id(job: Job, event: str) -> str:
    """One id per distinct started/progress message (attempt and step), so receivers can dedupe exactly."""
    if event == "job.started":
        return f"msg_{job.job_id}_job_started_{job.attempt}"
    return f"msg_{job.job_id}_job_progress_{job.attempt}_{job.progress.step}"


class EventNotifier:
    """Sends one ``job.started`` or ``job.progress`` webhook (one attempt, never retried: the next event
    supersedes it), signed like the terminal ones, from the worker that runs the job."""

    def __init__(
        self,
        records: EventRecords,
        media: MediaStore,
        secrets_store: WebhookSecrets,
        settings: Settings,
        *,
        worker_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._records = records
        self._media = media
        self._secrets = secrets_store
        self._settings = settings
        self._worker_id = worker_id

    @staticmethod
    def wanted(job: Job, event: str) -> bool:
        """Whether ``job``'s request subscribed to ``event`` (and has somewhere to send it)."""
        subscription = SUBSCRIPTION.get(event)
        return subscription is not None and job.request.wants_webhook(subscription)

    def send(self, job: Job, event: str) -> Attempt | None:
        """Send ``event`` for the job as it stood in ``job`` (a snapshot); None when it was not wanted or the job
        is no longer RUNNING under this worker. Raises AWS errors (the caller logs them)."""
        url = job.request.callback_url
        if not url or not self.wanted(job, event):
            return None
        # Signed before the in-flight mark: the mark covers the POST alone, so a slow secret read cannot push the
        # POST past the mark, after which the job's terminal webhook may already have gone.
        msg_id = event_webhook_id(job, event)
        body = event_body(event, job_view(job, self._media, self._settings.presign_expiry_s))
        headers = signed_headers(self._secrets.signing_secrets(job.tenant), msg_id, body)
        marked_at = self._clock()
        if not self._records.begin(job.job_id, self._worker_id, in_flight_s=EVENT_IN_FLIGHT_S):
            return None
        left_s = marked_at + EVENT_TIMEOUT_S - self._clock()  # the mark lasts EVENT_IN_FLIGHT_S from marked_at
        if left_s < MIN_EVENT_SEND_S:
            attempt = Attempt("gave_up", None, "not sent: marking it in flight took too long")
        else:
            attempt = send_once(
                url,
                body,
                headers,
                allow_loopback=self._settings.allow_loopback_callbacks,
                timeout_s=left_s,
                owner=job.tenant,
            )
        self._records.finish(
            job.job_id, event, msg_id, outcome=attempt.outcome, status=attempt.status, error=attempt.error
        )
        logger.info("event webhook attempt", job_id=job.job_id, event=event, outcome=attempt.outcome)
        return attempt
