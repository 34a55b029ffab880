"""EventBridge target: fail the jobs of workflow executions that failed, timed out or were aborted."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.aws import AwsClients
from shared.contracts import Job
from shared.jobs import JobsRepository
from shared.orchestration import Orchestrator
from shared.settings import get_settings
from workflows.failedexecution import handle_failed_execution
from workflows.webhooks import start_notice

logger = Logger(service="sdq-failed-execution")


@dataclass(frozen=True)
class Deps:
    repo: JobsRepository
    orchestrator: Orchestrator

    def notify(self, job: Job) -> None:
        """The finished job's webhook, once per job and status (``<job id>-failed``, as the DLQ handler names
        its notice, or ``<job id>-succeeded``)."""
        start_notice(self.orchestrator, job, job.status.value.lower(), once=True)


@lru_cache(maxsize=1)
def deps() -> Deps:
    settings = get_settings()
    aws = AwsClients(settings)
    return Deps(
        JobsRepository(aws.dynamodb(), settings.table_name),
        Orchestrator(aws.stepfunctions(), settings.state_machine_arn),
    )


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, str]:
    """Input: a ``Step Functions Execution Status Change`` event. An error is retried by Lambda (asynchronous
    invocation); the write and the notice are both idempotent."""
    d = deps()
    return {"outcome": handle_failed_execution(d.repo, event.get("detail") or {}, notify=d.notify)}
