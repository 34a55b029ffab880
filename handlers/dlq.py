"""SQS (dead-letter queue) event source: fail the jobs whose messages were dead-lettered."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.aws import AwsClients
from shared.contracts import Job
from shared.errors import RetryableError
from shared.jobs import JobsRepository
from shared.orchestration import Orchestrator
from shared.queue import JobQueue
from shared.settings import get_settings
from workflows.deadletter import handle_dead_letter
from workflows.jobmetrics import MeteredJobsRepository
from workflows.webhooks import start_finished_notice

logger = Logger(service="sdq-dlq")
# A whole batch that failed is raised below only when one of its records failed for a reason of this function's.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


@dataclass(frozen=True)
class Deps:
    repo: JobsRepository
    queue: JobQueue
    orchestrator: Orchestrator
    max_attempts: int

    def notify(self, job: Job) -> None:
        """The failed job's webhook; one per job, however often its dead letter is retried."""
        start_finished_notice(self.orchestrator, job)


@lru_cache(maxsize=1)
def deps() -> Deps:
    settings = get_settings()
    aws = AwsClients(settings)
    return Deps(
        MeteredJobsRepository(aws.dynamodb(), settings.table_name),
        JobQueue(aws.sqs(), settings.queue_url, settings.queue_routes),
        Orchestrator(aws.stepfunctions(), settings.state_machine_arn),
        settings.max_generation_attempts,
    )


def record_handler(record: SQSRecord) -> str:
    """One dead letter, in its job's trace (the message's ``AWSTraceHeader``, which the redrive keeps)."""
    attributes = {name: attr.string_value or "" for name, attr in record.message_attributes.items()}
    d = deps()
    return handle_dead_letter(
        d.repo,
        d.queue,
        record.body,
        attributes,
        max_attempts=d.max_attempts,
        notify=d.notify,
        trace_header=record.attributes.aws_trace_header,
    )


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    """Partial batch response: only the records that raised are retried. The invocation fails (an error that
    pages through LambdaErrorsAlarm) when every record failed, unless each was only a live job's dead letter, kept
    for later (RetryableError): that job is fine."""
    answer = process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
    errors = [info[1] for info in processor.exceptions]
    ours = [e for e in errors if not isinstance(e, RetryableError)]
    if ours and len(errors) == len(event.get("Records", [])):
        raise BatchProcessingError(f"All {len(errors)} records failed processing.", list(processor.exceptions))
    return answer
