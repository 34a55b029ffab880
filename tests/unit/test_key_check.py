"""A long answer's key check (an events stream): the key it was opened with is re-read once per period, and a
revoked, expired or deleted key makes it stop (moto's in-process DynamoDB, the real key store)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from shared.apikeys import ApiKeyStore
from shared.contracts import utcnow
from tests.unit.conftest import JOBS_TABLE
from workflows.authorization import KeyCheck

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_revoked_key_stops_the_answer_at_the_next_check_not_before(jobs_table: DynamoDBClient) -> None:
    keys = ApiKeyStore(jobs_table, JOBS_TABLE)
    issued = keys.create("acme")
    clock = Clock()
    check = KeyCheck(keys, issued.key_id, every_s=60, clock=clock)
    clock.now += 59
    assert check.still_active()
    keys.revoke(issued.key_id)
    clock.now += 0.5
    assert check.still_active()  # within the period: not read again (the gateway's cached answer lasts as long)
    clock.now += 1
    assert not check.still_active()


class Reads:
    """The DynamoDB calls a client makes, by operation name (a botocore event hook, as the submit-calls test's)."""

    def __init__(self, client: DynamoDBClient) -> None:
        self.made: list[str] = []
        client.meta.events.register("before-parameter-build.dynamodb", self._seen)

    def _seen(self, model: Any, **_: Any) -> None:
        self.made.append(model.name)


def test_an_active_key_is_read_once_per_period_and_stays_active(jobs_table: DynamoDBClient) -> None:
    keys = ApiKeyStore(jobs_table, JOBS_TABLE)
    issued = keys.create("acme", expires_at=utcnow() + timedelta(days=1))
    reads = Reads(jobs_table)
    clock = Clock()
    check = KeyCheck(keys, issued.key_id, every_s=60, clock=clock)
    for period in range(1, 6):
        for _ in range(3):  # within the period: no read
            clock.now += 10
            assert check.still_active()
        assert len(reads.made) == period - 1
        clock.now += 31  # the period is over: exactly one read
        assert check.still_active()
        assert len(reads.made) == period
        assert check.still_active()  # at once again: still the one read
        assert len(reads.made) == period
    assert set(reads.made) == {"GetItem"}


def test_an_unknown_key_id_stops_the_answer(jobs_table: DynamoDBClient) -> None:
    clock = Clock()
    check = KeyCheck(ApiKeyStore(jobs_table, JOBS_TABLE), "key_gone", every_s=60, clock=clock)
    clock.now += 60
    assert not check.still_active()
