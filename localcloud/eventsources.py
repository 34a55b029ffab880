"""Event sources for the local cloud: SQS event source mappings (poll each mapped queue and invoke its function,
as Lambda's poller does on AWS: records in the SQS event shape, partial batch failures honoured), scheduled
EventBridge rules (invoke the function on its schedule, optionally compressed) and EventBridge rules on Step
Functions execution status changes (moto's executions emit no events: their statuses are polled)."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from localcloud.provision import (
    EXECUTION_STATUS_CHANGE,
    EventSource,
    ExecutionStatusRule,
    LocalResources,
    Schedule,
)


def local_client(resources: LocalResources, service: str) -> Any:
    """A boto3 client of the local cloud, for one poller thread (sessions are not shared across threads)."""
    return boto3.session.Session().client(
        service,  # type: ignore[call-overload]
        endpoint_url=resources.endpoint_url,
        region_name=resources.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - the local cloud accepts any key
    )


def _record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    attributes = {
        name: {
            "stringValue": value.get("StringValue"),
            "binaryValue": value.get("BinaryValue"),
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": value.get("DataType", "String"),
        }
        for name, value in message.get("MessageAttributes", {}).items()
    }
    body = message.get("Body", "")
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": body,
        "attributes": message.get("Attributes", {}),
        "messageAttributes": attributes,
        "md5OfBody": hashlib.md5(body.encode(), usedforsecurity=False).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


class SqsEventSourcePoller:
    """One thread per mapping: receive, invoke the function synchronously, delete what succeeded."""

    def __init__(self, resources: LocalResources, *, wait_s: int = 1) -> None:
        self._res = resources
        self._wait_s = wait_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for source in self._res.event_sources:
            thread = threading.Thread(
                target=self._poll, args=(source,), name=f"esm-{source.function_name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self._wait_s + 5)

    def _poll(self, source: EventSource) -> None:
        sqs, lam = local_client(self._res, "sqs"), local_client(self._res, "lambda")
        queue_url = sqs.get_queue_url(QueueName=source.queue_arn.rsplit(":", 1)[-1])["QueueUrl"]
        while not self._stop.is_set():
            try:
                messages = sqs.receive_message(
                    QueueUrl=queue_url,
                    MaxNumberOfMessages=min(source.batch_size, 10),
                    WaitTimeSeconds=self._wait_s,
                    MessageAttributeNames=["All"],
                    MessageSystemAttributeNames=["All"],
                ).get("Messages", [])
                if not messages:
                    continue
                event = {"Records": [_record(m, source.queue_arn, self._res.region) for m in messages]}
                resp = lam.invoke(FunctionName=source.function_name, Payload=json.dumps(event).encode())
                if resp.get("FunctionError"):
                    continue  # the whole batch becomes visible again, as on AWS
                result = json.loads(resp["Payload"].read() or b"{}")
                failed = {f["itemIdentifier"] for f in (result or {}).get("batchItemFailures", [])}
                done = [m for m in messages if m["MessageId"] not in failed]
                if done:
                    sqs.delete_message_batch(
                        QueueUrl=queue_url,
                        Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
                    )
            except (ClientError, BotoCoreError):
                self._stop.wait(1.0)


class SchedulePoller:
    """One thread per scheduled rule: invoke its function with a ``Scheduled Event``, every ``interval_s`` of the
    rule or every ``every_s`` when given (the local profile runs minute schedules every few seconds)."""

    def __init__(self, resources: LocalResources, *, every_s: float | None = None) -> None:
        self._res = resources
        self._every_s = every_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for schedule in self._res.schedules:
            thread = threading.Thread(
                target=self._run, args=(schedule,), name=f"schedule-{schedule.function_name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, schedule: Schedule) -> None:
        lam = local_client(self._res, "lambda")
        interval = self._every_s if self._every_s is not None else schedule.interval_s
        while not self._stop.wait(interval):
            event = {
                "version": "0",
                "id": str(uuid.uuid4()),
                "detail-type": "Scheduled Event",
                "source": "aws.events",
                "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "region": self._res.region,
                "resources": [schedule.rule_arn],
                "detail": {},
            }
            try:
                lam.invoke(FunctionName=schedule.function_name, Payload=json.dumps(event).encode())
            except (ClientError, BotoCoreError):
                continue  # as on AWS, a failed scheduled run is simply followed by the next one


def _epoch_ms(value: Any) -> int | None:
    return int(value.timestamp() * 1000) if isinstance(value, datetime) else None


class ExecutionStatusPoller:
    """Delivers ``Step Functions Execution Status Change`` events as EventBridge would: each execution that
    reaches one of a rule's statuses (after the poller started) is sent once to the rule's queue, the event as
    the message body."""

    def __init__(self, resources: LocalResources, *, every_s: float = 1.0) -> None:
        self._res = resources
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sfn: Any = None
        self._sqs: Any = None
        self._queue_urls: dict[str, str] = {}
        self._done: set[tuple[str, str]] = set()  # (queue, execution) delivered

    def start(self) -> None:
        if not self._res.execution_rules:
            return
        self._sfn, self._sqs = local_client(self._res, "stepfunctions"), local_client(self._res, "sqs")
        for rule in self._res.execution_rules:
            name = rule.queue_arn.rsplit(":", 1)[1]
            self._queue_urls[rule.queue_arn] = self._sqs.get_queue_url(QueueName=name)["QueueUrl"]
            for execution in self._ended(rule):  # executions that ended before the poller are not news
                self._done.add((rule.queue_arn, execution["executionArn"]))
        self._thread = threading.Thread(target=self._run, name="execution-status-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _ended(self, rule: ExecutionStatusRule) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for machine in rule.state_machine_arns:
            for status in rule.statuses:
                pages = self._sfn.get_paginator("list_executions").paginate(
                    stateMachineArn=machine, statusFilter=status
                )
                found.extend(e for page in pages for e in page["executions"])
        return found

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            for rule in self._res.execution_rules:
                try:
                    self._deliver_new(rule)
                except (ClientError, BotoCoreError):
                    continue

    def _deliver_new(self, rule: ExecutionStatusRule) -> None:
        for execution in self._ended(rule):
            key = (rule.queue_arn, execution["executionArn"])
            if key in self._done:
                continue
            described = self._sfn.describe_execution(executionArn=execution["executionArn"])
            event = {
                "version": "0",
                "id": str(uuid.uuid4()),
                "detail-type": EXECUTION_STATUS_CHANGE,
                "source": "aws.states",
                "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "region": self._res.region,
                "resources": [execution["executionArn"]],
                "detail": {
                    "executionArn": execution["executionArn"],
                    "stateMachineArn": described["stateMachineArn"],
                    "name": described["name"],
                    "status": described["status"],
                    "startDate": _epoch_ms(described.get("startDate")),
                    "stopDate": _epoch_ms(described.get("stopDate")),
                    "input": described.get("input"),
                    "inputDetails": {"included": True},
                    "output": described.get("output"),
                    "error": described.get("error"),
                    "cause": described.get("cause"),
                },
            }
            self._sqs.send_message(QueueUrl=self._queue_urls[rule.queue_arn], MessageBody=json.dumps(event))
            self._done.add(key)
