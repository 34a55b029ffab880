"""Routing per fleet, against moto's SQS: a job is sent to the queue of its model's fleet (the template gives each
fleet with workers of its own a queue), a model of a fleet without one to the default jobs queue."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import boto3
import pytest
from moto import mock_aws

from shared.contracts import GenerationRequest, QueueMessage, utcnow
from shared.queue import JobQueue, parse_body
from shared.settings import Settings
from tests.cases import TWO_FLEET_REGISTRY

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

REGISTRY = TWO_FLEET_REGISTRY


@pytest.fixture
def sqs() -> Iterator[SQSClient]:
    with mock_aws():
        yield boto3.client("sqs", region_name="us-east-1")


def message(model: str) -> QueueMessage:
    request = GenerationRequest.model_validate({"prompt": "a fox", "model": model}, context={"trusted": True})
    return QueueMessage(job_id=f"job-{model}", tenant="t-1", request=request, enqueued_at=utcnow())


def received_models(sqs: SQSClient, url: str) -> list[str | None]:
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    return [parsed.request.model for m in messages if (parsed := parse_body(m["Body"])) is not None]


def test_a_job_goes_to_its_models_fleet_queue_and_other_models_to_the_default_queue(
    sqs: SQSClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = sqs.create_queue(QueueName="jobs")["QueueUrl"]
    large = sqs.create_queue(QueueName="jobs-large")["QueueUrl"]
    monkeypatch.setenv("SDQ_MODEL_REGISTRY", json.dumps(REGISTRY))
    monkeypatch.setenv("SDQ_MODELS", '["tiny", "xl"]')
    monkeypatch.setenv("SDQ_FLEET_QUEUE_URLS", json.dumps({"large": large}))
    settings = Settings(queue_url=default)
    assert settings.queue_routes == {"xl": large}
    queue = JobQueue(sqs, settings.queue_url, settings.queue_routes)

    queue.send(message("xl"))
    queue.send(message("tiny"))

    assert received_models(sqs, large) == ["xl"]
    assert received_models(sqs, default) == ["tiny"]
