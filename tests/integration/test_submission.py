"""The submission workflow against the local cloud when the queue cannot take the message."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from cli.client import ApiError
from shared.aws import AwsClients
from shared.contracts import GenerationRequest, JobStatus
from shared.dynamoretries import CONFLICT_PAUSES_S
from shared.errors import EnqueueFailed, IdempotencyKeyInUse
from shared.jobs import JobsRepository
from shared.queue import JobQueue
from shared.ratelimit import RateLimiter
from shared.settings import Settings
from tests.integration.conftest import RunningService
from workflows.requeue import RequeueSweeper
from workflows.submission import SubmissionService


def test_a_job_whose_message_cannot_be_sent_ends_failed_not_stuck_queued(service: RunningService) -> None:
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    missing_queue = service.queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    sleeps: list[float] = []
    submissions = SubmissionService(
        repo, JobQueue(service.boto("sqs"), missing_queue), Settings(enqueue_attempts=3), sleep=sleeps.append
    )
    request = GenerationRequest.model_validate({"prompt": "unsendable"}, context={"settings": Settings()})
    depth = service.queue_depth()
    with pytest.raises(EnqueueFailed) as info:
        submissions.submit("tenant-unsendable", request)
    assert len(sleeps) == 2  # three attempts, backing off between them
    job = repo.get(info.value.details["job_id"])
    assert job.status == JobStatus.FAILED
    assert job.error is not None
    assert job.error.code == "ENQUEUE_FAILED"
    assert repo.count_active("tenant-unsendable") == 0
    assert service.queue_depth() == depth


@pytest.fixture
def unanswering_endpoint() -> Iterator[tuple[str, list[socket.socket]]]:
    """An endpoint on 127.0.0.1 that accepts connections and never answers (a hung or blackholed queue)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    listener.close()
    for conn in accepted:
        conn.close()


