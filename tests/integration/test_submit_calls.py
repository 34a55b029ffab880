"""The AWS calls of a submission, counted with botocore's event hooks on the real clients of the local cloud: an
accepted text submit makes four (the unfinished count, one transaction with its counters, the send, one
transaction with its sent mark and audit entry), refusals keep their typed answers, and no job is lost between."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from localcloud.api import proxy_event
from shared.apikeys import ApiKeyStore
from shared.audit import AuditAction, AuditEntry, AuditLog, AuditOutcome, PendingAudit
from shared.aws import AwsClients
from shared.contracts import GenerationRequest, JobStatus, pixel_steps
from shared.errors import IdempotencyConflict, TooManyRequests
from shared.jobs import JobsRepository
from shared.queue import JobQueue
from shared.ratelimit import DailyGpuBudget, RateLimiter
from shared.settings import Settings
from shared.tenants import Plan
from tests.integration.conftest import RunningService
from tests.integration.test_submission import _internal_error
from workflows.requeue import RequeueSweeper
from workflows.submission import SubmissionService

SMALL = {"width": 256, "height": 256, "num_inference_steps": 2}
ACCEPTED_CALLS = ["dynamodb.Query", "dynamodb.TransactWriteItems", "sqs.SendMessage", "dynamodb.TransactWriteItems"]


class Calls:
    """Every API call the clients make, in order, as ``service.Operation`` with its parameters."""

    def __init__(self, *clients: Any) -> None:
        self.made: list[tuple[str, dict[str, Any]]] = []
        self._watched: set[int] = set()
        for client in clients:
            self.watch(client)

    def watch(self, client: Any) -> None:
        if id(client) not in self._watched:
            self._watched.add(id(client))
            client.meta.events.register("before-parameter-build", self._seen)

    def _seen(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        self.made.append((f"{model.service_model.service_name}.{model.name}", dict(params)))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.made]

    def keys_written(self, index: int) -> list[str]:
        """The tables and partition keys of the ``index``-th call's transaction, as ``table:pk`` (or ``table:``
        with the tenant for an audit entry)."""
        written = []
        for element in self.made[index][1]["TransactItems"]:
            op = next(iter(element.values()))
            key = op.get("Key") or op["Item"]
            written.append(key["pk"]["S"].split("#", 1)[0] if "pk" in key else "AUDIT")
        return written


class Stack:
    """A submission service on the running local cloud's own table, queue and audit table, with real clients."""

    def __init__(self, service: RunningService) -> None:
        self.ddb, self.sqs = service.boto("dynamodb"), service.boto("sqs")
        self.table = service.table
        self.repo = JobsRepository(self.ddb, self.table)
        self.audit = AuditLog(self.ddb, service.env["SDQ_AUDIT_TABLE_NAME"], retention_days=1)
        self.submissions = SubmissionService(
            self.repo,
            JobQueue(self.sqs, service.queue_url),
            Settings(),
            rate_limiter=RateLimiter(self.ddb, self.table),
            budget=DailyGpuBudget(self.ddb, self.table),
            audit=self.audit,
        )
        self.calls = Calls(self.ddb, self.sqs)

    def counter(self, prefix: str, tenant: str, attribute: str) -> int:
        items = self.ddb.scan(
            TableName=self.table,
            FilterExpression="begins_with(pk, :p)",
            ExpressionAttributeValues={":p": {"S": f"{prefix}#{tenant}#"}},
        )["Items"]
        return sum(int(item[attribute]["N"]) for item in items)


def _request(prompt: str, **size: int) -> GenerationRequest:
    body = {"prompt": prompt, **SMALL, **size}
    return GenerationRequest.model_validate(body, context={"settings": Settings()})


def _pending(tenant: str) -> PendingAudit:
    """The entry the API prepares for a submit it will answer 202."""
    entry = AuditEntry(tenant=tenant, action=AuditAction.JOB_SUBMIT, outcome=AuditOutcome.ACCEPTED, status=202)
    return PendingAudit(entry)


def _plan(*, rate: int = 100, budget_mpx_steps: int = 0) -> Plan:
    return Plan.defaults(Settings()).model_copy(
        update={"rate_limit_per_window": rate, "daily_gpu_budget_mpx_steps": budget_mpx_steps}
    )


def _marked(repo: JobsRepository, job_id: str) -> bool:
    return job_id in repo.unqueued_before(time.time() + 3600, limit=10_000)


