"""A long answer's key check (an events stream): the key it was opened with is re-read once per period, and a
revoked, expired or deleted key makes it stop (moto's in-process DynamoDB, the real key store)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

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


def test_an_active_key_is_read_once_per_period_and_stays_active(jobs_table: DynamoDBClient) -> None:
    keys = ApiKeyStore(jobs_table, JOBS_TABLE)
    issued = keys.create("acme", expires_at=utcnow() + timedelta(days=1))
    clock = Clock()
    check = KeyCheck(keys, issued.key_id, every_s=60, clock=clock)
    for _ in range(5):
        clock.now += 61
        assert check.still_active()


def test_an_unknown_key_id_stops_the_answer(jobs_table: DynamoDBClient) -> None:
    clock = Clock()
    check = KeyCheck(ApiKeyStore(jobs_table, JOBS_TABLE), "key_gone", every_s=60, clock=clock)
    clock.now += 60
    assert not check.still_active()
