"""SQS fair queues in the local cloud: a standard queue's receive prefers the message groups with fewest messages in
flight.

On AWS a standard queue whose messages carry a ``MessageGroupId`` is a fair queue: once a group (here a tenant) holds
a disproportionate share of the messages in flight, receives hand out other groups' messages first while any wait
(docs/worker.md, "Fair share and priority"). moto 5.2 accepts ``MessageGroupId`` on a standard queue and returns it,
but hands messages out in send order. While the local cloud runs, a receive on a standard queue takes the visible
messages ordered by how many messages of their group are in flight, fewest first, send order within a count (a
message without a group counts as a group of its own, with none in flight). That is AWS's order once it has flagged
the busy group; AWS flags one only past its thresholds (docs/worker.md), the local cloud at once. FIFO queues and
every other call are unchanged.
"""

from __future__ import annotations

import contextvars
import threading
from collections import Counter
from typing import Any

_LOCK = threading.Lock()
_saved: dict[str, Any] = {}
_IN_RECEIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("sdq_fair_receive", default=False)


def fair_order(messages: list[Any], in_flight: Counter[str]) -> list[Any]:
    """``messages`` (visible, in send order) with the groups that have fewest messages in flight first."""
    if not in_flight:
        return messages
    return sorted(messages, key=lambda m: in_flight[m.group_id] if m.group_id else 0)


def _messages(queue: Any) -> list[Any]:
    visible: list[Any] = _saved["messages"].fget(queue)
    if queue.fifo_queue or not _IN_RECEIVE.get():
        return visible
    in_flight = Counter(
        m.group_id for m in queue._messages if m.group_id and m.approximate_receive_count and not m.visible
    )
    return fair_order(visible, in_flight)


def _receive_message(self: Any, *args: Any, **kwargs: Any) -> Any:
    token = _IN_RECEIVE.set(True)
    try:
        return _saved["receive_message"](self, *args, **kwargs)
    finally:
        _IN_RECEIVE.reset(token)


def install() -> None:
    """Hand out standard queues' messages fairly between groups until :func:`uninstall`."""
    from moto.sqs import models as sqs_models

    with _LOCK:
        if _saved:
            return
        _saved.update(
            messages=sqs_models.Queue.__dict__["messages"],
            receive_message=sqs_models.SQSBackend.receive_message,
        )
        sqs_models.Queue.messages = property(_messages)  # type: ignore[assignment,method-assign]
        sqs_models.SQSBackend.receive_message = _receive_message  # type: ignore[method-assign]


def uninstall() -> None:
    from moto.sqs import models as sqs_models

    with _LOCK:
        if not _saved:
            return
        sqs_models.Queue.messages = _saved["messages"]  # type: ignore[method-assign]
        sqs_models.SQSBackend.receive_message = _saved["receive_message"]  # type: ignore[method-assign]
        _saved.clear()
