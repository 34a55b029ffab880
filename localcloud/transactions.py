"""DynamoDB writes for the local cloud: ``TransactWriteItems`` as moto's, less its copy of every table a transaction
touches, and every write atomic.

moto backs up each table a transaction writes (``copy.deepcopy`` of the whole table, every job ever submitted) so
that it can roll back; a submission's transaction then costs time in proportion to the table, and a rollback puts
back the copy, losing what other requests wrote meanwhile. Here only the touched items are backed up and restored,
and transactions run one at a time, so that they are atomic towards each other as on AWS.

Single-item writes (``PutItem``, ``UpdateItem``, ``DeleteItem``) take the same lock: moto checks a write's
condition apart from the write it guards, and its server answers each request on a thread, so two conditional
writes racing for one item could both pass (``tests/integration/test_localcloud_atomic.py``).

Every DynamoDB request is answered under that lock too, reads included: moto applies an update action by action
to the stored item, and a read returns that same item, turned into JSON after the backend call; a read between two
actions saw a job SUCCEEDED with its outputs still empty (``test_a_read_sees_an_update_whole_or_not_at_all``).

A transaction's ``ClientRequestToken`` makes it idempotent, as on AWS: the same request sent again within ten
minutes of its success (botocore's retry after an answer lost on the way back) answers success and writes nothing
again; the token with other items is ``IdempotentParameterMismatchException``.

One difference from AWS remains: writes wait for each other here, so ``TransactionConflict`` never happens, and
the submission's conflict retry is tested with DynamoDB's answer stubbed on the client.
"""

from __future__ import annotations

import copy
import functools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

_LOCK = threading.RLock()
_saved: Any = None
_SINGLE_WRITES = ("put_item", "update_item", "delete_item")
_saved_writes: dict[str, Callable[..., Any]] = {}
_saved_call_action: Callable[..., Any] | None = None
_saved_answer: Callable[..., Any] | None = None
TOKEN_WINDOW_S = 600  # how long DynamoDB keeps a transaction's ClientRequestToken after its success
_tokens: dict[str, tuple[str, float]] = {}  # token -> (the request's items, as JSON; when it succeeded)


