"""What this code writes to stdout for CloudWatch: EMF metric lines (:func:`emit_metrics`), whole, and the job a
log line is about (:func:`job_keys`).

Powertools' own ``flush_metrics`` prints a metric line in two writes, the JSON and then its newline. The worker
runs with stdout unbuffered (``PYTHONUNBUFFERED=1`` in its image) and writes metrics from several threads (the
GPU sampler, the batch loop, the claim and hand-off threads) while others log, so another thread's line could
land between the two: neither line then parses, and CloudWatch drops the metric line's datapoints. Here a metric
line is one write of the line and its newline, made under :data:`LINE_LOCK`, which the worker's logging handlers
hold while they write too (:func:`share_lock_with_logging`): a line longer than the pipe's buffer is not split by
another thread's either.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from aws_lambda_powertools.metrics.functions import is_metrics_disabled

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger
    from aws_lambda_powertools.metrics import EphemeralMetrics, Metrics

LINE_LOCK = threading.RLock()


def write_line(line: str) -> None:
    """Write ``line`` and its newline to stdout in one write, under :data:`LINE_LOCK`."""
    with LINE_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def emit_metrics(metrics: Metrics | EphemeralMetrics) -> None:
    """Write what ``metrics`` holds as one EMF line (:func:`write_line`) and clear it, in place of Powertools'
    ``flush_metrics``. Nothing is written when it holds no metric or metrics are off
    (``POWERTOOLS_METRICS_DISABLED``), and it is cleared all the same."""
    if metrics.metric_set and not is_metrics_disabled():
        line = json.dumps(metrics.serialize_metric_set(), separators=(",", ":"))
    else:
        line = None
    metrics.clear_metrics()
    if line is not None:
        write_line(line)


def share_lock_with_logging() -> None:
    """Make every logging handler that writes to stdout take :data:`LINE_LOCK` as its lock. Call it once, at the
    start of a process, before other threads log: a handler's lock must not change while a thread holds it."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for each in loggers:
        for handler in getattr(each, "handlers", ()):
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                handler.lock = LINE_LOCK


def job_fields(job_id: object, tenant: object) -> dict[str, str]:
    """What names a job on a log line or an X-Ray segment: ``job_id`` and ``tenant``, each left out when it is not
    a non-empty string (an event that lacks it)."""
    return {key: value for key, value in (("job_id", job_id), ("tenant", tenant)) if isinstance(value, str) and value}


@contextmanager
def job_keys(logger: Logger, *, job_id: object = None, tenant: object = None) -> Iterator[None]:
    """Name the job (:func:`job_fields`) on every Powertools log line this thread writes until the block ends. The
    keys are the thread's own (Powertools' thread-safe keys): the local stack runs Lambda invocations at once, in
    one process."""
    keys = job_fields(job_id, tenant)
    logger.thread_safe_append_keys(**keys)
    try:
        yield
    finally:
        logger.thread_safe_remove_keys(keys)
