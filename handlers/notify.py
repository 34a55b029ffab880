"""Step Functions task: one attempt of the job's terminal webhook (the state machine waits out the schedule)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.aws import AwsClients
from shared.deliveryslots import DeliverySlots
from shared.eventrecords import EventRecords
from shared.jobs import JobsRepository
from shared.media import MediaStore
from shared.observability import job_keys
from shared.settings import get_settings
from shared.tracing import annotate_job
from shared.webhooksecrets import webhook_secrets
from workflows.webhooks import WAITING, Notifier

logger = Logger(service="sdq-notify")
tracer = Tracer(service="sdq-notify")


@lru_cache(maxsize=1)
def notifier() -> Notifier:
    settings = get_settings()
    aws = AwsClients(settings)
    return Notifier(
        JobsRepository(aws.dynamodb(), settings.table_name),
        MediaStore(aws.s3(), settings.bucket),
        webhook_secrets(aws, settings),
        settings,
        events=EventRecords(aws.dynamodb(), settings.table_name),
        slots=DeliverySlots(aws.dynamodb(), settings.table_name),
    )


def execution_start(value: object) -> datetime | None:
    """The execution's start as Step Functions gives it (ISO 8601, ``...Z``), in UTC; None when absent (an
    execution started before the state machine passed it)."""
    if value is None:
        return None
    start = datetime.fromisoformat(str(value))
    return start if start.tzinfo is not None else start.replace(tzinfo=UTC)


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Input ``{job_id, tenant, started_at?, made?, waits?}`` (``started_at``: when the execution began, its
    ``$$.Execution.StartTime``; ``made``: attempts this delivery made before, ``waits``: the times it found its
    tenant's delivery slots taken since its last attempt; 0 when absent). Raises WebhookRetryable for the state
    machine's Retry. A result with ``retry_at`` (and ``made``, ``waits``) has the state machine wait until then
    and call again with those; a wait for a slot is not an attempt. Its X-Ray subsegment names the job."""
    annotate_job(event.get("job_id"), event.get("tenant"))
    made, waits = int(event.get("made", 0)), int(event.get("waits", 0))
    started_at = execution_start(event.get("started_at"))
    with job_keys(logger, job_id=event.get("job_id"), tenant=event.get("tenant")):
        attempt = notifier().deliver(str(event["job_id"]), str(event["tenant"]), made, waits, started_at)
    if attempt is None:
        return {"outcome": "nothing_to_send"}
    result: dict[str, Any] = {"outcome": attempt.outcome, "status": attempt.status, "error": attempt.error}
    if attempt.retry_at is not None:
        waiting = attempt.outcome == WAITING
        result |= {
            "retry_at": attempt.retry_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "made": made if waiting else made + 1,
            "waits": waits + 1 if waiting else 0,
        }
    return result
