"""DynamoDB faults injected where the cloud answers: moto's table backend (the local cloud's in process, or
``mock_aws``) raises a real error response (400 ThrottlingException, 500 InternalServerError) for one job's writes,
before or after the write is applied. The client sees it as it would see DynamoDB's, botocore's retries included:
a fault after the write is an answer lost on the way back, and botocore's retry sends the request again."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from moto.core.exceptions import JsonRESTError
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.responses import DynamoHandler


class InjectedError(JsonRESTError):
    def __init__(self, code: str, status: int) -> None:
        super().__init__(f"com.amazonaws.dynamodb.v20120810#{code}", "injected fault")
        self.code = status


@dataclass
class Fault:
    """Fail the next ``times`` writes of job ``job_id`` (or of the item whose key is ``pk``, when given): UpdateItems
    whose expression starts with ``expression`` (``operation`` "update_item"), PutItems of the item (``operation``
    "put_item"), or transactions that put or update it (``operation`` "transact_write_items": faulted where
    DynamoDB answers, so a ``ClientRequestToken`` the local cloud honours was recorded before an after-write fault)."""

    job_id: str
    expression: str
    times: int
    code: str = "ThrottlingException"
    status: int = 400
    after_write: bool = False  # apply the write, then answer the error (a response lost on the way back)
    operation: Literal["update_item", "put_item", "transact_write_items"] = "update_item"
    # With after_write: what others do between the write and the re-sent request (a claim, the state machine's write).
    meanwhile: Callable[[], None] | None = None
    pk: str = ""  # another item than a job's: a counter (RATE#..., BUDGET#...)
    hits: int = 0

    @property
    def item_pk(self) -> str:
        return self.pk or f"JOB#{self.job_id}"


class DynamoFaults:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.faults: list[Fault] = []
        original_update = DynamoDBBackend.update_item
        original_put = DynamoDBBackend.put_item

        def update_item(backend: Any, table_name: str, key: Any, update_expression: str, *a: Any, **kw: Any) -> Any:
            fault = self._take("update_item", key, update_expression or "")
            return self._apply(fault, original_update, backend, table_name, key, update_expression, *a, **kw)

        def put_item(backend: Any, table_name: str, item_attrs: Any, *a: Any, **kw: Any) -> Any:
            fault = self._take("put_item", item_attrs, "")
            return self._apply(fault, original_put, backend, table_name, item_attrs, *a, **kw)

        original_answer = DynamoHandler.transact_write_items  # the local cloud's, when installed

        def transact_write_items(handler: Any) -> Any:
            fault = None
            for element in handler.body["TransactItems"]:
                op = element.get("Put") or element.get("Update")
                if op is not None and fault is None:
                    key = op.get("Item") or op.get("Key")
                    fault = self._take("transact_write_items", key, op.get("UpdateExpression", ""))
            return self._apply(fault, original_answer, handler)

        monkeypatch.setattr(DynamoDBBackend, "update_item", update_item)
        monkeypatch.setattr(DynamoDBBackend, "put_item", put_item)
        monkeypatch.setattr(DynamoHandler, "transact_write_items", transact_write_items)

    def add(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    @staticmethod
    def _apply(fault: Fault | None, write: Any, *args: Any, **kwargs: Any) -> Any:
        if fault is not None and not fault.after_write:
            raise InjectedError(fault.code, fault.status)
        result = write(*args, **kwargs)
        if fault is not None:
            if fault.meanwhile is not None:
                fault.meanwhile()
            raise InjectedError(fault.code, fault.status)
        return result

    def _take(self, operation: str, key: Any, update_expression: str) -> Fault | None:
        for fault in self.faults:
            if (
                fault.operation == operation
                and key.get("pk", {}).get("S") == fault.item_pk
                and update_expression.startswith(fault.expression)
                and fault.hits < fault.times
            ):
                fault.hits += 1
                return fault
        return None
