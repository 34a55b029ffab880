"""Step Functions tasks: postprocess a generated job (formats, thumbnails, metadata, S3 outputs), settle the
jobs that joined it (the result cache's SettleJoined step, payload ``{"settle_joined": true, ...}``), and count a
job the state machine finished (CountSucceeded/CountFailed, payload ``{"count_finished": true, ...}``)."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError

from shared.aws import AwsClients
from shared.errors import RetryableError
from shared.jobs import JobsRepository
from shared.media import MediaStore
from shared.observability import job_keys
from shared.orchestration import Orchestrator
from shared.queue import JobQueue
from shared.ratelimit import DailyGpuBudget
from shared.settings import get_settings
from shared.tracing import annotate_job
from workflows.jobmetrics import MeteredJobsRepository, record_marked
from workflows.postprocess import PostprocessInput, Postprocessor
from workflows.resultcache import ResultCache
from workflows.webhooks import WEBHOOK_GIVEN_UP

logger = Logger(service="sdq-postprocess")
tracer = Tracer(service="sdq-postprocess")


@lru_cache(maxsize=1)
def postprocessor() -> Postprocessor:
    settings = get_settings()
    aws = AwsClients(settings)
    return Postprocessor(
        JobsRepository(aws.dynamodb(), settings.table_name),
        MediaStore(aws.s3(), settings.bucket),
        outputs_prefix=settings.outputs_prefix,
    )


@lru_cache(maxsize=4)
def result_cache(state_machine_arn: str) -> ResultCache:
    """The settling side of the result cache; the state machine passes its own ARN (the template cannot name it
    to this function without a cycle), which the followers' webhook notices start executions of."""
    settings = get_settings()
    aws = AwsClients(settings)
    return ResultCache(
        MeteredJobsRepository(aws.dynamodb(), settings.table_name),
        JobQueue(aws.sqs(), settings.queue_url, settings.queue_routes),
        settings,
        orchestrator=lambda: Orchestrator(aws.stepfunctions(), state_machine_arn),
        budget=DailyGpuBudget(aws.dynamodb(), settings.table_name),
    )


def settle_joined(event: dict[str, Any]) -> dict[str, Any]:
    """SettleJoined: finish (or send to the queue) the jobs that joined ``event["job_id"]``."""
    try:
        report = result_cache(str(event["state_machine_arn"])).settle(str(event["job_id"]))
    except (BotoCoreError, ClientError) as exc:
        raise RetryableError(f"{type(exc).__name__}: {exc}") from exc
    return {"completed": report.completed, "released": report.released, "skipped": report.skipped}


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Input: the worker's hand-off; output: ``{status, skipped, outputs, outputs_json}`` for MarkSucceeded. A
    SettleJoined payload is settled instead (:func:`settle_joined`), a CountSucceeded/CountFailed one counted, a
    CountWebhookGivenUp one logged (``WEBHOOK_GIVEN_UP``, which WebhookFailuresAlarm counts).
    Its log lines and its X-Ray subsegment name the job (and its tenant, where the payload has it)."""
    annotate_job(event.get("job_id"), event.get("tenant"))
    with job_keys(logger, job_id=event.get("job_id"), tenant=event.get("tenant")):
        if event.get("settle_joined"):
            return settle_joined(event)
        if event.get("count_finished"):
            return record_marked(event)
        if event.get("webhook_given_up"):
            # Notify failed past the state machine's retries, so no "webhook attempt" line says it gave up.
            logger.warning(WEBHOOK_GIVEN_UP, error=str(event.get("error") or "unknown"))
            return {"reported": True}
        return postprocess(event)


def postprocess(event: dict[str, Any]) -> dict[str, Any]:
    """The worker's hand-off: the job's outputs written, and one ``"job postprocessed"`` line."""
    try:
        result = postprocessor().run(PostprocessInput.model_validate(event))
    except (BotoCoreError, ClientError) as exc:
        # S3/DynamoDB trouble that outlived botocore's own retries: the state machine retries RetryableError
        # with backoff (idempotent: outputs have fixed keys), then fails the job.
        raise RetryableError(f"{type(exc).__name__}: {exc}") from exc
    logger.info(
        "job postprocessed",
        outputs=len(result.outputs),
        skipped=result.skipped,
        error_code=result.failure.code if result.failure is not None else None,
    )
    body = result.model_dump(mode="json")
    # MarkSucceeded stores this string as the job's ``outputs`` attribute as is.
    body["outputs_json"] = json.dumps(body["outputs"], separators=(",", ":"))
    return body
