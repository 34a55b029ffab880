"""One X-Ray trace per job, from the submit to the state machine's Lambdas, the worker's time on it included.

The trace header (``Root=...;Parent=...;Sampled=...``) travels with the job: the API's send puts it on the SQS
message (the ``AWSTraceHeader`` system attribute), the worker reads it back from each received message and
continues it, and its ``StartExecution`` passes it on (``traceHeader``), which Step Functions hands to the task
Lambdas. :func:`current_header` is what the adapters attach (shared/queue.py, shared/orchestration.py) and what a
new job stores (shared/jobs.py): the header of the work in hand (set by :func:`continued` or by :func:`segment`),
else the Lambda invocation's own (the runtime sets ``_X_AMZN_TRACE_ID`` per invocation), else none. Whatever sends
a job's message again (the DLQ handler, the requeue sweeper, the result cache's release of a joined job) does so
:func:`continued` in the job's own trace, the message's or else the one the job stored at its submit; a webhook
execution started outside the job's own (a cancel's, a redelivery's, a failed job's) continues the job's stored trace
(``workflows.webhooks.start_notice``).

The worker's segment of a job (``sdq-worker``, one per job it hands off) continues the job's trace and starts when
the worker received its message; its stages before the hand-off are subsegments recorded after the fact
(:func:`recorded`), since they ran on other threads, batched with other jobs. The segments that belong to one job
carry its id and tenant as annotations (the fields its log lines carry: shared/observability.py ``job_fields``):
the worker's, and the API, Postprocess and Notify handlers' (:func:`annotate_job`), so ``annotation.job_id = "<id>"``
finds the job's trace.

The worker's segments are off unless the caller turns them on (the worker passes its ``xray`` setting,
``SDQ_XRAY=true``, set where the ECS task runs the X-Ray daemon beside it); the header still travels without them,
so local runs and tests send nothing anywhere and still carry the submit's trace id from stage to stage (the local
cloud's Step Functions and Lambda runtime pass it on as AWS does: localcloud/executions.py, localcloud/lambdas.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

from shared.observability import job_fields

# Set by the Lambda runtime for each invocation; the HTTP header API Gateway passes to the integration.
LAMBDA_TRACE_ENV = "_X_AMZN_TRACE_ID"
HTTP_TRACE_HEADER = "X-Amzn-Trace-Id"

_current: ContextVar[str | None] = ContextVar("sdq_trace_header", default=None)


def current_header() -> str | None:
    """The trace header downstream calls should carry now, or None when there is no trace."""
    return _current.get() or os.environ.get(LAMBDA_TRACE_ENV) or None


def trace_id(header: str | None) -> str | None:
    """The trace id (``Root``) of a trace header, or None when there is none."""
    if not header:
        return None
    # Imported here: the X-Ray SDK's package opens its UDP emitter's socket on import, which the processes that
    # only pass headers along (the API, the worker without SDQ_XRAY) have no use for.
    from aws_xray_sdk.core.models.trace_header import TraceHeader

    return TraceHeader.from_header_str(header).root or None


def request_header(headers: Mapping[str, str] | None) -> str | None:
    """The trace header of an API Gateway request (header names in any case), or None."""
    for name, value in (headers or {}).items():
        if name.lower() == HTTP_TRACE_HEADER.lower() and value:
            return value
    return None


@contextmanager
def continued(header: str | None) -> Iterator[None]:
    """Make ``header`` the current trace header for the calls made inside (when it is not None)."""
    if not header:
        yield
        return
    token = _current.set(header)
    try:
        yield
    finally:
        _current.reset(token)


def annotate_job(job_id: object, tenant: object) -> None:
    """Annotate the open subsegment with its job (``job_fields``): in a Lambda handler, the one Powertools'
    ``capture_lambda_handler`` opens. Nothing when tracing is off (``POWERTOOLS_TRACE_DISABLED``, the local stack)
    or no subsegment is open: the runtime's own segment of an invocation cannot be annotated."""
    from aws_xray_sdk import global_sdk_config

    if not global_sdk_config.sdk_enabled():
        return
    from aws_xray_sdk.core import xray_recorder

    entity = xray_recorder.current_subsegment()
    if entity is None:
        return
    for key, value in job_fields(job_id, tenant).items():
        entity.put_annotation(key, value)


@contextmanager
def segment(
    name: str,
    *,
    enabled: bool,
    trace_header: str | None = None,
    started_at: float | None = None,
    annotations: Mapping[str, str | float] | None = None,
) -> Iterator[str | None]:
    """A top-level segment (the worker's, one per job) continuing ``trace_header``'s trace, when tracing is on.

    ``started_at`` (epoch seconds): when its work began, if before now; ``annotations``: put on the segment. Yields
    the header the calls inside carry, and makes it current: the segment's own (its trace, itself as parent) when
    tracing is on, else ``trace_header`` unchanged.
    """
    if not enabled:
        with continued(trace_header):
            yield trace_header
        return
    from aws_xray_sdk.core import xray_recorder
    from aws_xray_sdk.core.models.trace_header import TraceHeader

    parent = TraceHeader.from_header_str(trace_header) if trace_header else None
    with xray_recorder.in_segment(
        name,
        traceid=parent.root if parent else None,
        parent_id=parent.parent if parent else None,
        sampling=parent.sampled if parent and parent.sampled is not None else None,
    ) as entity:
        if started_at is not None:
            entity.start_time = started_at
        for key, value in (annotations or {}).items():
            entity.put_annotation(key, value)
        header = TraceHeader(root=entity.trace_id, parent=entity.id, sampled=int(entity.sampled)).to_header_str()
        with continued(header):
            yield header


@contextmanager
def subsegment(name: str, *, enabled: bool) -> Iterator[None]:
    """A subsegment of the current segment (upload, ...), when tracing is on."""
    if not enabled:
        yield
        return
    from aws_xray_sdk.core import xray_recorder

    with xray_recorder.in_subsegment(name):
        yield


def recorded(
    name: str, start: float, end: float, *, enabled: bool, annotations: Mapping[str, str | float] | None = None
) -> None:
    """A subsegment of the current segment for work already done, from ``start`` to ``end`` (epoch seconds), when
    tracing is on; ``annotations``: put on it."""
    if not enabled:
        return
    from aws_xray_sdk.core import xray_recorder

    entity = xray_recorder.begin_subsegment(name)
    if entity is None:  # no segment open: the SDK logged it
        return
    entity.start_time = start
    for key, value in (annotations or {}).items():
        entity.put_annotation(key, value)
    xray_recorder.end_subsegment(end_time=end)
