"""The API Lambda: REST routes over the submission workflow (API Gateway REST proxy events).

Locally the same ``lambda_handler`` serves HTTP through :mod:`localcloud.api`.
"""

from __future__ import annotations

import base64
import json
import pathlib
import re
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from http import HTTPStatus
from typing import Annotated, Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, api_gateway
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn, Server, ServerVariable
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path, Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.shared.version import VERSION as POWERTOOLS_VERSION
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError

from shared.audit import (
    USER_AGENT_MAX_CHARS,
    AuditAction,
    AuditEntry,
    AuditList,
    AuditLog,
    AuditOutcome,
    PendingAudit,
)
from shared.aws import AwsClients
from shared.contracts import (
    ErrorBody,
    GenerationRequest,
    JobList,
    JobStatus,
    JobView,
    ModelList,
    RotatedWebhookSecret,
    Upload,
    WebhookSecret,
    utcnow,
)
from shared.errors import (
    BadRequest,
    Conflict,
    IdempotencyKeyInUse,
    InvalidCursor,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from shared.jobs import is_valid_job_id
from shared.media import MediaStore
from shared.observability import emit_metrics
from shared.orchestration import Orchestrator
from shared.queue import JobQueue
from shared.queuestate import QueueState
from shared.ratelimit import DailyGpuBudget, RateLimiter
from shared.settings import Settings, get_settings
from shared.tracing import annotate_job, continued, current_header, request_header
from shared.webhooksecrets import WebhookSecrets, webhook_secrets
from workflows import jobevents
from workflows.authorization import Authorization
from workflows.jobmetrics import MeteredJobsRepository
from workflows.jobview import job_list, job_view
from workflows.modelcatalog import model_catalog
from workflows.preprocessing import Inputs
from workflows.queueposition import QueuePositions, QueueRules
from workflows.resultcache import ResultCache
from workflows.submission import SubmissionService
from workflows.waiting import MAX_WAIT_S, wait_until_finished
from workflows.webhooks import Redeliveries, start_notice_retrying

logger = Logger(service="sdq")
tracer = Tracer(service="sdq")
metrics = Metrics(namespace="sdq", service="api")


def _json_loads(text: str) -> Any:
    """``json.loads`` whose every refusal is a JSONDecodeError, which the router answers with 400: Python's
    own limits (an integer of more than 4300 digits) raise a plain ValueError, otherwise a 500."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except ValueError as exc:
        raise json.JSONDecodeError(str(exc), text, 0) from exc


SECURITY_SCHEMES: dict[str, Any] = {
    "apiKey": APIKey(**{"in": APIKeyIn.header}, name="x-api-key", description="The API key in `x-api-key`."),
}
# Every /v1 route needs the key (API Gateway's authorizer checks it), /health and the schema none.
API_KEY: list[dict[str, list[str]]] = [{"apiKey": []}]
DESCRIPTION = "Queue-based Stable Diffusion jobs."

# /docs: the Swagger UI's script and styles (1.7 MB) are files of their own at a URL naming the Powertools version
# that ships them, so browsers keep them for a year; the page itself (HTML and the schema) is cached for 5 minutes.
# API Gateway compresses both for clients that accept it (the template's MinimumCompressionSize).
SWAGGER_UI = pathlib.Path(api_gateway.__file__).resolve().parent / "openapi" / "swagger_ui"
SWAGGER_ASSETS = {"swagger-ui-bundle.min.js": "text/javascript", "swagger-ui.min.css": "text/css"}
DOCS_ASSETS = f"docs/assets/{POWERTOOLS_VERSION}"  # relative: right behind a stage path (/prod/docs) too
DOCS_PAGE_CACHE = "public, max-age=300"
DOCS_ASSET_CACHE = "public, max-age=31536000, immutable"
MODELS_MAX_AGE_S = 300  # the model list changes only with a deployment


def _docs_page_cached(router: Any, next_middleware: Any) -> Response[Any]:
    response: Response[Any] = next_middleware(router)
    response.headers["Cache-Control"] = DOCS_PAGE_CACHE
    return response


app = APIGatewayRestResolver(enable_validation=True, json_body_deserializer=_json_loads)
app.enable_swagger(
    path="/docs",
    title="sdq",
    version="1",
    description=DESCRIPTION,
    security_schemes=SECURITY_SCHEMES,
    swagger_base_url=DOCS_ASSETS,
    middlewares=[_docs_page_cached],
)

# The API on AWS: API Gateway's default URL of the stage `prod` (a custom domain works the same way).
AWS_SERVER = Server(
    url="https://{api_id}.execute-api.{region}.amazonaws.com/prod",
    description="API Gateway's default URL of a deployed stack (`sam deploy` prints it as ApiUrl)",
    variables={
        "api_id": ServerVariable(default="api-id", description="The REST API's id"),
        "region": ServerVariable(default="us-east-1", description="The stack's region"),
    },
)

# No length or pattern in the schema: the router would answer a mismatch with 422, while an id that cannot
# name a job is, like an unknown one, a 404 (``is_valid_job_id``).
JobId = Annotated[str, Path(description="The job's id: a 26-character ULID. Anything else is a 404.")]

# `Prefer: wait[=N]` (RFC 7240): other preferences, and a wait whose value is not whole seconds, are ignored.
Prefer = Annotated[
    str | None,
    Header(
        alias="Prefer",
        description=(
            f"`wait` or `wait=N`: hold the answer until the job has finished or N seconds (at most {MAX_WAIT_S};"
            f" `wait` alone means {MAX_WAIT_S}) have passed since the request arrived. `Preference-Applied` says"
            " what was honoured. Other preferences are ignored."
        ),
    ),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Makes retries safe: a repeat with the same body answers the job the first request made.",
    ),
]


def _header(description: str, schema: dict[str, Any] | None = None, *, required: bool = False) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema or {"type": "string"}}


LOCATION = _header("The job's URL.", required=True)
RETRY_AFTER_POLL = _header(
    "While the job has not finished: seconds to wait before polling it again.", {"type": "integer", "minimum": 0}
)
PREFERENCE_APPLIED = _header(
    f"`wait=N` when a `Prefer: wait` was honoured: N seconds at most (the asked value, capped at {MAX_WAIT_S})."
)
REPLAYED = _header("`true` when an Idempotency-Key replayed an earlier request's job.", required=True)
ERROR_RESPONSES: dict[int, Any] = {
    code: {"description": HTTPStatus(code).phrase, "content": {"application/json": {"model": ErrorBody}}}
    for code in (400, 401, 404, 409, 413, 415, 422, 429, 503)
}
ERROR_RESPONSES[429]["headers"] = {
    "Retry-After": _header("Seconds until a retry can succeed.", {"type": "integer", "minimum": 0}, required=True)
}
ERROR_RESPONSES[409]["headers"] = {
    "Retry-After": _header(
        "With `idempotency_key_in_use` when the key's job is written but not yet queued: seconds before a retry.",
        {"type": "integer", "minimum": 0},
    )
}


def _responses(status: int, description: str, model: type[Any]) -> dict[int, Any]:
    """OpenAPI responses: the success body plus every documented error."""
    return {status: {"description": description, "content": {"application/json": {"model": model}}}} | ERROR_RESPONSES


@dataclass(frozen=True)
class Services:
    settings: Settings
    submissions: SubmissionService
    media: MediaStore
    secrets: WebhookSecrets
    orchestrator: Orchestrator
    redeliveries: Redeliveries
    positions: QueuePositions
    audit: AuditLog
    inputs: Inputs
    models: ModelList


@lru_cache(maxsize=1)
def services() -> Services:
    """Built on the first request (never at import), then reused by the warm Lambda container."""
    settings = get_settings()
    aws = AwsClients(settings)
    repo = MeteredJobsRepository(aws.dynamodb(), settings.table_name)
    queue = JobQueue(aws.sqs(), settings.queue_url, settings.queue_routes)
    orchestrator = Orchestrator(aws.stepfunctions(), settings.state_machine_arn)
    media = MediaStore(aws.s3(), settings.bucket)
    inputs = Inputs(media, settings)
    audit = AuditLog(aws.dynamodb(), settings.audit_table_name, retention_days=settings.audit_retention_days)
    budget = DailyGpuBudget(aws.dynamodb(), settings.table_name)
    return Services(
        settings=settings,
        submissions=SubmissionService(
            repo,
            queue,
            settings,
            rate_limiter=RateLimiter(aws.dynamodb(), settings.table_name),
            budget=budget,
            cache=ResultCache(repo, queue, settings, orchestrator=lambda: orchestrator, budget=budget),
            inputs=inputs,
            audit=audit,
        ),
        media=media,
        secrets=webhook_secrets(aws, settings),
        orchestrator=orchestrator,
        redeliveries=Redeliveries(orchestrator, RateLimiter(aws.dynamodb(), settings.table_name), settings),
        positions=QueuePositions(
            QueueState(aws.dynamodb(), settings.table_name),
            rules=QueueRules(scales_from_zero=settings.fleet_scales_from_zero),
        ),
        audit=audit,
        inputs=inputs,
        models=model_catalog(settings),
    )


def _caller() -> Authorization:
    """The caller, as the authorizer found it before the request reached this function."""
    caller = app.context.get("caller")
    if not isinstance(caller, Authorization):
        raise Unauthorized()
    return caller


def _tenant() -> str:
    return _caller().tenant


def _stage_prefix() -> str:
    """``/prod`` when the client called through API Gateway's default URL (``.../prod/v1/jobs``), else ''."""
    context = app.current_event.get("requestContext") or {}
    stage, path = str(context.get("stage", "")), str(context.get("path", ""))
    return f"/{stage}" if stage and path.startswith(f"/{stage}/") else ""


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(
        status_code=status,
        content_type="application/json",
        body=body,
        headers=headers or {},
    )


def _view(job: Any, *, queue: bool = False) -> JobView:
    """``queue``: look up where a QUEUED job stands (three index reads, workflows/queueposition.py)."""
    s = services()
    return job_view(job, s.media, s.settings.presign_expiry_s, queue=s.positions.info(job) if queue else None)


def wait_preference(prefer: str | None) -> int | None:
    """The seconds a ``Prefer`` header asks to wait (RFC 7240), capped at MAX_WAIT_S; None when it asks none.

    ``wait`` alone asks for the cap. The first ``wait`` counts; one whose value is not whole seconds is ignored,
    as are all other preferences and their parameters.
    """
    for preference in (prefer or "").split(","):
        name, _, value = preference.split(";", 1)[0].partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip().strip('"')
        if not value:
            return MAX_WAIT_S
        if not (value.isascii() and value.isdigit()):
            return None
        digits = value.lstrip("0")
        return MAX_WAIT_S if len(digits) > 3 else min(int(digits or "0"), MAX_WAIT_S)
    return None


# Answers must leave the function before its own timeout (and API Gateway's 29 s) with this much to spare.
ANSWER_MARGIN_S = 1.5
# How soon a client should poll an unfinished job again (`Retry-After` on 202 and on unfinished GETs).
POLL_AFTER_S = 1


def _hold(job: Any, tenant: str, wait_s: int) -> Any:
    """The job once it has finished, or as it stands ``wait_s`` seconds after the request arrived."""
    received = float(app.context.get("received_at", time.monotonic()))
    deadline = received + wait_s
    context = getattr(app, "lambda_context", None)
    if context is not None:
        deadline = min(deadline, time.monotonic() + context.get_remaining_time_in_millis() / 1000 - ANSWER_MARGIN_S)
    submissions = services().submissions
    waited = wait_until_finished(job, lambda: submissions.get(tenant, job.job_id), deadline=deadline)
    logger.info("held the answer", job_id=job.job_id, reads=waited.reads, waited_s=round(waited.waited_s, 3))
    return waited.job


def _wait_headers(wait_s: int | None, job: Any) -> dict[str, str]:
    headers = {} if wait_s is None else {"Preference-Applied": f"wait={wait_s}"}
    if not job.status.terminal:
        headers["Retry-After"] = str(POLL_AFTER_S)
    return headers


JOB_CONTENT = {"application/json": {"model": JobView}}


@app.post(
    "/v1/jobs",
    summary="Submit a generation job",
    description=(
        "Answers `202` with the job as it stands. With `Prefer: wait[=N]` the answer waits until the job has"
        " finished (then `201`, or `200` when an Idempotency-Key replays a finished job) or N seconds have passed"
        " (then `202`)."
    ),
    responses={
        202: {
            "description": (
                "Accepted, without `Prefer: wait` (or before its wait ended): the job as it stands, usually unfinished"
                " (poll its Location); a result-cache hit or a replayed Idempotency-Key may have finished already"
            ),
            "content": JOB_CONTENT,
            "headers": {
                "Location": LOCATION,
                "Retry-After": RETRY_AFTER_POLL,
                "Preference-Applied": PREFERENCE_APPLIED,
                "Idempotent-Replayed": REPLAYED,
            },
        },
        201: {
            "description": "Created, and finished within the requested wait",
            "content": JOB_CONTENT,
            "headers": {
                "Location": LOCATION,
                "Preference-Applied": PREFERENCE_APPLIED | {"required": True},
                "Idempotent-Replayed": REPLAYED,
            },
        },
        200: {
            "description": "An Idempotency-Key replayed a job that has finished (with `Prefer: wait`)",
            "content": JOB_CONTENT,
            "headers": {
                "Location": LOCATION,
                "Preference-Applied": PREFERENCE_APPLIED | {"required": True},
                "Idempotent-Replayed": REPLAYED,
            },
        },
    }
    | ERROR_RESPONSES,
    tags=["jobs"],
    security=API_KEY,
)
def submit_job(
    request: Annotated[GenerationRequest, Body()], idempotency_key: IdempotencyKey = None, prefer: Prefer = None
) -> Response[JobView]:
    caller = _caller()
    tenant = caller.tenant
    wait_s = wait_preference(prefer)
    # Answered 202 unless it waits: the submission may write that answer's audit entry with a write of its own.
    audit = app.context.get("audit") if wait_s is None else None
    result = services().submissions.submit(
        tenant, request, idempotency_key=idempotency_key, plan=caller.plan, audit=audit
    )
    annotate_job(result.job.job_id, tenant)  # this request's trace segment is found by the job's id
    if result.created:
        logger.info("job accepted", job_id=result.job.job_id, tenant=tenant, status=result.job.status.value)
        metrics.add_metric(name="JobsSubmitted", unit="Count", value=1)
        emit_metrics(metrics)
    job = _hold(result.job, tenant, wait_s) if wait_s is not None else result.job
    status = 202
    if wait_s is not None and job.status.terminal:
        status = 201 if result.created else 200
    view = _view(job, queue=wait_s is not None)
    headers = {
        "Location": f"{_stage_prefix()}/v1/jobs/{view.id}",
        "Idempotent-Replayed": str(not result.created).lower(),
    }
    return _json(status, view, headers | _wait_headers(wait_s, job))


@app.get(
    "/v1/jobs/<job_id>",
    summary="Get a job",
    description=(
        "With `Prefer: wait[=N]` the answer waits until the job has finished or N seconds have passed; either"
        " way it is `200` with the job as it stands then."
    ),
    responses={
        200: {
            "description": "The job",
            "content": JOB_CONTENT,
            "headers": {
                "Retry-After": RETRY_AFTER_POLL,
                "Preference-Applied": PREFERENCE_APPLIED,
            },
        }
    }
    | ERROR_RESPONSES,
    tags=["jobs"],
    security=API_KEY,
)
def get_job(job_id: JobId, prefer: Prefer = None) -> Response[JobView]:
    tenant = _tenant()
    job = services().submissions.get(tenant, job_id)
    annotate_job(job_id, tenant)
    wait_s = wait_preference(prefer)
    if wait_s is not None:
        job = _hold(job, tenant, wait_s)
    headers = _wait_headers(wait_s, job)
    if wait_s is not None:
        headers["Vary"] = "Prefer"
    return _json(200, _view(job, queue=True), headers)


@app.get(
    "/v1/jobs",
    summary="List the caller's jobs, newest first",
    responses=_responses(200, "A page of jobs", JobList),
    tags=["jobs"],
    security=API_KEY,
)
def list_jobs(
    status: Annotated[JobStatus | None, Query()] = None,
    limit: Annotated[int | None, Query(ge=1, le=100)] = None,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> Response[JobList]:
    tenant = _tenant()
    settings = services().settings
    size = min(limit or settings.page_size_default, settings.page_size_max)
    try:
        page = services().submissions.list(tenant, status=status, limit=size, cursor=cursor)
    except InvalidCursor as exc:
        raise BadRequest(str(exc), details={"field": "cursor"}) from exc
    return _json(200, job_list(page, _view, status))


@app.post(
    "/v1/uploads",
    summary="Upload an input image for image-to-image or inpainting",
    description=(
        "Answers a presigned POST for one image under your own uploads: send `fields`, a `Content-Type` field"
        " starting with `image/` and then the file (as `file`) to `url` before `expires_at`, then name `id` in a"
        " job's `image` or `mask`. No request body. The image is checked when a job names it (docs/api.md)."
    ),
    responses=_responses(201, "Where to send the image", Upload),
    tags=["uploads"],
    security=API_KEY,
)
def create_upload() -> Response[Upload]:
    caller = _caller()
    services().submissions.count_upload(caller.tenant, caller.plan)  # 429 past the plan's rate, as a submission
    return _json(201, services().inputs.new_upload(caller.tenant))


@app.post(
    "/v1/jobs/<job_id>/cancel",
    summary="Cancel a job that has not finished",
    responses=_responses(200, "Cancelled", JobView),
    tags=["jobs"],
    security=API_KEY,
)
def cancel_job(job_id: JobId) -> Response[JobView]:
    tenant = _tenant()
    # The job is CANCELLED once this returns: the answer says so whatever happens to its webhook's start (made
    # before the jobs that joined it are settled, so a long settle cannot cost it) or its preview. CANCELLED is
    # final, so the notice is named after the job alone: a retried start whose first answer was lost finds the
    # execution it made instead of sending the webhook a second time.
    job = services().submissions.cancel(
        tenant,
        job_id,
        notify=lambda cancelled: start_notice_retrying(
            services().orchestrator, cancelled, "cancelled", log=logger, once=True
        ),
    )
    annotate_job(job_id, tenant)
    # A preview recorded before the cancel is deleted here; one stored after it is deleted by the worker, whose
    # record of it the cancel refuses.
    if job.preview_key:
        try:
            services().media.delete([job.preview_key])
        except (BotoCoreError, ClientError) as exc:
            logger.warning("preview not deleted; it expires with the outputs", job_id=job_id, error=type(exc).__name__)
    return _json(200, _view(job))


@app.post(
    "/v1/jobs/<job_id>/webhook/redeliver",
    summary="Send a finished job's webhook again (same webhook-id, fresh URLs and signature)",
    responses=_responses(202, "Redelivery started", JobView),
    tags=["webhooks"],
    security=API_KEY,
)
def redeliver_webhook(job_id: JobId) -> Response[JobView]:
    tenant = _tenant()
    job = services().submissions.get(tenant, job_id)
    annotate_job(job_id, tenant)
    if not job.status.terminal:
        raise Conflict("The job has not finished; its webhook is sent when it does.", details={"status": job.status})
    if not job.request.callback_url:
        raise Conflict("The job has no callback_url.")
    if not job.request.wants_webhook("completed"):
        raise Conflict(
            "The job's webhook_events leave out completed: it has no terminal webhook to send.",
            details={"webhook_events": job.request.webhook_events},
        )
    services().redeliveries.start(job)
    return _json(202, _view(job))


# One event of the stream, as Server-Sent Events fields (what schemathesis checks each event against): `data` is
# the webhook body's JSON, {type, timestamp, data: the job as GET shows it}.
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string", "description": "job.started, job.progress, job.succeeded, ..."},
        "id": {"type": "string", "description": "Resume after this event with Last-Event-ID."},
        "retry": {"type": "integer", "minimum": 0, "description": "Milliseconds before reconnecting."},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "type": "object",
                "required": ["type", "timestamp", "data"],
                "properties": {
                    "type": {"type": "string"},
                    "timestamp": {"type": "string", "format": "date-time"},
                    "data": {"$ref": "#/components/schemas/JobView"},
                },
            },
        },
    },
}