@pytest.mark.parametrize(
    ("key", "budget", "first_write"),
    [
        (None, 0, ["JOB", "RATE"]),
        ("order-counted", 0, ["JOB", "IDEM", "RATE"]),
        (None, 1000, ["JOB", "RATE", "BUDGET"]),
    ],
)
def test_an_accepted_submit_makes_four_calls_and_writes_all_it_did(
    service: RunningService, key: str | None, budget: int, first_write: list[str]
) -> None:
    stack = Stack(service)
    tenant = f"tenant-calls-{time.monotonic_ns()}"
    request = _request("counted calls")
    pending = _pending(tenant)
    depth = service.queue_depth()

    submitted = stack.submissions.submit(
        tenant, request, idempotency_key=key, plan=_plan(budget_mpx_steps=budget), audit=pending
    )

    assert submitted.created
    assert stack.calls.names == ACCEPTED_CALLS
    assert stack.calls.keys_written(1) == first_write
    assert stack.calls.keys_written(3) == ["JOB", "AUDIT"]
    # What the six calls of before wrote, all of it: the job queued and sent, its counters, its audit entry.
    job = stack.repo.get(submitted.job.job_id)
    assert job.status == JobStatus.QUEUED
    assert not _marked(stack.repo, job.job_id)
    assert service.queue_depth() == depth + 1
    assert stack.counter("RATE", tenant, "hits") == 1
    assert stack.counter("BUDGET", tenant, "used") == (pixel_steps(job.request) if budget else 0)
    [entry] = stack.audit.page(tenant, limit=10).entries
    assert (entry.action, entry.target, entry.outcome, entry.status) == (
        AuditAction.JOB_SUBMIT,
        job.job_id,
        AuditOutcome.ACCEPTED,
        202,
    )
    assert pending.recorded == entry
    if key is not None:
        replay = stack.submissions.submit(tenant, request, idempotency_key=key, plan=_plan(), audit=_pending(tenant))
        assert (replay.created, replay.job.job_id) == (False, job.job_id)
        assert stack.counter("RATE", tenant, "hits") == 1  # a replay makes nothing, so it counts for nothing


@pytest.mark.parametrize(
    ("case", "refusal", "message"),
    [
        ("rate", TooManyRequests, "slow down"),
        ("budget", TooManyRequests, "daily budget"),
        ("idempotency-conflict", IdempotencyConflict, ""),
    ],
)
def test_a_cancelled_transaction_is_refused_by_the_limit_that_cancelled_it_and_writes_nothing(
    service: RunningService, case: str, refusal: type[Exception], message: str
) -> None:
    stack = Stack(service)
    tenant = f"tenant-refused-{time.monotonic_ns()}"
    # Two jobs of 0.52 megapixel steps do not fit in a budget of 1.
    plan = {"rate": _plan(rate=1), "budget": _plan(budget_mpx_steps=1)}.get(case, _plan())
    large = {"width": 512, "height": 512}
    stack.submissions.submit(tenant, _request("one", **large), idempotency_key="order-1", plan=plan)
    hits, used = stack.counter("RATE", tenant, "hits"), stack.counter("BUDGET", tenant, "used")
    again = _request("another body" if case == "idempotency-conflict" else "two", **large)
    pending = _pending(tenant)
    before = len(stack.calls.names)

    with pytest.raises(refusal) as info:
        stack.submissions.submit(
            tenant,
            again,
            idempotency_key="order-1" if case == "idempotency-conflict" else None,
            plan=plan,
            audit=pending,
        )

    assert message in str(info.value)
    if isinstance(info.value, TooManyRequests):
        assert info.value.retry_after_s >= 1
    made = stack.calls.names[before:]
    assert made[:2] == ["dynamodb.Query", "dynamodb.TransactWriteItems"]  # refused by the cancelled transaction
    assert "sqs.SendMessage" not in made
    assert len(stack.repo.list_for_tenant(tenant, status=None, limit=10, cursor=None).jobs) == 1
    assert (stack.counter("RATE", tenant, "hits"), stack.counter("BUDGET", tenant, "used")) == (hits, used)
    assert pending.recorded is None  # the API records the refusal as answered


class Killed(BaseException):
    """The API's Lambda stopped mid-call (not an error the submission could handle)."""


def test_a_submit_that_dies_after_its_transaction_leaves_the_job_for_the_sweeper(service: RunningService) -> None:
    """Counters, job and key land in one call; an API call that dies before its send leaves the job marked, and
    the requeue sweeper sends it."""
    stack = Stack(service)
    tenant = f"tenant-killed-{time.monotonic_ns()}"

    def die(**_: Any) -> None:
        raise Killed

    stack.sqs.meta.events.register("before-call.sqs.SendMessage", die)
    with pytest.raises(Killed):
        stack.submissions.submit(tenant, _request("killed"), idempotency_key="order-killed", plan=_plan())
    stack.sqs.meta.events.unregister("before-call.sqs.SendMessage", die)

    [job] = stack.repo.list_for_tenant(tenant, status=None, limit=10, cursor=None).jobs
    assert job.status == JobStatus.QUEUED
    assert _marked(stack.repo, job.job_id)
    depth = service.queue_depth()
    report = RequeueSweeper(
        stack.repo, JobQueue(stack.sqs, service.queue_url), requeue_after_s=0, clock=lambda: time.time() + 60
    ).sweep()
    assert report.requeued >= 1
    assert service.queue_depth() >= depth + 1
    assert not _marked(stack.repo, job.job_id)


