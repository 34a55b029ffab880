"""Step Functions task: postprocess a generated job (formats, thumbnails, metadata, S3 outputs)."""

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
from shared.settings import get_settings
from workflows.postprocess import PostprocessInput, Postprocessor

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


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Input: the worker's hand-off; output: ``{status, skipped, outputs, outputs_json}`` for MarkSucceeded."""
    try:
        result = postprocessor().run(PostprocessInput.model_validate(event))
    except (BotoCoreError, ClientError) as exc:
        # S3/DynamoDB trouble that outlived botocore's own retries: the state machine retries RetryableError
        # with backoff (idempotent: outputs have fixed keys), then fails the job.
        raise RetryableError(f"{type(exc).__name__}: {exc}") from exc
    body = result.model_dump(mode="json")
    # MarkSucceeded stores this string as the job's ``outputs`` attribute as is.
    body["outputs_json"] = json.dumps(body["outputs"], separators=(",", ":"))
    return body