@app.get(
    "/v1/jobs/<job_id>/events",
    summary="The job's events as Server-Sent Events, until it finishes",
    description=(
        "`job.started`, `job.progress` (with the preview's URL) and the terminal event, each `{type, timestamp,"
        " data}` like the webhooks, with an `id:` to resume from (`Last-Event-ID`). Streamed by its own function"
        " (API Gateway response streaming; docs/api.md); an answer that reaches this one is the stream's current"
        " state at once, and EventSource's reconnect after `retry` polls it."
    ),
    responses={
        200: {
            "description": "The event stream",
            "content": {"text/event-stream": {"schema": SSE_EVENT}},
        }
    }
    | ERROR_RESPONSES,
    tags=["jobs"],
    security=API_KEY,
)
def job_events(
    job_id: JobId,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", description="The last event's id seen: only newer ones come.")
    ] = None,
) -> Response[Any]:
    job = services().submissions.get(_tenant(), job_id)
    # `?last_event_id=` for clients that cannot set the header, read as the streaming function reads it (left out
    # of the schema, like the stream's own handling of it).
    last_event_id = last_event_id or (app.current_event.query_string_parameters or {}).get("last_event_id")
    body = jobevents.snapshot(job, _view, last_event_id).decode()
    return Response(status_code=200, content_type="text/event-stream", body=body, headers=dict(jobevents.SSE_HEADERS))


