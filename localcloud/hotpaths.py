"""Five of moto's request paths made cheaper while the local cloud runs: SQS sends, DynamoDB queries and updates.

Profiled under the local stack's load (``benchmarks/local_submit.py``, docs/performance.md), they held most of the
cloud's GIL time, both in proportion to the data rather than to the request:

- **SQS SendMessage** reads ``queue.attributes`` for one attribute (``ContentBasedDeduplication``), and moto builds
  every attribute to answer it: three counts over all the queue's messages, with four clock reads per message. A
  send into a queue of 1,000 messages cost several milliseconds. Here ``attributes`` is a mapping that computes an
  attribute when it is read, and the messages' clock is read with ``time.time()`` (the same value moto computes
  through two datetimes).
- **DynamoDB Query on an index** deep-copies every matching item and then projects the copies; for a ``KEYS_ONLY``
  or ``INCLUDE`` index the projection builds new items anyway, so the copy is skipped there, and the projection
  copies the kept attributes instead of converting the whole item to plain JSON and back for each one. The
  unfinished-jobs count of every submit (``Select=COUNT`` on the ``KEYS_ONLY`` index of a tenant's unfinished
  jobs) paid for this in proportion to the tenant's queue.
- **DynamoDB Query with ``Select=COUNT``** still sized every matching item (for the 1 MB page limit) and projected
  it, only for the answer to keep their number: 37 % of the cloud's CPU under 4 clients' submits (py-spy,
  2026-12-06). A count neither sizes nor projects them, and a whole count (no ``Limit``, no start key: every
  page is one) does not sort them either.
- **DynamoDB Query** starts from ``Table.all_items()``, which sorts every item of the table by its key, in Python
  comparisons of moto's types, and then sorts the matches again by the query's own key (an index's keys and the
  table's hash key, or the partition's sort key): a total order that the first sort cannot change. With thousands
  of jobs the first sort was a quarter of the cloud's GIL time under 4 clients' submits (py-spy, 2026-12-06,
  after the count fix). A query takes the items unsorted; a scan, whose pages follow that order, still sorts.
  An index query then compares every item's key with the query's through moto's types (a cast per comparison):
  here the items whose string hash key differs are left out first, by plain string comparison.
- **DynamoDB UpdateItem** deep-copies the item it updates before the update, for the table's stream only (the old
  image of a change record): 5 % of the cloud's GIL time under submits (each makes two transactions of updates),
  and the worker's claims, progress and leases pay it too. A table without a stream skips the copy.

Answers are unchanged: the same attributes, the same items and counts. Only a count over more than 1 MB of items
comes in one page instead of several (a client adds the pages' counts up either way).
"""

from __future__ import annotations

import contextvars
import copy
import json
import threading
import time
import types
from collections.abc import Iterator, Mapping
from typing import Any

_LOCK = threading.Lock()
_saved: dict[str, Any] = {}
_SKIP_RESULT_COPY: contextvars.ContextVar[bool] = contextvars.ContextVar("sdq_skip_result_copy", default=False)
_COUNT_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("sdq_count_only", default=False)
_WHOLE_COUNT: contextvars.ContextVar[bool] = contextvars.ContextVar("sdq_whole_count", default=False)
_UNSORTED: contextvars.ContextVar[bool] = contextvars.ContextVar("sdq_unsorted_items", default=False)
# An index query's hash key conditions, as (attribute, string value): the items it can match.
_HASH_STRINGS: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "sdq_hash_strings", default=()
)
_NO_STREAM: contextvars.ContextVar[bool] = contextvars.ContextVar("sdq_no_stream", default=False)


# --- SQS ------------------------------------------------------------------------------------------------------------


