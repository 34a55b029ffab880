"""A tenant's terminal webhooks in flight at once are bounded (Settings.webhook_deliveries_per_tenant): leases in
the jobs table, given back after each send, ending by themselves after a delivery that died; a delivery past the
bound sends nothing, records nothing and comes back later, its attempt count unchanged."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from handlers import notify
from shared.contracts import JobStatus
from shared.deliveryslots import DeliverySlots
from shared.jobs import JobsRepository
from shared.media import MediaStore
from shared.settings import Settings
from shared.webhooksecrets import WebhookSecrets
from tests.unit.conftest import JOBS_TABLE, TENANT, make_job
from workflows.webhooks import SLOT_LEASE_S, WAITING, Notifier, slot_wait_s

if TYPE_CHECKING:
    from collections.abc import Iterator

    from mypy_boto3_dynamodb import DynamoDBClient

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)


def test_a_tenant_holds_at_most_its_bound_and_other_tenants_are_not_counted(jobs_table: DynamoDBClient) -> None:
    slots = DeliverySlots(jobs_table, JOBS_TABLE)
    now = NOW.timestamp()
    assert [slots.acquire("a", f"d{i}", limit=2, lease_s=60, now=now) for i in range(3)] == [True, True, False]
    assert slots.acquire("b", "d0", limit=2, lease_s=60, now=now)
    slots.release("a", "d0")
    assert slots.acquire("a", "d3", limit=2, lease_s=60, now=now)
    assert not slots.acquire("a", "d4", limit=2, lease_s=60, now=now)
    slots.release("a", "never-held")  # nothing to give back: no error


def test_a_lease_nobody_gave_back_ends_by_itself(jobs_table: DynamoDBClient) -> None:
    slots = DeliverySlots(jobs_table, JOBS_TABLE)
    now = NOW.timestamp()
    assert slots.acquire("a", "died", limit=1, lease_s=60, now=now)
    assert not slots.acquire("a", "next", limit=1, lease_s=60, now=now + 59)
    assert slots.acquire("a", "next", limit=1, lease_s=60, now=now + 61)
    item = jobs_table.get_item(TableName=JOBS_TABLE, Key=DeliverySlots.key("a"))["Item"]
    assert set(item["leases"]["M"]) == {"next"}  # the ended lease was removed by that write


def test_a_delivery_that_loses_the_race_for_the_last_slot_reads_again_and_waits(
    jobs_table: DynamoDBClient,
) -> None:
    slots = DeliverySlots(jobs_table, JOBS_TABLE)
    now = NOW.timestamp()
    assert slots.acquire("a", "first", limit=2, lease_s=60, now=now)
    read = slots._read
    raced = []

    def read_then_lose_the_race(tenant: str, at: float) -> Any:
        seen = read(tenant, at)
        if not raced:  # another delivery takes the last slot between this one's read and its write
            raced.append(DeliverySlots(jobs_table, JOBS_TABLE).acquire("a", "other", limit=2, lease_s=60, now=at))
        return seen

    slots._read = read_then_lose_the_race  # type: ignore[method-assign]
    assert not slots.acquire("a", "late", limit=2, lease_s=60, now=now)
    assert raced == [True]
    item = jobs_table.get_item(TableName=JOBS_TABLE, Key=DeliverySlots.key("a"))["Item"]
    assert set(item["leases"]["M"]) == {"first", "other"}


def test_the_wait_for_a_slot_grows_with_each_wait_up_to_its_ceiling() -> None:
    assert [slot_wait_s(w, lambda: 1.0) for w in range(8)] == [2, 4, 8, 16, 32, 64, 120, 120]
    assert [slot_wait_s(w, lambda: 0.0) for w in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert slot_wait_s(10**6, lambda: 0.5) <= 120


class Receiver:
    """A receiver on 127.0.0.1 that answers 200 and counts requests."""

    def __init__(self) -> None:
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.requests += 1
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def notifier_for(jobs_table: DynamoDBClient, **settings: Any) -> Notifier:
    return Notifier(
        JobsRepository(jobs_table, JOBS_TABLE),
        MediaStore(boto3.client("s3", region_name="us-east-1"), "media"),
        WebhookSecrets(jobs_table, JOBS_TABLE, overlap_s=0),
        Settings(allow_loopback_callbacks=True, **settings),
        slots=DeliverySlots(jobs_table, JOBS_TABLE),
        now=lambda: NOW,
        rng=lambda: 1.0,
    )


def test_a_delivery_past_the_bound_sends_and_records_nothing_and_comes_back_later(
    jobs_table: DynamoDBClient, receiver: Receiver
) -> None:
    repo = JobsRepository(jobs_table, JOBS_TABLE)
    job, _ = repo.create(make_job(request={"callback_url": receiver.url}))
    repo.transition(job.job_id, JobStatus.CANCELLED, tenant=TENANT)
    slots = DeliverySlots(jobs_table, JOBS_TABLE)
    assert slots.acquire(TENANT, "slow-delivery", limit=1, lease_s=SLOT_LEASE_S, now=NOW.timestamp())
    notifier = notifier_for(jobs_table, webhook_deliveries_per_tenant=1)

    waiting = notifier.deliver(job.job_id, TENANT, made=2, waits=1)
    assert waiting is not None
    assert (waiting.outcome, waiting.status, waiting.retry_at) == (WAITING, None, NOW + timedelta(seconds=4))
    assert receiver.requests == 0
    assert repo.get(job.job_id).webhook is None  # not an attempt

    slots.release(TENANT, "slow-delivery")
    sent = notifier.deliver(job.job_id, TENANT, made=2, waits=2)
    assert sent is not None
    assert (sent.outcome, receiver.requests) == ("delivered", 1)
    # Its lease was given back: the next delivery of the tenant takes it.
    assert slots.acquire(TENANT, "next", limit=1, lease_s=SLOT_LEASE_S, now=NOW.timestamp())


def test_the_task_keeps_the_attempt_count_while_it_waits_for_a_slot(
    jobs_table: DynamoDBClient, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = JobsRepository(jobs_table, JOBS_TABLE)
    job, _ = repo.create(make_job(request={"callback_url": receiver.url}))
    repo.transition(job.job_id, JobStatus.CANCELLED, tenant=TENANT)
    DeliverySlots(jobs_table, JOBS_TABLE).acquire(TENANT, "other", limit=1, lease_s=60, now=NOW.timestamp())
    monkeypatch.setattr(notify, "notifier", lambda: notifier_for(jobs_table, webhook_deliveries_per_tenant=1))

    result = notify.lambda_handler.__wrapped__.__wrapped__(  # type: ignore[attr-defined]
        {"job_id": job.job_id, "tenant": TENANT, "made": 3, "waits": 0}, None
    )
    assert result == {
        "outcome": WAITING,
        "status": None,
        "error": None,
        "retry_at": "2026-12-06T12:00:02Z",
        "made": 3,
        "waits": 1,
    }