def _atomic(write: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(write)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return write(self, *args, **kwargs)

    return locked


def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
    """moto's ``DynamoDBBackend.transact_write_items`` (moto 5.2) with per-item backups."""
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.exceptions import (
        ConditionalCheckFailed,
        MockValidationException,
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )

    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    with _LOCK:
        backups: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []  # (table, key, item before)

        def rollback() -> None:
            for table_name, key, before in reversed(backups):
                if before is None:
                    if self.get_item(table_name, key) is not None:
                        self.delete_item(table_name, key)
                else:
                    self.put_item(table_name, before)

        target_items: set[tuple[str, str]] = set()
        errors: list[tuple[str | None, str | None, dict[str, Any] | None]] = []
        for item in transact_items:
            original_item: dict[str, Any] | None = None
            if len(list(item.keys())) > 1:
                raise TransactWriteSingleOpException
            try:
                op_type, op = next(iter(item.items()))
                if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
                    raise ValueError("Unsupported transaction operation")
                table_name = op["TableName"]
                condition_expression = op.get("ConditionExpression")
                names = op.get("ExpressionAttributeNames")
                values = op.get("ExpressionAttributeValues")
                if op_type == "Put":
                    attrs = op["Item"]
                    table = self.get_table(table_name)
                    key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                    if table.range_key_attr is not None:
                        key[table.range_key_attr] = attrs[table.range_key_attr]
                else:
                    key = op["Key"]
                unique = (str(table_name), str(dict(sorted(key.items()))))
                if unique in target_items:
                    raise MultipleTransactionsException()
                target_items.add(unique)

                current = self.get_item(table_name, key)
                if condition_expression is not None:
                    condition = get_filter_expression(condition_expression, names, values)
                    if not condition.expr(current):
                        if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                            original_item = current.to_json()["Attributes"]
                        raise ConditionalCheckFailed(item=original_item)
                if op_type != "ConditionCheck":
                    before = copy.deepcopy(current.to_json()["Attributes"]) if current is not None else None
                    backups.append((table_name, key, before))
                if op_type == "Put":
                    self.put_item(
                        table_name,
                        op["Item"],
                        condition_expression=condition_expression,
                        expression_attribute_names=names,
                        expression_attribute_values=values,
                    )
                elif op_type == "Delete":
                    self.delete_item(
                        table_name,
                        key,
                        condition_expression=condition_expression,
                        expression_attribute_names=names,
                        expression_attribute_values=values,
                    )
                elif op_type == "Update":
                    self.update_item(
                        table_name,
                        key,
                        update_expression=op["UpdateExpression"],
                        condition_expression=condition_expression,
                        expression_attribute_names=names,
                        expression_attribute_values=values,
                    )
                errors.append((None, None, None))
            except (MultipleTransactionsException, MockValidationException):
                rollback()
                raise
            except ConditionalCheckFailed as e:
                errors.append(("ConditionalCheckFailed", str(e.message), original_item))
            except Exception as e:  # as moto: any other failure cancels the transaction, with its reason
                errors.append((type(e).__name__, str(e), original_item))
        if any(code is not None for code, _, _ in errors):
            rollback()
            raise TransactionCanceledException(errors)


def answer_transaction(handler: Any) -> Any:
    """``DynamoHandler.transact_write_items`` with ``ClientRequestToken`` honoured: a token that succeeded within
    :data:`TOKEN_WINDOW_S` answers success again without writing, or refuses other items under it."""
    from moto.core.responses import ActionResult
    from moto.dynamodb.exceptions import DynamodbException

    assert _saved_answer is not None
    token = handler.body.get("ClientRequestToken")
    if token is None:
        return _saved_answer(handler)
    items = json.dumps(handler.body["TransactItems"], sort_keys=True)
    with _LOCK:
        now = time.monotonic()
        for old in [t for t, (_, at) in _tokens.items() if now - at > TOKEN_WINDOW_S]:
            del _tokens[old]
        seen = _tokens.get(token)
        if seen is not None:
            if seen[0] != items:
                raise DynamodbException(
                    "com.amazonaws.dynamodb.v20120810#IdempotentParameterMismatchException",
                    "The request uses the same client token as a previous, but non-identical request.",
                )
            return ActionResult({"ConsumedCapacity": [], "ItemCollectionMetrics": {}})
        answer = _saved_answer(handler)
        _tokens[token] = (items, now)
        return answer


def install() -> None:
    """Serve transactions with :func:`transact_write_items` until :func:`uninstall`."""
    global _saved, _saved_call_action, _saved_answer
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.responses import DynamoHandler

    if _saved is None:
        _saved_call_action = DynamoHandler.call_action
        DynamoHandler.call_action = _atomic(_saved_call_action)  # type: ignore[method-assign]
        _saved_answer = DynamoHandler.transact_write_items
        DynamoHandler.transact_write_items = answer_transaction  # type: ignore[method-assign,assignment]
        _saved = DynamoDBBackend.transact_write_items
        DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
        for name in _SINGLE_WRITES:
            _saved_writes[name] = getattr(DynamoDBBackend, name)
            setattr(DynamoDBBackend, name, _atomic(_saved_writes[name]))


def uninstall() -> None:
    global _saved, _saved_call_action, _saved_answer
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.responses import DynamoHandler

    if _saved_call_action is not None:
        DynamoHandler.call_action = _saved_call_action  # type: ignore[method-assign]
        _saved_call_action = None
    if _saved_answer is not None:
        DynamoHandler.transact_write_items = _saved_answer  # type: ignore[method-assign]
        _saved_answer = None
        _tokens.clear()
    if _saved is not None:
        DynamoDBBackend.transact_write_items = _saved  # type: ignore[method-assign]
        _saved = None
        for name, write in _saved_writes.items():
            setattr(DynamoDBBackend, name, write)
        _saved_writes.clear()
