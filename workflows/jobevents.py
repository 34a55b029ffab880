"""A job's events: ``job.started``, ``job.progress`` and its terminal event, read from the job table, as webhook
bodies and as a Server-Sent Events stream (``GET /v1/jobs/{id}/events``).

An event is derived from the stored job alone, so the stream, the webhooks and a resumed stream agree: RUNNING
at step 0 is ``job.started``, RUNNING past step 0 (and POSTPROCESSING) is ``job.progress``, a terminal status is
its webhook event (``job.succeeded``, ``job.failed``, ``job.cancelled``). Each event has an id that orders it:
``<attempt>.<step>`` while the job runs, ``final`` once it has finished. A client that reconnects with
``Last-Event-ID`` gets only what is newer; a job taken over by another worker (attempt + 1) starts again at
``<attempt>.0``, which sorts after the earlier attempt's steps.

The stream holds nothing but the request: it re-reads one item with backoff (fast while the job moves, slower
while it stands still), sends a comment line as a heartbeat so proxies keep the connection open, and ends after
the terminal event, or at its deadline with a comment that says to reconnect (``retry:`` tells EventSource when).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.contracts import TERMINAL_EVENTS, Job, JobStatus, JobView, WebhookEvent
from shared.errors import JobNotFound
from workflows.waiting import Backoff

STARTED = "job.started"
PROGRESS = "job.progress"
# The webhook_events subscription each event type belongs to.
COMPLETED: WebhookEvent = "completed"
SUBSCRIPTION: dict[str, WebhookEvent] = {STARTED: "started", PROGRESS: "progress"}
SUBSCRIPTION |= dict.fromkeys(TERMINAL_EVENTS.values(), COMPLETED)
FINAL_ID = "final"
TERMINAL_EVENT_TYPES = frozenset(TERMINAL_EVENTS.values())

# Re-reads: every 0.5 s while the job moves (the worker writes progress at most once a second), stretching to 3 s
# while it stands still (a queued job); back to 0.5 s after each event.
STREAM_BACKOFF = Backoff(first_s=0.5, factor=1.5, max_s=3.0)
HEARTBEAT_S = 15.0
RECONNECT_MS = 2000
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-store",
    "X-Accel-Buffering": "no",  # proxies that buffer (nginx) pass each event on at once
}


@dataclass(frozen=True)
class JobEvent:
    type: str
    id: str


def current_event(job: Job) -> JobEvent | None:
    """The newest event the stored ``job`` stands for; None while it is QUEUED (nothing has happened yet)."""
    terminal = TERMINAL_EVENTS.get(job.status)
    if terminal is not None:
        return JobEvent(terminal, FINAL_ID)
    if job.status == JobStatus.RUNNING:
        step = job.progress.step
        return JobEvent(PROGRESS if step > 0 else STARTED, f"{job.attempt}.{step}")
    if job.status == JobStatus.POSTPROCESSING:
        return JobEvent(PROGRESS, f"{job.attempt}.{max(job.progress.step, job.progress.total)}")
    return None


def _order(event_id: str | None) -> tuple[int, int]:
    """Sort key of an event id; an absent or unreadable id sorts before every event."""
    if not event_id:
        return (-1, -1)
    if event_id == FINAL_ID:
        return (2**62, 0)
    attempt, _, step = event_id.partition(".")
    try:
        return (int(attempt), int(step))
    except ValueError:
        return (-1, -1)


def is_newer(event_id: str, last_event_id: str | None) -> bool:
    """Whether the event ``event_id`` comes after ``last_event_id`` (what the client saw last)."""
    return _order(event_id) > _order(last_event_id)


def event_time(event_type: str, view: JobView) -> datetime:
    """When the event happened: a terminal event's is the job's ``finished_at``, so every attempt and redelivery
    of its webhook (one ``webhook-id``) carries the same body; ``job.started`` and ``job.progress``, each sent once
    under an id of its own, are stamped when their body is made."""
    if event_type in TERMINAL_EVENT_TYPES and view.finished_at is not None:
        return view.finished_at
    return datetime.now(UTC)


def event_body(event_type: str, view: JobView) -> str:
    """The JSON body of an event, for webhooks and the stream alike: ``{"type", "timestamp", "data"}`` where
    ``timestamp`` is :func:`event_time` and ``data`` is the job as ``GET /v1/jobs/{id}`` shows it (without the
    webhook delivery record)."""
    return json.dumps(
        {
            "type": event_type,
            "timestamp": event_time(event_type, view).isoformat(),
            "data": json.loads(view.model_dump_json(exclude={"webhook"})),
        },
        separators=(",", ":"),
    )


def sse_frame(event: JobEvent, body: str) -> bytes:
    """One Server-Sent Event (the body is one line of JSON, so one ``data:`` line)."""
    return f"id: {event.id}\nevent: {event.type}\ndata: {body}\n\n".encode()


def sse_comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


def snapshot(job: Job, view: Callable[[Job], JobView], last_event_id: str | None) -> bytes:
    """The stream as one buffered answer: the reconnect delay and the job's current event if it is newer than
    ``last_event_id``. Where a response cannot stream, EventSource turns this into polling: it reconnects after
    ``retry`` with the last id it saw."""
    out = [f"retry: {RECONNECT_MS}\n\n".encode()]
    event = current_event(job)
    if event is not None and is_newer(event.id, last_event_id):
        out.append(sse_frame(event, event_body(event.type, view(job))))
    return b"".join(out)


def stream(
    job: Job,
    read: Callable[[], Job],
    view: Callable[[Job], JobView],
    *,
    last_event_id: str | None,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    backoff: Backoff = STREAM_BACKOFF,
    heartbeat_s: float = HEARTBEAT_S,
) -> Iterator[bytes]:
    """The job's events as Server-Sent Events, from ``job`` (already read, so the caller could answer 404) on.

    Yields the reconnect delay first, then each event newer than ``last_event_id`` as the job reaches it (a
    step the stream's reads fall between is never sent: the newest state wins), a heartbeat comment whenever
    ``heartbeat_s`` pass without a line, and stops after the terminal event. At ``deadline`` (``clock`` time)
    it ends with a comment; the client reconnects with ``Last-Event-ID``. A job that vanishes (past its
    retention) ends the stream. ``read`` re-reads the job; its AWS errors propagate.
    """
    yield f"retry: {RECONNECT_MS}\n\n".encode()
    last = last_event_id
    pauses = backoff.delays()
    last_line = clock()
    while True:
        event = current_event(job)
        if event is not None and is_newer(event.id, last):
            yield sse_frame(event, event_body(event.type, view(job)))
            last, last_line, pauses = event.id, clock(), backoff.delays()
        if job.status.terminal:
            return
        now = clock()
        if now >= deadline:
            yield sse_comment("the stream's time is up: reconnect with Last-Event-ID")
            return
        if now - last_line >= heartbeat_s:
            yield sse_comment("keep-alive")
            last_line = now
        sleep(max(0.0, min(pauses(), deadline - now, last_line + heartbeat_s - now)))
        try:
            job = read()
        except JobNotFound:
            yield sse_comment("the job is gone (past its retention)")
            return
