"""Scheduled task: send the queue message of jobs whose submission stored them but never sent it, and fail the
jobs abandoned RUNNING with no message left."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.aws import AwsClients
from shared.errors import RetryableError
from shared.orchestration import Orchestrator
from shared.queue import JobQueue
from shared.ratelimit import DailyGpuBudget
from shared.settings import get_settings
from workflows.jobmetrics import MeteredJobsRepository
from workflows.requeue import RequeueSweeper
from workflows.webhooks import start_notice_retrying

logger = Logger(service="sdq-requeue")


@lru_cache(maxsize=1)
def sweeper() -> RequeueSweeper:
    settings = get_settings()
    aws = AwsClients(settings)
    orchestrator = Orchestrator(aws.stepfunctions(), settings.state_machine_arn)
    return RequeueSweeper(
        MeteredJobsRepository(aws.dynamodb(), settings.table_name),
        JobQueue(aws.sqs(), settings.queue_url, settings.queue_routes),
        requeue_after_s=settings.requeue_after_s,
        budget_s=settings.requeue_budget_s,
        abandoned_after_s=settings.abandoned_after_s,
        # Retried within the run: the job is FAILED already, so no later sweep finds it to try again.
        budget=DailyGpuBudget(aws.dynamodb(), settings.table_name),
        notify=lambda job: start_notice_retrying(orchestrator, job, job.status.value.lower(), log=logger, once=True),
    )


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    report = sweeper().sweep()
    if report.failed:
        # Counted by the function's Errors alarm (the template turns off Lambda's own retries of a failed run);
        # the jobs stay marked and the next scheduled run tries them again.
        raise RetryableError(f"{report.failed} jobs could not be requeued or failed this run")
    return report.as_dict()