def test_a_hung_queue_fails_the_job_within_the_enqueue_budget(
    service: RunningService, unanswering_endpoint: tuple[str, list[socket.socket]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many attempts are allowed, the submission stops retrying a queue that does not answer once its
    time budget is spent, so the API answers (503, job FAILED) well inside its Lambda's 30 s timeout."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    url, accepted = unanswering_endpoint
    settings = Settings(
        endpoint_url=url,
        region="us-east-1",
        enqueue_attempts=10,
        enqueue_budget_s=2.0,
        aws_connect_timeout_s=0.5,
        aws_read_timeout_s=0.5,
        aws_max_attempts=1,
    )
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    submissions = SubmissionService(repo, JobQueue(AwsClients(settings).sqs(), f"{url}/000000000000/jobs"), settings)
    request = GenerationRequest.model_validate({"prompt": "hung queue"}, context={"settings": Settings()})
    started = time.monotonic()
    with pytest.raises(EnqueueFailed) as info:
        submissions.submit("tenant-hung-queue", request)
    elapsed = time.monotonic() - started
    assert 2 <= len(accepted) < 10  # it did retry, but the budget, not the attempt count, ended it
    assert elapsed < 2.0 + 0.5 + 1.5  # the budget, one last call's read timeout, and slack
    job = repo.get(info.value.details["job_id"])
    assert job.status == JobStatus.FAILED
    assert job.error is not None
    assert job.error.code == "ENQUEUE_FAILED"


def test_the_idempotency_key_of_a_job_that_could_not_be_queued_makes_a_new_job_on_retry(
    service: RunningService,
) -> None:
    """A 503 invites a retry with the same Idempotency-Key: it makes a new job (queued this time), not a replay of
    the FAILED one."""
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    missing_queue = service.queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    request = GenerationRequest.model_validate({"prompt": "retry me"}, context={"settings": Settings()})
    broken = SubmissionService(
        repo, JobQueue(service.boto("sqs"), missing_queue), Settings(enqueue_attempts=1), sleep=lambda _: None
    )
    with pytest.raises(EnqueueFailed) as info:
        broken.submit("tenant-retry-key", request, idempotency_key="order-17")
    failed_id = info.value.details["job_id"]
    depth = service.queue_depth()
    working = SubmissionService(repo, JobQueue(service.boto("sqs"), service.queue_url), Settings())
    retried = working.submit("tenant-retry-key", request, idempotency_key="order-17")
    assert retried.created
    assert retried.job.job_id != failed_id
    assert retried.job.status == JobStatus.QUEUED
    assert service.queue_depth() == depth + 1
    replay = working.submit("tenant-retry-key", request, idempotency_key="order-17")
    assert (replay.created, replay.job.job_id) == (False, retried.job.job_id)  # from now on the key is the new job's
    assert repo.get(failed_id).status == JobStatus.FAILED


class _Body:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: object) -> Iterator[bytes]:
        yield self._body


def _transaction_conflict(url: str) -> AWSResponse:
    """DynamoDB's answer to a transaction that met another one in flight on the Idempotency-Key's item."""
    body = {
        "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
        "Message": "Transaction cancelled, please refer cancellation reasons for specific reasons "
        "[None, TransactionConflict]",
        "CancellationReasons": [
            {"Code": "None"},
            {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"},
        ],
    }
    headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": "conflict"}
    return AWSResponse(url, 400, headers, _Body(json.dumps(body).encode()))


def test_two_submits_with_one_key_at_once_make_one_job_even_when_dynamodb_reports_a_conflict(
    service: RunningService,
) -> None:
    """On DynamoDB, the second of two concurrent transactions on one Idempotency-Key can be cancelled with
    TransactionConflict while the first is still being written, so the key reads as free. The second submit
    tries again, finds the first one's job, and answers with it: one job, one message, never a 500."""
    tenant, key = "tenant-key-race", "order-race"
    request = GenerationRequest.model_validate({"prompt": "raced"}, context={"settings": Settings()})
    first_client = SubmissionService(
        JobsRepository(service.boto("dynamodb"), service.table),
        JobQueue(service.boto("sqs"), service.queue_url),
        Settings(),
    )
    ddb = service.boto("dynamodb")
    second_client = SubmissionService(
        JobsRepository(ddb, service.table), JobQueue(service.boto("sqs"), service.queue_url), Settings()
    )
    first: list[Any] = []
    sends = 0

    def first_in_flight(request: Any, **_: Any) -> AWSResponse | None:
        nonlocal sends
        sends += 1
        if sends == 1:
            return _transaction_conflict(request.url)  # the first submit's transaction holds the key
        if not first:
            first.append(first_client.submit(tenant, request_obj, idempotency_key=key))  # and commits meanwhile
        return None

    request_obj = request
    ddb.meta.events.register("before-send.dynamodb.TransactWriteItems", first_in_flight)
    depth = service.queue_depth()
    second = second_client.submit(tenant, request, idempotency_key=key)
    assert first[0].created
    assert (second.created, second.job.job_id) == (False, first[0].job.job_id)
    assert service.queue_depth() == depth + 1
    assert JobsRepository(ddb, service.table).count_active(tenant) == 1


def test_a_key_held_by_a_submit_that_never_finishes_writing_is_a_409_that_changes_nothing(
    service: RunningService,
) -> None:
    """If the conflict outlasts the retries, the submit answers 409 idempotency_key_in_use (retry it), with no
    job written and nothing queued."""
    tenant = "tenant-key-stuck"
    ddb = service.boto("dynamodb")
    submissions = SubmissionService(
        JobsRepository(ddb, service.table), JobQueue(service.boto("sqs"), service.queue_url), Settings()
    )
    sends = 0

    def always_in_flight(request: Any, **_: Any) -> AWSResponse:
        nonlocal sends
        sends += 1
        return _transaction_conflict(request.url)

    ddb.meta.events.register("before-send.dynamodb.TransactWriteItems", always_in_flight)
    request = GenerationRequest.model_validate({"prompt": "stuck"}, context={"settings": Settings()})
    depth = service.queue_depth()
    with pytest.raises(IdempotencyKeyInUse) as info:
        submissions.submit(tenant, request, idempotency_key="order-stuck")
    assert info.value.status == 409
    assert sends == len(CONFLICT_PAUSES_S) + 1
    assert service.queue_depth() == depth
    assert JobsRepository(ddb, service.table).list_for_tenant(tenant).jobs == []


def _internal_error(url: str) -> AWSResponse:
    body = {"__type": "com.amazonaws.dynamodb.v20120810#InternalServerError", "message": "injected"}
    headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": "fault"}
    return AWSResponse(url, 500, headers, _Body(json.dumps(body).encode()))


def test_a_job_that_can_be_neither_queued_nor_failed_is_accepted_and_queued_by_the_sweeper(
    service: RunningService,
) -> None:
    """The queue send fails and then so does the write that would fail the job: a 503 would invite a retry
    that makes a second job beside this one, which the requeue sweeper later sends. So the submission is
    accepted as it is (its key kept), and the sweeper queues it."""
    ddb = service.boto("dynamodb")
    repo = JobsRepository(ddb, service.table)
    missing_queue = service.queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    submissions = SubmissionService(
        repo, JobQueue(service.boto("sqs"), missing_queue), Settings(enqueue_attempts=1), sleep=lambda _: None
    )
    failed_writes = 0

    def table_down(request: Any, **_: Any) -> AWSResponse:
        nonlocal failed_writes
        failed_writes += 1
        return _internal_error(request.url)

    request = GenerationRequest.model_validate({"prompt": "neither"}, context={"settings": Settings()})
    ddb.meta.events.register("before-send.dynamodb.UpdateItem", table_down)
    accepted = submissions.submit("tenant-neither", request, idempotency_key="order-neither")
    ddb.meta.events.unregister("before-send.dynamodb.UpdateItem", table_down)
    assert failed_writes >= 1
    assert accepted.created
    job = repo.get(accepted.job.job_id)
    assert job.status == JobStatus.QUEUED
    assert job.job_id in repo.unqueued_before(time.time() + 60, limit=1000)
    # Unsent and younger than the API's timeout, it reads as a submission still sending it: retry.
    with pytest.raises(IdempotencyKeyInUse):
        submissions.submit("tenant-neither", request, idempotency_key="order-neither")
    depth = service.queue_depth()
    report = RequeueSweeper(
        repo, JobQueue(service.boto("sqs"), service.queue_url), requeue_after_s=0, clock=lambda: time.time() + 60
    ).sweep()
    assert report.requeued >= 1
    assert service.queue_depth() >= depth + 1
    assert job.job_id not in repo.unqueued_before(time.time() + 60, limit=1000)
    replay = submissions.submit("tenant-neither", request, idempotency_key="order-neither")
    assert (replay.created, replay.job.job_id) == (False, job.job_id)  # the key still names it


@pytest.mark.parametrize("retry_reaches_the_table", [True, False])
def test_a_failed_mark_whose_answer_was_lost_still_answers_503_and_frees_the_key(
    service: RunningService, retry_reaches_the_table: bool
) -> None:
    """The queue send fails; the write that fails the job lands but its answer is lost (a 500 after the write).
    Whether botocore's retry then meets the job already FAILED or the table keeps answering 500, the job is
    FAILED (ENQUEUE_FAILED), so the client gets the 503 and the key is freed: never a 202 for a job that will
    never run."""
    ddb = service.boto("dynamodb")
    writer = service.boto("dynamodb")
    repo = JobsRepository(ddb, service.table)
    missing_queue = service.queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    submissions = SubmissionService(
        repo, JobQueue(service.boto("sqs"), missing_queue), Settings(enqueue_attempts=1), sleep=lambda _: None
    )
    landed = 0

    def apply_then_lose_the_answer(request: Any, **_: Any) -> AWSResponse | None:
        nonlocal landed
        params = json.loads(request.body)
        if ":target" not in params.get("ExpressionAttributeValues", {}):
            return None  # not the FAILED transition
        if landed and retry_reaches_the_table:
            return None
        if not landed:
            writer.update_item(**params)
        landed += 1
        return _internal_error(request.url)

    request = GenerationRequest.model_validate({"prompt": "lost answer"}, context={"settings": Settings()})
    key = f"order-lost-{retry_reaches_the_table}"
    ddb.meta.events.register("before-send.dynamodb.UpdateItem", apply_then_lose_the_answer)
    with pytest.raises(EnqueueFailed) as info:
        submissions.submit("tenant-lost-answer", request, idempotency_key=key)
    ddb.meta.events.unregister("before-send.dynamodb.UpdateItem", apply_then_lose_the_answer)
    assert landed >= 1
    job = repo.get(info.value.details["job_id"])
    assert job.status == JobStatus.FAILED
    assert job.error is not None
    assert job.error.code == "ENQUEUE_FAILED"
    working = SubmissionService(repo, JobQueue(service.boto("sqs"), service.queue_url), Settings())
    retried = working.submit("tenant-lost-answer", request, idempotency_key=key)
    assert retried.created
    assert retried.job.job_id != job.job_id


def test_a_submit_that_finds_a_concurrent_one_made_its_job_gives_back_its_rate_slot(service: RunningService) -> None:
    """Two submits with one key at once: both pass the key check and count against the tenant's rate limit,
    then the second finds the first one's job. It made nothing, so its slot is given back, as a replay that
    finds the key at once never takes one."""
    tenant, key = f"tenant-rate-replay-{time.monotonic_ns()}", "order-rate"
    request = GenerationRequest.model_validate({"prompt": "counted once"}, context={"settings": Settings()})
    ddb = service.boto("dynamodb")

    def submissions(client: Any) -> SubmissionService:
        return SubmissionService(
            JobsRepository(client, service.table),
            JobQueue(service.boto("sqs"), service.queue_url),
            Settings(),
            rate_limiter=RateLimiter(client, service.table),
        )

    first_client, second_client = submissions(service.boto("dynamodb")), submissions(ddb)
    first: list[Any] = []

    def first_commits_meanwhile(request: Any, **_: Any) -> None:
        if not first:
            first.append(first_client.submit(tenant, request_obj, idempotency_key=key))

    request_obj = request
    ddb.meta.events.register("before-send.dynamodb.TransactWriteItems", first_commits_meanwhile)
    second = second_client.submit(tenant, request, idempotency_key=key)
    assert (second.created, second.job.job_id) == (False, first[0].job.job_id)
    counters = ddb.scan(
        TableName=service.table,
        FilterExpression="begins_with(pk, :p)",
        ExpressionAttributeValues={":p": {"S": f"RATE#{tenant}#"}},
    )["Items"]
    assert sum(int(c["hits"]["N"]) for c in counters) == 1


def test_a_replay_while_the_first_submit_still_sends_its_job_is_a_409_not_a_job_it_may_fail(
    service: RunningService,
) -> None:
    """Submit A writes its job and key, then its queue send fails and is retried. Meanwhile its client, the answer
    late, retries through the API with the same key. Answering with A's job (202) would promise a job that A then
    fails ENQUEUE_FAILED, with no webhook. So the retry is 409 idempotency_key_in_use with a Retry-After; after A's
    503 the key is free, and the next retry makes a new job, queued."""
    tenant, client = service.new_named_tenant("replay-sending")
    body, key = {"prompt": "still sending"}, "order-sending"
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    sqs = service.boto("sqs")
    missing_queue = service.queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    first = SubmissionService(repo, JobQueue(sqs, missing_queue), Settings(enqueue_attempts=2), sleep=lambda _: None)
    retries: list[Any] = []

    def client_retries_meanwhile(**_: Any) -> None:
        if not retries:
            try:
                retries.append(client.submit(body, idempotency_key=key))
            except ApiError as exc:
                retries.append(exc)

    sqs.meta.events.register("before-send.sqs.SendMessage", client_retries_meanwhile)
    request = GenerationRequest.model_validate(body, context={"settings": Settings()})
    with pytest.raises(EnqueueFailed) as info:
        first.submit(tenant, request, idempotency_key=key)
    [answer] = retries
    assert isinstance(answer, ApiError), answer
    assert (answer.status, answer.code) == (409, "idempotency_key_in_use")
    assert int(answer.headers["Retry-After"]) >= 1
    failed_id = info.value.details["job_id"]
    assert repo.get(failed_id).status == JobStatus.FAILED
    depth = service.queue_depth()
    retried = client.submit(body, idempotency_key=key)
    assert retried["id"] != failed_id
    assert retried["status"] == "QUEUED"
    assert service.queue_depth() == depth + 1


def test_a_key_left_naming_a_job_that_could_not_be_queued_is_free(service: RunningService) -> None:
    """The queue send fails, the job is FAILED (ENQUEUE_FAILED) and the 503 invites a retry with the key, but the
    write that frees the key fails too (only logged). The key still names a job that was never queued: a retry
    with it makes a new job, not a 202 with the FAILED one for the key's whole retention."""
    ddb = service.boto("dynamodb")
    repo = JobsRepository(ddb, service.table)
    tenant, key = f"tenant-unfreed-key-{time.monotonic_ns()}", "order-unfreed"
    missing_queue = service.queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    broken = SubmissionService(
        repo, JobQueue(service.boto("sqs"), missing_queue), Settings(enqueue_attempts=1), sleep=lambda _: None
    )
    refused_releases = 0

    def key_release_fails(request: Any, **_: Any) -> AWSResponse | None:
        nonlocal refused_releases
        if not json.loads(request.body)["Key"]["pk"]["S"].startswith("IDEM#"):
            return None
        refused_releases += 1
        return _internal_error(request.url)

    request = GenerationRequest.model_validate({"prompt": "unfreed"}, context={"settings": Settings()})
    ddb.meta.events.register("before-send.dynamodb.UpdateItem", key_release_fails)
    with pytest.raises(EnqueueFailed) as info:
        broken.submit(tenant, request, idempotency_key=key)
    ddb.meta.events.unregister("before-send.dynamodb.UpdateItem", key_release_fails)
    assert refused_releases >= 1
    failed_id = info.value.details["job_id"]
    record = ddb.get_item(TableName=service.table, Key={"pk": {"S": JobsRepository._idem_pk(tenant, key)}})["Item"]
    assert record["job_id"]["S"] == failed_id  # the key was not freed
    assert int(record["expires_at"]["N"]) > time.time()
    working = SubmissionService(repo, JobQueue(service.boto("sqs"), service.queue_url), Settings())
    depth = service.queue_depth()
    retried = working.submit(tenant, request, idempotency_key=key)
    assert retried.created
    assert retried.job.job_id != failed_id
    assert retried.job.status == JobStatus.QUEUED
    assert service.queue_depth() == depth + 1
    replay = working.submit(tenant, request, idempotency_key=key)
    assert (replay.created, replay.job.job_id) == (False, retried.job.job_id)  # from now on the key is the new job's
    assert repo.get(failed_id).status == JobStatus.FAILED
