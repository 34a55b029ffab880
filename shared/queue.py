"""The jobs queue (SQS): sending job messages and, for the worker, receiving, extending and deleting them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.contracts import QueueMessage
from shared.tracing import current_header

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageRequestTypeDef


@dataclass(frozen=True)
class Received:
    """One received message: its parsed body (None when unparseable) and what SQS needs to act on it."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    message: QueueMessage | None
    trace_header: str | None = None  # the sender's X-Ray trace (AWSTraceHeader), continued by the worker


class JobQueue:
    """Thin adapter over the jobs queues: ``queue_url``, and the queue of each model that ``routes`` names (its
    fleet's, ``Settings.queue_routes``)."""

    def __init__(self, sqs: SQSClient, queue_url: str, routes: Mapping[str, str] | None = None) -> None:
        self._sqs = sqs
        self.url = queue_url
        self._routes = dict(routes or {})

    def url_for(self, message: QueueMessage) -> str:
        """The queue of the message's model: its fleet's, else the default one."""
        return self._routes.get(message.request.model or "", self.url)

    def send(self, message: QueueMessage) -> str:
        """Send one job message; returns the SQS message id. Raises botocore errors after its retries.

        The tenant is the message group: on a standard queue that makes it a fair queue, where SQS hands out
        other tenants' messages first while one tenant holds a disproportionate share of the messages in flight
        (docs/worker.md, "Fair share and priority"). The current X-Ray trace header, when there is one, goes
        with it as ``AWSTraceHeader``, so the job's trace continues in the worker (shared/tracing.py)."""
        request: SendMessageRequestTypeDef = {
            "QueueUrl": self.url_for(message),
            "MessageBody": message.model_dump_json(),
            "MessageGroupId": message.tenant,
            "MessageAttributes": {
                "job_id": {"DataType": "String", "StringValue": message.job_id},
                "tenant": {"DataType": "String", "StringValue": message.tenant},
            },
        }
        trace = current_header()
        if trace:
            request["MessageSystemAttributes"] = {"AWSTraceHeader": {"DataType": "String", "StringValue": trace}}
        resp = self._sqs.send_message(**request)
        return resp["MessageId"]


def parse_body(body: str) -> QueueMessage | None:
    """The job message in ``body``, or None when it is not one (a poison message)."""
    try:
        return QueueMessage.model_validate_json(body, context={"trusted": True})
    except ValueError:
        return None


class WorkerQueue(JobQueue):
    """The worker's side of the jobs queue: receive, keep invisible while held, delete once handed off."""

    def receive(self, *, max_messages: int, wait_s: int, visibility_s: int) -> list[Received]:
        resp = self._sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=wait_s,
            VisibilityTimeout=visibility_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "AWSTraceHeader"],
            MessageAttributeNames=["All"],
        )
        received = []
        for msg in resp.get("Messages", []):
            body = msg.get("Body", "")
            attributes = msg.get("Attributes", {})
            received.append(
                Received(
                    message_id=msg["MessageId"],
                    receipt_handle=msg["ReceiptHandle"],
                    body=body,
                    receive_count=int(attributes.get("ApproximateReceiveCount", "1")),
                    message=parse_body(body),
                    trace_header=attributes.get("AWSTraceHeader"),
                )
            )
        return received

    def set_visibility(self, messages: list[Received], visibility_s: int) -> list[str]:
        """Change visibility of up to any number of messages; returns the ids SQS refused."""
        failed: list[str] = []
        for start in range(0, len(messages), 10):
            chunk = messages[start : start + 10]
            resp = self._sqs.change_message_visibility_batch(
                QueueUrl=self.url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": visibility_s}
                    for i, m in enumerate(chunk)
                ],
            )
            failed += [chunk[int(f["Id"])].message_id for f in resp.get("Failed", [])]
        return failed

    def delete(self, messages: list[Received]) -> list[str]:
        """Delete messages; returns the ids SQS failed to delete (they come back, and are no-ops then)."""
        failed: list[str] = []
        for start in range(0, len(messages), 10):
            chunk = messages[start : start + 10]
            resp = self._sqs.delete_message_batch(
                QueueUrl=self.url,
                Entries=[{"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(chunk)],
            )
            failed += [chunk[int(f["Id"])].message_id for f in resp.get("Failed", [])]
        return failed
