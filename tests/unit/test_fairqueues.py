"""Job messages carry their tenant as the message group, and the local cloud's standard queue hands them out as a
fair queue does: the tenants with fewest messages in flight first."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from localcloud import fairqueues
from shared.contracts import GenerationRequest, QueueMessage, utcnow
from shared.queue import WorkerQueue


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerQueue]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        fairqueues.install()
        try:
            yield WorkerQueue(sqs, sqs.create_queue(QueueName="jobs")["QueueUrl"])
        finally:
            fairqueues.uninstall()


def send(queue: WorkerQueue, tenant: str, n: int) -> None:
    request = GenerationRequest.model_validate({"prompt": "a fox"}, context={"trusted": True})
    for i in range(n):
        queue.send(QueueMessage(job_id=f"{tenant}-{i}", tenant=tenant, request=request, enqueued_at=utcnow()))


def receive(queue: WorkerQueue, n: int) -> list[str]:
    got = queue.receive(max_messages=n, wait_s=0, visibility_s=60)
    return [r.message.job_id for r in got if r.message is not None]


def test_the_tenant_is_the_message_group(queue: WorkerQueue) -> None:
    send(queue, "acme", 1)
    sqs = queue._sqs
    got = sqs.receive_message(QueueUrl=queue.url, MessageSystemAttributeNames=["MessageGroupId"])["Messages"]
    assert got[0]["Attributes"]["MessageGroupId"] == "acme"


def test_a_quiet_tenant_is_handed_out_before_a_busy_tenants_backlog(queue: WorkerQueue) -> None:
    send(queue, "a", 12)
    first = queue.receive(max_messages=4, wait_s=0, visibility_s=60)
    assert [r.message.job_id for r in first if r.message] == ["a-0", "a-1", "a-2", "a-3"]  # alone: send order
    send(queue, "b", 2)
    # "a" has 4 in flight, "b" none: b's messages first, though a's waited longer.
    assert receive(queue, 3) == ["b-0", "b-1", "a-4"]
    send(queue, "c", 1)
    assert receive(queue, 2) == ["c-0", "a-5"]  # a has 5 in flight, b 2 but none waiting


def test_with_nothing_in_flight_the_order_is_the_send_order(queue: WorkerQueue) -> None:
    send(queue, "a", 3)
    queue.set_visibility(queue.receive(max_messages=3, wait_s=0, visibility_s=60), 0)  # handed back
    send(queue, "b", 1)
    assert receive(queue, 4) == ["a-0", "a-1", "a-2", "b-0"]