@app.get(
    "/v1/models",
    summary="The models you may name, and what a job of each runs with where the request says nothing",
    description=(
        "The same for every caller; it changes only with a deployment (the model allowlist and registries)."
        " Each model's default size, steps and guidance are what a request that leaves them out runs with."
    ),
    responses=_responses(200, "The models, the default first", ModelList),
    tags=["models"],
    security=API_KEY,
)
def list_models() -> Response[ModelList]:
    _tenant()
    return _json(200, services().models, {"Cache-Control": f"private, max-age={MODELS_MAX_AGE_S}"})


@app.get(
    "/v1/webhook-secret",
    summary="The signing secret of your webhooks (Standard Webhooks, whsec_...)",
    responses=_responses(200, "The secret", WebhookSecret),
    tags=["webhooks"],
    security=API_KEY,
)
def get_webhook_secret() -> Response[WebhookSecret]:
    tenant = _tenant()
    return _json(200, WebhookSecret(secret=services().secrets.get(tenant)))


@app.post(
    "/v1/webhook-secret/rotate",
    summary="Replace the signing secret; the replaced one keeps signing webhooks for an overlap period",
    description=(
        "Webhooks sent from now on (retries of earlier ones included) carry two signatures in `webhook-signature`,"
        " one with the new secret and one with the replaced secret, until `previous_secret_valid_until`; after"
        " that only the new one. Rotating again within that period replaces the older secret: only the"
        " immediately previous one keeps signing."
    ),
    responses=_responses(200, "The new secret, and until when the replaced one still signs", RotatedWebhookSecret),
    tags=["webhooks"],
    security=API_KEY,
)
def rotate_webhook_secret() -> Response[RotatedWebhookSecret]:
    tenant = _tenant()
    rotation = services().secrets.rotate(tenant)
    return _json(
        200, RotatedWebhookSecret(secret=rotation.secret, previous_secret_valid_until=rotation.previous_valid_until)
    )


