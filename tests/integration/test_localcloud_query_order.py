"""The local cloud's DynamoDB queries answer in key order, page by page, whatever order the items were written in
(``localcloud/hotpaths.py`` takes the table's items unsorted and leaves the order to the query's own sort)."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest

from tests.integration.conftest import RunningService


def _pages(ddb: Any, query: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    page: dict[str, Any] = {"Limit": limit}
    while True:
        answer = ddb.query(**query, **page)
        seen += answer["Items"]
        if "LastEvaluatedKey" not in answer:
            return seen
        page["ExclusiveStartKey"] = answer["LastEvaluatedKey"]


@pytest.mark.parametrize("forward", [True, False])
def test_an_index_query_pages_in_the_index_key_order(service: RunningService, forward: bool) -> None:
    ddb = service.boto("dynamodb")
    tenant = f"t-order-{uuid.uuid4().hex[:8]}"
    job_ids = [f"{tenant}-{i:02}" for i in range(12)]
    for job_id in random.sample(job_ids, len(job_ids)):
        item = {"pk": {"S": f"JOB#{job_id}"}, "job_id": {"S": job_id}, "active_tenant": {"S": tenant}}
        ddb.put_item(TableName=service.table, Item=item)
    query = {
        "TableName": service.table,
        "IndexName": "active_by_tenant",
        "KeyConditionExpression": "active_tenant = :t",
        "ExpressionAttributeValues": {":t": {"S": tenant}},
        "ScanIndexForward": forward,
    }
    seen = [item["job_id"]["S"] for item in _pages(ddb, query, limit=5)]
    assert seen == sorted(job_ids, reverse=not forward)
    assert ddb.query(**query, Select="COUNT")["Count"] == len(job_ids)


def test_a_partition_query_pages_in_sort_key_order(service: RunningService) -> None:
    ddb = service.boto("dynamodb")
    table = service.env["SDQ_AUDIT_TABLE_NAME"]
    tenant = f"t-order-{uuid.uuid4().hex[:8]}"
    keys = [f"2026-12-06T17:{m:02}:00.000000Z#{uuid.uuid4().hex}" for m in range(12)]
    for sk in random.sample(keys, len(keys)):
        ddb.put_item(TableName=table, Item={"tenant": {"S": tenant}, "sk": {"S": sk}})
    query = {
        "TableName": table,
        "KeyConditionExpression": "tenant = :t",
        "ExpressionAttributeValues": {":t": {"S": tenant}},
        "ScanIndexForward": False,
    }
    assert [item["sk"]["S"] for item in _pages(ddb, query, limit=5)] == sorted(keys, reverse=True)
