"""X-Ray tracing for long-running processes (the worker); Lambdas use Powertools' Tracer instead.

Off unless the caller turns it on (the worker passes its ``xray`` setting, ``SDQ_XRAY=true``, set where the ECS
task runs the X-Ray daemon beside it), so local runs and tests send nothing anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def segment(name: str, *, enabled: bool) -> Iterator[None]:
    """A top-level segment (one per batch or hand-off), when tracing is on."""
    if not enabled:
        yield
        return
    from aws_xray_sdk.core import xray_recorder

    with xray_recorder.in_segment(name):
        yield


@contextmanager
def subsegment(name: str, *, enabled: bool) -> Iterator[None]:
    """A subsegment of the current segment (generate, upload, ...), when tracing is on."""
    if not enabled:
        yield
        return
    from aws_xray_sdk.core import xray_recorder

    with xray_recorder.in_subsegment(name):
        yield
