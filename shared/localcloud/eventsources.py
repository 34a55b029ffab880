"""SQS event source mappings for the local cloud: poll each mapped queue and invoke its function, as Lambda's
poller does on AWS (records in the SQS event shape, partial batch failures honoured)."""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from shared.localcloud.provision import EventSource, LocalResources


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

    def _client(self, service: str) -> Any:
        return boto3.session.Session().client(
            service,  # type: ignore[call-overload]
            endpoint_url=self._res.endpoint_url,
            region_name=self._res.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - the local cloud accepts any key
        )

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
        sqs, lam = self._client("sqs"), self._client("lambda")
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