@app.get(
    "/v1/audit",
    summary="Your audit log: every state-changing call made for you, newest first",
    description=(
        "Submissions, cancels, webhook redeliveries and secret rotations (accepted or refused, with the status"
        " answered), and the operator's changes to your keys and plan. Kept for a configured time (90 days by"
        " default). Holds no keys, secrets or URLs."
    ),
    responses=_responses(200, "A page of entries", AuditList),
    tags=["audit"],
    security=API_KEY,
)
def list_audit(
    limit: Annotated[int | None, Query(ge=1, le=100)] = None,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> Response[AuditList]:
    tenant = _tenant()
    settings = services().settings
    size = min(limit or settings.page_size_default, settings.page_size_max)
    try:
        page = services().audit.page(tenant, limit=size, cursor=cursor)
    except InvalidCursor as exc:
        raise BadRequest(str(exc), details={"field": "cursor"}) from exc
    return _json(200, AuditList(entries=[e.tenant_view() for e in page.entries], next_cursor=page.next_cursor))


@app.get("/health", summary="Liveness", tags=["ops"])
def health() -> dict[str, str]:
    return {"status": "ok"}


PLAYGROUND = pathlib.Path(__file__).resolve().parent.parent / "playground"
PLAYGROUND_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@app.route("/playground", method=["GET", "HEAD"], include_in_schema=False)
def playground_root() -> Response[Any]:
    """``/playground/`` serves the page; ``/playground`` redirects there (the router treats both alike)."""
    if app.current_event.path.endswith("/"):
        return playground_file("index.html")
    query = urllib.parse.urlencode(app.current_event.query_string_parameters or {})  # re-encoded: no raw CR/LF
    target = f"{_stage_prefix()}/playground/" + (f"?{query}" if query else "")
    return Response(status_code=308, body="", headers={"Location": target})


@app.route("/playground/<name>", method=["GET", "HEAD"], include_in_schema=False)
def playground_file(name: str) -> Response[Any]:
    """The playground page, from the API's own origin (so no CORS is needed on AWS either)."""
    path = PLAYGROUND / name
    content_type = PLAYGROUND_TYPES.get(path.suffix)
    if name.startswith(".") or "/" in name or content_type is None or not path.is_file():
        return _json(404, {"error": {"code": "not_found", "message": "No such file.", "details": None}})
    return Response(
        status_code=200,
        content_type=content_type,
        body=path.read_text(encoding="utf-8"),
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


@lru_cache(maxsize=len(SWAGGER_ASSETS))
def _swagger_asset(name: str) -> str:
    return (SWAGGER_UI / name).read_text(encoding="utf-8")


@app.get("/docs/assets/<version>/<name>", include_in_schema=False)
def docs_asset(version: str, name: str) -> Response[Any]:
    """The Swagger UI's script or styles, cached for a year (a new Powertools version is a new URL)."""
    content_type = SWAGGER_ASSETS.get(name)
    if version != POWERTOOLS_VERSION or content_type is None:
        return _json(404, {"error": {"code": "not_found", "message": "No such file.", "details": None}})
    etag = f'"{POWERTOOLS_VERSION}-{name}"'
    headers = {"Cache-Control": DOCS_ASSET_CACHE, "ETag": etag, "X-Content-Type-Options": "nosniff"}
    if app.current_event.get_header_value("If-None-Match") == etag:
        return Response(status_code=304, body="", headers=headers)
    return Response(status_code=200, content_type=content_type, body=_swagger_asset(name), headers=headers)


@app.get("/openapi.json", include_in_schema=False)
def openapi_json() -> Response[Any]:
    # The first server is where this document was fetched from (behind API Gateway's stage path too), so tools
    # that read it (schemathesis, generators, Swagger UI) call the API that served it.
    here = Server(url=_stage_prefix() or "/", description="This API (where this document was fetched)")
    schema = app.get_openapi_json_schema(
        title="sdq",
        version="1",
        description=DESCRIPTION,
        servers=[here, AWS_SERVER],
        security_schemes=SECURITY_SCHEMES,
    )
    return _json(200, schema)


# -- errors: always {"error": {"code", "message", "details"}}, never a stack trace -------------------


@app.exception_handler(ServiceError)
def _service_error(exc: ServiceError) -> Response[Any]:
    headers = {}
    if isinstance(exc, TooManyRequests | IdempotencyKeyInUse) and exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    return _json(exc.status, exc.body(), headers)


# A 422 names at most this many errors, each of its path parts and messages cut to these lengths: a body of
# thousands of unknown (or very long) keys would otherwise get an answer many times its own size.
MAX_ERROR_DETAILS = 20
MAX_ERROR_LOC_CHARS = 64
MAX_ERROR_MSG_CHARS = 200


def _cut(text: object, limit: int) -> str:
    value = str(text)
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _loc(error: Any) -> tuple[Any, ...]:
    """The error's path; a check across fields (shared.contracts._invalid) names its field in the context."""
    loc = tuple(error.get("loc", ()))
    field = (error.get("ctx") or {}).get("field")
    return (*loc, field) if isinstance(field, str) and loc == ("body",) else loc


@app.exception_handler(RequestValidationError)
def _validation_error(exc: RequestValidationError) -> Response[Any]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return _service_error(BadRequest("The request body is not valid JSON."))
    details = [
        {
            "loc": [_cut(part, MAX_ERROR_LOC_CHARS) for part in _loc(e)],
            "msg": _cut(e.get("msg", ""), MAX_ERROR_MSG_CHARS),
            "type": _cut(e.get("type", ""), MAX_ERROR_LOC_CHARS),
        }
        for e in errors[:MAX_ERROR_DETAILS]
    ]
    fields = ", ".join(".".join(d["loc"][1:] or d["loc"]) for d in details)
    if len(errors) > MAX_ERROR_DETAILS:
        fields += f" and {len(errors) - MAX_ERROR_DETAILS} more"
    return _service_error(ValidationFailed(f"Invalid request: {fields}", details=details))


ROUTE_METHODS: list[tuple[re.Pattern[str], set[str]]] = [
    (re.compile(r"^/v1/jobs$"), {"GET", "POST"}),
    (re.compile(r"^/v1/jobs/[^/]+$"), {"GET"}),
    (re.compile(r"^/v1/jobs/[^/]+/cancel$"), {"POST"}),
    (re.compile(r"^/v1/jobs/[^/]+/webhook/redeliver$"), {"POST"}),
    (re.compile(r"^/v1/jobs/[^/]+/events$"), {"GET"}),
    (re.compile(r"^/v1/webhook-secret$"), {"GET"}),
    (re.compile(r"^/v1/webhook-secret/rotate$"), {"POST"}),
    (re.compile(r"^/v1/audit$"), {"GET"}),
    (re.compile(r"^/v1/models$"), {"GET"}),
    (re.compile(r"^/v1/uploads$"), {"POST"}),
    (re.compile(r"^/(health|openapi\.json|docs)$"), {"GET"}),
    (re.compile(r"^/docs/assets/[^/]+/[^/]+$"), {"GET"}),
    (re.compile(r"^/playground(/[^/]*)?$"), {"GET", "HEAD"}),
]


@app.not_found
def _not_found(_: Exception) -> Response[Any]:
    path = app.current_event.path
    method = app.current_event.http_method.upper()
    for pattern, methods in ROUTE_METHODS:
        if pattern.match(path) and method not in methods:
            return _json(
                405,
                {"error": {"code": "method_not_allowed", "message": "Method not allowed.", "details": None}},
                {"Allow": ", ".join(sorted(methods))},
            )
    return _json(404, {"error": {"code": "not_found", "message": "No such route.", "details": None}})


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response[Any]:
    logger.exception("unhandled error")
    return _json(500, {"error": {"code": "internal_error", "message": "Internal error.", "details": None}})


MAX_JSON_DEPTH = 16


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``text`` nests arrays/objects deeper than ``limit`` (checked before parsing, so a nesting
    bomb never reaches the recursive JSON parser)."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def _precheck(event: dict[str, Any]) -> ServiceError | None:
    """Checks API Gateway cannot express: a path of no route, body size, content type, body encoding."""
    path = str(event.get("path", ""))
    if not any(pattern.match(path) for pattern, _ in ROUTE_METHODS):
        # The router also matches a path with a trailing slash (`/v1/jobs/`), which the audit's routes and the
        # gateway's throttles do not: only the documented spelling of a route reaches it.
        return NotFound("No such route.")
    body = event.get("body")
    method = str(event.get("httpMethod", "")).upper()
    if body is None or method not in {"POST", "PUT", "PATCH"}:
        return None
    settings = services().settings
    raw_len = len(body.encode("utf-8", "surrogatepass")) if isinstance(body, str) else 0
    if event.get("isBase64Encoded"):
        raw_len = raw_len * 3 // 4
    if raw_len > settings.max_body_bytes:
        return PayloadTooLarge(f"The request body is larger than {settings.max_body_bytes} bytes.")
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if body and content_type != "application/json":
        return UnsupportedMediaType("Send the request body as JSON with Content-Type: application/json.")
    if event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(body).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return BadRequest("The request body is not valid UTF-8 JSON.")
    if json_too_deep(body):
        return BadRequest(f"The request body nests deeper than {MAX_JSON_DEPTH} levels.")
    return None


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, log_event=False)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """API Gateway REST proxy entry point. Job routes authenticate first: a request without a valid key learns
    nothing else (not even whether its body would have been valid)."""
    app.append_context(received_at=time.monotonic())
    _fold_list_header(event, "Prefer")
    if str(event.get("path", "")).startswith("/v1/"):
        # API Gateway ran the authorizer (handlers.authorizer) on the x-api-key header; without its answer in the
        # request context (a call that bypassed the gateway) the route refuses.
        caller = Authorization.from_context((event.get("requestContext") or {}).get("authorizer"))
        if caller is None:
            return _early_answer(Unauthorized())
        app.append_context(caller=caller, tenant=caller.tenant, key_id=caller.key_id)
    # Who called, read before the router clears its context; an unauthenticated call has no tenant to audit.
    who: dict[str, Any] = {
        "tenant": app.context.get("tenant"),
        "key_id": app.context.get("key_id"),
        "arrived": utcnow(),
    }
    pending = None
    if who["tenant"]:
        accepted = audit_entry(event, {"statusCode": 202}, **who)
        if accepted is not None and accepted.action is AuditAction.JOB_SUBMIT:
            pending = PendingAudit(accepted)
            app.append_context(audit=pending)
    problem = _precheck(event)
    if problem is not None:
        app.clear_context()
        result = _early_answer(problem)
    else:
        # The job's X-Ray trace: this invocation's, or (where no runtime set one) the request's own header.
        with continued(current_header() or request_header(event.get("headers"))):
            result = app.resolve(event, context)
    if who["tenant"]:
        _audit(event, result, pending, **who)
    return result


# -- the audit log: every state-changing call of an authenticated caller, as answered ---------------------------

AUDITED_ROUTES: list[tuple[str, re.Pattern[str], AuditAction]] = [
    ("POST", re.compile(r"^/v1/jobs$"), AuditAction.JOB_SUBMIT),
    ("POST", re.compile(r"^/v1/jobs/(?P<job_id>[^/]+)/cancel$"), AuditAction.JOB_CANCEL),
    ("POST", re.compile(r"^/v1/jobs/(?P<job_id>[^/]+)/webhook/redeliver$"), AuditAction.WEBHOOK_REDELIVER),
    ("POST", re.compile(r"^/v1/webhook-secret/rotate$"), AuditAction.WEBHOOK_SECRET_ROTATE),
    ("POST", re.compile(r"^/v1/uploads$"), AuditAction.UPLOAD_CREATE),
]


def audit_entry(
    event: dict[str, Any], result: dict[str, Any], *, tenant: str, key_id: str | None, arrived: datetime
) -> AuditEntry | None:
    """The audit entry of an answered request, or None when its route changes nothing.

    It concerns the job of the path, or for a submission the job answered (its ``Location``); a path segment
    that cannot name a job is left out (it is the caller's text, not a job). A refusal's ``error_code`` is the
    ``error.code`` of the answer.
    """
    method, path = str(event.get("httpMethod", "")).upper(), str(event.get("path", ""))
    routes = ((action, pattern.match(path)) for verb, pattern, action in AUDITED_ROUTES if verb == method)
    action, found = next(((a, m) for a, m in routes if m), (None, None))
    if action is None or found is None:
        return None
    status = int(result.get("statusCode", 500))
    # A REST proxy answer's headers: single-valued, or (the router's) lists of values.
    answered = {str(k).lower(): str(v) for k, v in (result.get("headers") or {}).items()}
    answered |= {str(k).lower(): str(v[-1]) for k, v in (result.get("multiValueHeaders") or {}).items() if v}
    target = found.groupdict().get("job_id") or answered.get("location", "").rsplit("/", 1)[-1]
    error_code = None
    if status >= 400:
        try:
            error_code = ErrorBody.model_validate_json(result.get("body") or "").error.code
        except ValueError:
            error_code = None
    identity = (event.get("requestContext") or {}).get("identity") or {}
    asked = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    user_agent = asked.get("user-agent") or identity.get("userAgent")
    return AuditEntry(
        at=arrived,
        tenant=tenant,
        key_id=key_id,
        action=action,
        target=target if target and is_valid_job_id(target) else None,
        source_ip=identity.get("sourceIp"),
        user_agent=str(user_agent)[:USER_AGENT_MAX_CHARS] if user_agent else None,
        outcome=AuditOutcome.of_status(status),
        status=status,
        error_code=error_code,
    )


def _audit(event: dict[str, Any], result: dict[str, Any], pending: PendingAudit | None, **who: Any) -> None:
    """Record an answered call, unless ``pending`` says its entry is written already. A failed write does not
    fail the call: what it asked was done (or refused) already, and an error answer would make a client retry a
    submission that succeeded. The entry is logged instead (CloudWatch keeps it) and counted (metric
    ``AuditWriteFailed``)."""
    entry = audit_entry(event, result, **who)
    if entry is None or (pending is not None and pending.answered_as(entry)):
        return
    try:
        services().audit.record(entry)
    except (BotoCoreError, ClientError) as exc:
        logger.error("audit entry not recorded", entry=entry.model_dump(mode="json"), error=type(exc).__name__)
        metrics.add_metric(name="AuditWriteFailed", unit="Count", value=1)
        emit_metrics(metrics)


def _fold_list_header(event: dict[str, Any], name: str) -> None:
    """Several lines of a list-valued header are one comma-separated value (RFC 9110, 5.3): hand the router one."""
    multi = event.get("multiValueHeaders") or {}
    lines = [v for k, values in multi.items() if k.lower() == name.lower() for v in (values or [])]
    if len(lines) < 2:
        return
    for headers in (multi, event.get("headers") or {}):
        for key in [k for k in headers if k.lower() == name.lower()]:
            del headers[key]
    multi[name] = [", ".join(lines)]
    event["multiValueHeaders"] = multi
    event["headers"] = {**(event.get("headers") or {}), name: ", ".join(lines)}


def _early_answer(error: ServiceError, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "statusCode": error.status,
        "headers": {"Content-Type": "application/json", **(headers or {})},
        "body": json.dumps(error.body()),
        "isBase64Encoded": False,
    }