class QueueAttributes(Mapping[str, Any]):
    """``Queue.attributes`` as moto builds it, each value computed when it is read."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue

    def _names(self) -> list[str]:
        q = self._queue
        names = list(q.BASE_ATTRIBUTES)
        if q.fifo_queue:
            names += q.FIFO_ATTRIBUTES
        if q.kms_master_key_id:
            names += q.KMS_ATTRIBUTES
        return list(dict.fromkeys(names))

    def __getitem__(self, name: str) -> Any:
        from moto.core.utils import camelcase_to_underscores

        q = self._queue
        if name not in self._names():
            raise KeyError(name)
        if name == "Policy" and q.policy:
            value: Any = q.policy
        elif name == "RedrivePolicy" and q.redrive_policy:
            value = json.dumps(q.redrive_policy)
        else:
            value = getattr(q, camelcase_to_underscores(name))
        return str(value).lower() if isinstance(value, bool) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


def _queue_attributes(self: Any) -> QueueAttributes:
    return QueueAttributes(self)


def _unix_time_millis(dt: Any = None) -> float:
    if dt is not None:
        return float(_saved["sqs_unix_time_millis"](dt))
    return time.time() * 1000.0


# --- DynamoDB -------------------------------------------------------------------------------------------------------


def _project(self: Any, item: Any) -> Any:
    """``SecondaryIndex.project``: the kept top-level attributes copied, the rest left out (a count keeps none)."""
    from moto.dynamodb.models.dynamo_type import Item

    if _COUNT_ONLY.get():
        return item

    projection_type = (self.projection or {}).get("ProjectionType")
    if projection_type not in ("KEYS_ONLY", "INCLUDE"):
        return item  # ALL: moto keeps the whole item
    kept = self.table_key_attrs + [key["AttributeName"] for key in self.schema]
    if projection_type == "INCLUDE":
        kept = kept + list(self.projection.get("NonKeyAttributes", []))
    projected = Item(hash_key=item.hash_key, range_key=item.range_key, attrs={})
    for name in dict.fromkeys(kept):
        if name in item.attrs:
            projected.attrs[name] = copy.deepcopy(item.attrs[name])
    return projected


def _query(self: Any, *args: Any, **kwargs: Any) -> Any:
    """``Table.query`` over the table's items unsorted; for an index whose projection makes new items, without
    the deep copy before it."""
    index_name = args[7] if len(args) > 7 else kwargs.get("index_name")
    projection = None
    if index_name:
        index = next((i for i in self.all_indexes() if i.name == index_name), None)
        projection = (index.projection or {}).get("ProjectionType") if index is not None else None
    conditions = (kwargs.get("hash_key_conditions") or []) if index_name else []
    unsorted = _UNSORTED.set(True)
    skip_copy = _SKIP_RESULT_COPY.set(projection in ("KEYS_ONLY", "INCLUDE"))
    strings = _HASH_STRINGS.set(tuple((name, value.value) for name, value in conditions if value.type == "S"))
    try:
        return _saved["query"](self, *args, **kwargs)
    finally:
        _HASH_STRINGS.reset(strings)
        _SKIP_RESULT_COPY.reset(skip_copy)
        _UNSORTED.reset(unsorted)


def _all_items(self: Any) -> Any:
    """``Table.all_items``; inside a query, not sorted (the query sorts its matches by its own key), and for an
    index query only the items its string hash key conditions can match."""
    if not _UNSORTED.get():
        return _saved["all_items"](self)
    if self.range_key_attr:
        items = [item for partition in self.items.values() for item in partition.values()]
    else:
        items = list(self.items.values())
    for name, value in _HASH_STRINGS.get():  # moto checks the rest with its own comparison
        items = [i for i in items if (v := i.attrs.get(name)) is not None and v.type == "S" and v.value == value]
    return items


def _count_aware_query(self: Any) -> Any:
    """``DynamoHandler.query``: a ``Select=COUNT`` runs with its items neither sized nor projected."""
    count = self.body.get("Select") == "COUNT"
    token = _COUNT_ONLY.set(count)
    whole = _WHOLE_COUNT.set(count and "Limit" not in self.body and "ExclusiveStartKey" not in self.body)
    try:
        return _saved["handler_query"](self)
    finally:
        _WHOLE_COUNT.reset(whole)
        _COUNT_ONLY.reset(token)


def _sorted_items(self: Any, *args: Any) -> Any:
    """``Table.sorted_items``; a whole count takes its matches in any order."""
    if _WHOLE_COUNT.get():
        return args[-1]
    return _saved["sorted_items"](self, *args)


def _item_size(self: Any) -> int:
    """``Item.size``; 0 inside a count (its items fill no page)."""
    return 0 if _COUNT_ONLY.get() else int(_saved["item_size"](self))


def _deepcopy(value: Any, memo: Any = None) -> Any:
    # Table.query's only deep copy is of its result list, right before the projection (moto 5.2).
    if _SKIP_RESULT_COPY.get() and isinstance(value, list):
        return list(value)
    return copy.deepcopy(value, memo)


def _update_item(self: Any, table_name: str, *args: Any, **kwargs: Any) -> Any:
    """``DynamoDBBackend.update_item``; its copy of the old item is made only for a table with a stream."""
    token = _NO_STREAM.set(self.get_table(table_name).stream_shard is None)
    try:
        return _saved["update_item"](self, table_name, *args, **kwargs)
    finally:
        _NO_STREAM.reset(token)


def _old_item_copy(value: Any, memo: Any = None) -> Any:
    # update_item's only deep copy is of the item before the update, kept for the stream's record (moto 5.2).
    if _NO_STREAM.get():
        return value
    return copy.deepcopy(value, memo)


def _copy_module() -> types.SimpleNamespace:
    """``copy`` as moto's table module sees it: ``deepcopy`` skips the one copy that ``_query`` makes redundant."""
    return types.SimpleNamespace(**{**vars(copy), "deepcopy": _deepcopy})


