"""The local cloud's conditional writes are atomic, as DynamoDB's are: of many clients racing for the same item
with a condition, exactly as many win as the condition allows. Claims, status changes, leases and counters all
rest on this; moto server answers requests on threads and checks a condition apart from the write it guards."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from localcloud import LocalCloud

THREADS = 8
ROUNDS = 30
SLOTS = 3


@pytest.fixture(scope="module")
def dynamodb() -> Iterator[Any]:
    local = LocalCloud(host="127.0.0.1", port=0).start()  # in this process: its request threads share our GIL
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, so that a race shows within a few rounds
    try:
        client = boto3.client(
            "dynamodb",
            endpoint_url=local.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(max_pool_connections=THREADS * 2, retries={"max_attempts": 1}),
        )
        client.create_table(
            TableName="race",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield client
    finally:
        sys.setswitchinterval(interval)
        local.stop()


def _race(work: Any) -> list[bool]:
    """Run ``work(i)`` on THREADS threads released at once; True where it won."""
    start = threading.Barrier(THREADS)
    won = [False] * THREADS

    refusals: list[str] = []

    def run(i: int) -> None:
        start.wait()
        try:
            work(i)
            won[i] = True
        except ClientError as exc:
            refusals.append(exc.response["Error"]["Code"])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(refusals) <= {"ConditionalCheckFailedException"}
    return won


def test_a_counter_with_a_ceiling_never_passes_it(dynamodb: Any) -> None:
    for round_ in range(ROUNDS):
        key = {"pk": {"S": f"counter-{round_}"}}

        def take(i: int, key: dict[str, Any] = key) -> None:
            dynamodb.update_item(
                TableName="race",
                Key=key,
                UpdateExpression="ADD held :one",
                ConditionExpression="attribute_not_exists(held) OR held < :slots",
                ExpressionAttributeValues={":one": {"N": "1"}, ":slots": {"N": str(SLOTS)}},
            )

        won = _race(take)
        held = int(dynamodb.get_item(TableName="race", Key=key, ConsistentRead=True)["Item"]["held"]["N"])
        assert (sum(won), held) == (SLOTS, SLOTS), f"round {round_}"


def test_a_put_if_absent_has_one_winner(dynamodb: Any) -> None:
    """As a claim (QUEUED -> RUNNING) or a job's create: one winner, and the item is the winner's."""
    for round_ in range(ROUNDS):

        def claim(i: int, round_: int = round_) -> None:
            dynamodb.put_item(
                TableName="race",
                Item={"pk": {"S": f"claim-{round_}"}, "owner": {"N": str(i)}},
                ConditionExpression="attribute_not_exists(pk)",
            )

        won = _race(claim)
        assert sum(won) == 1, f"round {round_}"
        item = dynamodb.get_item(TableName="race", Key={"pk": {"S": f"claim-{round_}"}}, ConsistentRead=True)
        assert won[int(item["Item"]["owner"]["N"])]  # the stored owner is the one that was told it won


def test_a_read_sees_an_update_whole_or_not_at_all(dynamodb: Any) -> None:
    """An UpdateItem of several attributes (a job's status with its outputs, say) is applied action by action;
    a GetItem answered meanwhile must not see some of them set and the others not."""
    key = {"pk": {"S": "torn"}}
    names = [f"a{i}" for i in range(20)]
    update = "SET " + ", ".join(f"{name} = :v" for name in names)
    dynamodb.put_item(TableName="race", Item={**key, **{name: {"N": "0"} for name in names}})
    done = threading.Event()
    torn: list[set[str]] = []

    def write() -> None:
        for value in range(1, 150):
            dynamodb.update_item(
                TableName="race", Key=key, UpdateExpression=update, ExpressionAttributeValues={":v": {"N": str(value)}}
            )
        done.set()

    def read() -> None:
        while not done.is_set():
            item = dynamodb.get_item(TableName="race", Key=key, ConsistentRead=True)["Item"]
            values = {item[name]["N"] for name in names}
            if len(values) > 1:
                torn.append(values)

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torn == []
