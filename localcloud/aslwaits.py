"""A Wait state's ``Timestamp`` or ``TimestampPath`` kept as on AWS: the state ends at that time, never before it.

moto's interpreter waits ``int(timestamp - now)`` whole seconds, up to a second short of the time named. The webhook
retry schedule names whole seconds (``retry_at``), so locally each retry came up to a second early, and a delivery's
span (``workflows/webhooks.py``) let through an attempt that AWS would never make. Here the wait is rounded up.
"""

from __future__ import annotations

import datetime
import math
from typing import Any

_saved: Any = None


def _wait_seconds(self: Any, env: Any) -> int:
    """moto's ``Timestamp._get_wait_seconds``, with the seconds to the timestamp rounded up, not down."""
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import FailureEventException

    self.string.eval(env=env)
    named: str = env.stack.pop()
    timestamp = self._from_timestamp_string(timestamp=named)
    if timestamp is None:
        raise FailureEventException(self._create_failure_event(env, named))
    # moto reads the timestamp ("...Z", UTC) as a naive datetime: compare it with the UTC clock, in any time zone.
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return max(0, math.ceil((timestamp - now).total_seconds()))


def install() -> None:
    """Round a timestamp's wait up until :func:`uninstall`."""
    global _saved
    from moto.stepfunctions.parser.asl.component.state.wait.wait_function.timestamp import Timestamp

    if _saved is None:
        _saved = Timestamp._get_wait_seconds
        Timestamp._get_wait_seconds = _wait_seconds  # type: ignore[method-assign]


def uninstall() -> None:
    global _saved
    from moto.stepfunctions.parser.asl.component.state.wait.wait_function.timestamp import Timestamp

    if _saved is not None:
        Timestamp._get_wait_seconds = _saved  # type: ignore[method-assign]
        _saved = None