# --- install --------------------------------------------------------------------------------------------------------


def install() -> None:
    """Serve these paths the cheaper way until :func:`uninstall`."""
    from moto.dynamodb import models, responses
    from moto.dynamodb.models import dynamo_type, table
    from moto.sqs import models as sqs_models

    with _LOCK:
        if _saved:
            return
        _saved.update(
            sqs_attributes=sqs_models.Queue.__dict__["attributes"],
            sqs_unix_time_millis=sqs_models.unix_time_millis,
            query=table.Table.query,
            all_items=table.Table.all_items,
            sorted_items=table.Table.sorted_items,
            update_item=models.DynamoDBBackend.update_item,
            models_copy=models.copy,
            project=table.SecondaryIndex.project,
            table_copy=table.copy,
            handler_query=responses.DynamoHandler.query,
            item_size=dynamo_type.Item.size,
        )
        responses.DynamoHandler.query = _count_aware_query  # type: ignore[method-assign]
        dynamo_type.Item.size = _item_size  # type: ignore[method-assign]
        sqs_models.Queue.attributes = property(_queue_attributes)  # type: ignore[assignment,method-assign]
        sqs_models.unix_time_millis = _unix_time_millis
        table.Table.query = _query  # type: ignore[method-assign]
        table.Table.all_items = _all_items  # type: ignore[method-assign]
        table.Table.sorted_items = _sorted_items  # type: ignore[method-assign,assignment]
        models.DynamoDBBackend.update_item = _update_item  # type: ignore[method-assign]
        models.copy = types.SimpleNamespace(**{**vars(copy), "deepcopy": _old_item_copy})  # type: ignore[assignment]
        table.SecondaryIndex.project = _project  # type: ignore[method-assign]
        table.copy = _copy_module()  # type: ignore[assignment]


def uninstall() -> None:
    from moto.dynamodb import models, responses
    from moto.dynamodb.models import dynamo_type, table
    from moto.sqs import models as sqs_models

    with _LOCK:
        if not _saved:
            return
        responses.DynamoHandler.query = _saved["handler_query"]  # type: ignore[method-assign]
        dynamo_type.Item.size = _saved["item_size"]  # type: ignore[method-assign]
        sqs_models.Queue.attributes = _saved["sqs_attributes"]  # type: ignore[method-assign]
        sqs_models.unix_time_millis = _saved["sqs_unix_time_millis"]
        table.Table.query = _saved["query"]  # type: ignore[method-assign]
        table.Table.all_items = _saved["all_items"]  # type: ignore[method-assign]
        table.Table.sorted_items = _saved["sorted_items"]  # type: ignore[method-assign]
        models.DynamoDBBackend.update_item = _saved["update_item"]  # type: ignore[method-assign]
        models.copy = _saved["models_copy"]
        table.SecondaryIndex.project = _saved["project"]  # type: ignore[method-assign]
        table.copy = _saved["table_copy"]
        _saved.clear()