def test_a_sent_job_whose_mark_and_entry_cannot_be_written_is_accepted_and_its_entry_left_to_the_api(
    service: RunningService,
) -> None:
    """The call after the send fails: the job is accepted (it is queued), stays marked (the claim or the sweeper
    clears it; a second message is dropped by the claim's condition), and its entry is left to the API."""
    stack = Stack(service)
    tenant = f"tenant-unmarked-{time.monotonic_ns()}"

    def audit_table_down(request: Any, **_: Any) -> AWSResponse | None:
        if service.env["SDQ_AUDIT_TABLE_NAME"].encode() not in request.body:
            return None  # the job's transaction
        return _internal_error(request.url)

    stack.ddb.meta.events.register("before-send.dynamodb.TransactWriteItems", audit_table_down)
    pending = _pending(tenant)
    submitted = stack.submissions.submit(tenant, _request("unmarked"), plan=_plan(), audit=pending)
    stack.ddb.meta.events.unregister("before-send.dynamodb.TransactWriteItems", audit_table_down)

    assert submitted.created
    assert pending.recorded is None
    assert stack.audit.page(tenant, limit=10).entries == []
    assert stack.repo.get(submitted.job.job_id).status == JobStatus.QUEUED
    assert _marked(stack.repo, submitted.job.job_id)


@pytest.fixture
def api_in_process(service: RunningService, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Calls]]:
    """The API's handler, called here with the running service's settings, behind the gateway's authorizer as the
    local API runs it; the calls of the clients it builds are counted (botocore's hooks on each real client)."""
    from handlers import api, authorizer
    from localcloud.api import LocalLambdaContext
    from localcloud.gateway import GatewayRules, LocalGateway
    from localcloud.service import TEMPLATE
    from shared.settings import get_settings

    calls = Calls()

    class CountedClients(AwsClients):
        def client(self, service: str) -> Any:
            made = super().client(service)  # type: ignore[call-overload]
            calls.watch(made)
            return made

    for name, value in service.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(api, "AwsClients", CountedClients)
    caches = (get_settings, api.services, authorizer.deps)
    for cache in caches:
        cache.cache_clear()
    gateway = LocalGateway(GatewayRules.from_template(TEMPLATE), authorizer.lambda_handler, LocalLambdaContext)

    def call(event: dict[str, Any]) -> dict[str, Any]:
        refusal = gateway.admit(event)
        return refusal if refusal is not None else api.lambda_handler(event, LocalLambdaContext())

    yield call, calls
    for cache in caches:  # later callers build theirs from their own settings
        cache.cache_clear()


def _submit_event(key: str, body: dict[str, Any]) -> dict[str, Any]:
    headers = {"x-api-key": key, "content-type": "application/json", "user-agent": "calls-test/1.0"}
    return proxy_event("POST", "/v1/jobs", headers=headers, body=json.dumps(body))


def test_the_api_answers_a_submit_with_four_calls_and_records_it_once(
    service: RunningService, api_in_process: tuple[Any, Calls]
) -> None:
    call, calls = api_in_process
    tenant = f"tenant-api-calls-{time.monotonic_ns()}"
    key = ApiKeyStore(service.boto("dynamodb"), service.table).create(tenant).plaintext
    body = {"prompt": "counted at the API", **SMALL}
    warm = call(_submit_event(key, {**body, "prompt": "warm"}))  # clients built, key cached
    assert warm["statusCode"] == 202, warm["body"]
    warm_id = json.loads(warm["body"])["id"]
    calls.made.clear()

    answer = call(_submit_event(key, body))

    assert answer["statusCode"] == 202, answer["body"]
    assert calls.names == ACCEPTED_CALLS
    job_id = json.loads(answer["body"])["id"]
    entries = AuditLog(service.boto("dynamodb"), service.env["SDQ_AUDIT_TABLE_NAME"], retention_days=1).page(
        tenant, limit=10
    )
    assert [(e.target, e.status, e.outcome, e.user_agent, e.source_ip) for e in entries.entries] == [
        (job_id, 202, AuditOutcome.ACCEPTED, "calls-test/1.0", "127.0.0.1"),
        (warm_id, 202, AuditOutcome.ACCEPTED, "calls-test/1.0", "127.0.0.1"),  # the warm-up, recorded as its own
    ]
    # A refusal is recorded by the API's own write, as answered.
    calls.made.clear()
    refused = call(_submit_event(key, {**body, "width": 7}))
    assert refused["statusCode"] == 422
    assert calls.names == ["dynamodb.PutItem"]
    assert (
        AuditLog(service.boto("dynamodb"), service.env["SDQ_AUDIT_TABLE_NAME"], retention_days=1)
        .page(tenant, limit=1)
        .entries[0]
        .status
        == 422
    )
