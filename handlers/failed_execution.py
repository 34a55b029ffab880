"""SQS event source (the failed-execution events queue, fed by an EventBridge rule): fail the jobs of workflow
executions that failed, timed out or were aborted."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.aws import AwsClients
from shared.contracts import Job
from shared.jobs import JobsRepository
from shared.observability import job_keys
from shared.orchestration import Orchestrator
from shared.settings import get_settings
from workflows.failedexecution import execution_job, handle_failed_execution
from workflows.jobmetrics import MeteredJobsRepository
from workflows.webhooks import start_finished_notice

logger = Logger(service="sdq-failed-execution")
processor = BatchProcessor(event_type=EventType.SQS)


@dataclass(frozen=True)
class Deps:
    repo: JobsRepository
    orchestrator: Orchestrator

    def notify(self, job: Job) -> None:
        """The finished job's webhook, once per job and status (the DLQ handler's ``job.failed`` included)."""
        start_finished_notice(self.orchestrator, job)


@lru_cache(maxsize=1)
def deps() -> Deps:
    settings = get_settings()
    aws = AwsClients(settings)
    return Deps(
        MeteredJobsRepository(aws.dynamodb(), settings.table_name),
        Orchestrator(aws.stepfunctions(), settings.state_machine_arn),
    )


def record_handler(record: SQSRecord) -> str:
    """One EventBridge event (``Step Functions Execution Status Change``) per message. An AWS error fails the
    record, which the queue delivers again after its visibility timeout; the write and the notice are both
    idempotent."""
    try:
        event = json.loads(record.body)
    except ValueError:
        logger.error("not an EventBridge event; dropped", body_prefix=record.body[:200])
        return "not_a_job_run"
    detail = event.get("detail") if isinstance(event, dict) else None
    detail = detail if isinstance(detail, dict) else {}
    job_id, tenant = execution_job(detail)
    d = deps()
    with job_keys(logger, job_id=job_id, tenant=tenant):
        return handle_failed_execution(d.repo, detail, notify=d.notify)


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    """Partial batch response: only the records that raised are retried."""
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
