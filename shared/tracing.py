"""X-Ray tracing for long-running processes (the worker); Lambdas use Powertools' Tracer instead.

Off unless ``SDQ_XRAY=true`` (the ECS task runs the X-Ray daemon beside the worker), so local runs and tests
send nothing anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def tracing_enabled() -> bool:
    return os.environ.get("SDQ_XRAY", "").lower() in {"1", "true", "yes"}


@contextmanager
def segment(name: str) -> Iterator[None]:
    """A top-level segment (one per batch or hand-off), when tracing is on."""
    if not tracing_enabled():
        yield
        return
    from aws_xray_sdk.core import xray_recorder

    with xray_recorder.in_segment(name):
        yield


@contextmanager
def subsegment(name: str) -> Iterator[None]:
    """A subsegment of the current segment (generate, upload, ...), when tracing is on."""
    if not tracing_enabled():
        yield
        return
    from aws_xray_sdk.core import xray_recorder

    with xray_recorder.in_subsegment(name):
        yield
