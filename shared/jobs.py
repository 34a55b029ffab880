"""The jobs repository: job items in the single DynamoDB table and every status change as one conditional write.

Item layout (hash key ``pk`` only):
- ``JOB#<id>``: the job; ``tenant_status`` and the sparse ``active_tenant`` feed the GSIs the API lists by,
  ``request``/``outputs`` are JSON strings (no float/Decimal round trips), ``expires_at`` is the TTL.
- ``IDEM#<tenant>#<sha256(key)>``: an Idempotency-Key, written in the same transaction as its job.
- ``CACHE#<scope>#<cache key>``: the result cache's entry for one normalised request: the job whose images
  answer it (``job_id``), written in the same transaction as that job; ``expires_at`` (the TTL) is the job's.
  A job that joins an unfinished identical one is written in one transaction with its id added to that job's
  ``followers`` (a string set), so the join either lands before that job finishes or not at all.

A new job is written with ``unqueued_shard`` (the sparse ``unqueued`` GSI) and the attribute is removed once its
queue message is sent (or by its claim, or when it finishes): a job still in that index minutes after its
submission lost its message to a crashed API call, and the requeue sweeper sends it again.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import random
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeGuard

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError
from ulid import ULID

from shared.contracts import (
    TERMINAL_EVENTS,
    GenerationRequest,
    Job,
    JobError,
    JobErrorCode,
    JobStatus,
    LoraRef,
    Output,
    Priority,
    Progress,
    Usage,
    WebhookState,
    allowed_sources,
    is_ulid,
    utcnow,
    webhook_id,
)
from shared.dynamoretries import CONFLICT_PAUSES_S
from shared.errors import (
    IdempotencyConflict,
    IdempotencyKeyInUse,
    InvalidCursor,
    InvalidTransition,
    JobExpired,
    JobNotFound,
)
from shared.queuestate import BY_STATUS_INDEX
from shared.ratelimit import Charge, ChargeRefused
from shared.settings import API_TIMEOUT_S
from shared.tracing import current_header

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

_ser = TypeSerializer()
_de = TypeDeserializer()

# The Retry-After of a replay that finds its key's job written but not yet sent: the submission that wrote it is
# still sending it (or failing it, which frees the key), for at most the API's timeout after it began.
IN_FLIGHT_RETRY_AFTER_S = 1

# The statuses of a job another identical one may join (it has not finished).
JOINABLE = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.POSTPROCESSING)
# Most jobs joined to one source. The state machine's MarkSucceeded and MarkFailed return the whole job item into
# the execution's state, which Step Functions caps at 256 KiB (States.DataLimitExceeded fails the execution, and no
# Catch takes it): at about 30 bytes a follower, ten thousand would pass it. Past this, an identical job runs itself.
MAX_FOLLOWERS = 1000
ROOM = "(attribute_not_exists(followers) OR size(followers) < :most)"  # a join's condition on its source
ROOM_VALUES = {":most": {"N": str(MAX_FOLLOWERS)}}

UNQUEUED_INDEX = "unqueued"
UNQUEUED_SHARDS = 8  # the index's partitions: new jobs' writes spread over them, the sweeper reads each

BY_TENANT_INDEX = "by_tenant"
BY_TENANT_STATUS_INDEX = "by_tenant_status"
ACTIVE_INDEX = "active_by_tenant"

# Every attribute a ``JOB#`` item may hold (job_to_item, the worker's claim and lease, webhook delivery records);
# the state machine's direct writes are checked against it (tests/unit/test_asl_transitions.py).
JOB_ATTRIBUTES = frozenset(
    {
        "pk",
        "job_id",
        "tenant",
        "status",
        "tenant_status",
        "active_tenant",
        "unqueued_shard",
        "request",
        "created_at",
        "started_at",
        "finished_at",
        "attempt",
        "worker_id",
        "lease_until",
        "claim_token",  # the claim that set the lease (JobsRepository.claim)
        "transition_token",  # the last status change made by transition() or complete_joined()
        "progress_step",
        "progress_total",
        "outputs",
        "error_code",
        "error_message",
        "cache_key",
        "idempotency_key",
        "expires_at",
        "model_is_noise",
        "model_revision",
        "lora_revisions",
        "webhook_event",
        "webhook_id",
        "webhook_state",
        "webhook_attempts",
        "webhook_last_status",
        "webhook_last_error",
        "webhook_last_attempt_at",
        "webhook_delivered_at",
        "webhook_next_attempt_at",
        "cache_source",
        "usage",
        "preview_key",
        "joined_to",
        "followers",
        "event_webhook",  # started/progress webhooks: shared/eventrecords.py
        "event_webhook_count",
        "event_webhook_sending_until",
        "trace_header",  # the submit's X-Ray trace (shared/tracing.py)
    }
)

# The sparse index attributes of an unfinished job: every write that makes a job terminal removes them, so a
# finished job counts as active for no one and is never sent again by the requeue sweeper.
REMOVED_WHEN_FINISHED = ("active_tenant", "unqueued_shard")


class RevisionPinned(Exception):
    """A claim refused: the job is pinned to another revision of its model than the one the worker loaded, or of
    one of its LoRAs (``lora``: its id) than the worker's LoRA registry pins."""

    def __init__(self, job_id: str, revision: str, lora: str | None = None) -> None:
        what = f"LoRA {lora!r}" if lora is not None else "model"
        super().__init__(f"job {job_id} is pinned to {what} revision {revision!r}")
        self.job_id = job_id
        self.revision = revision
        self.lora = lora


def lora_pin(revisions: Mapping[str, str]) -> str | None:
    """The item's ``lora_revisions``: the LoRA revisions a job is pinned to, as one canonical string (a claim's
    condition compares it whole); None for a job without LoRAs."""
    return json.dumps(sorted(revisions.items()), separators=(",", ":")) if revisions else None


def job_pk(job_id: str) -> str:
    return f"JOB#{job_id}"


def is_valid_job_id(job_id: str) -> bool:
    """ULIDs only: anything else cannot name a job, so it is a 404 without a table read."""
    return is_ulid(job_id)


def cache_entry_pk(scope: str, cache_key: str) -> str:
    """The result cache's entry for ``cache_key`` in ``scope`` (a tenant's own, or ``*`` for every tenant)."""
    return f"CACHE#{scope}#{cache_key}"


def tenant_status(tenant: str, status: JobStatus) -> str:
    """The ``by_tenant_status`` index key of a tenant's jobs in one status."""
    return f"{tenant}#{status.value}"


def unqueued_shard(job_id: str) -> str:
    return str(int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:2], "big") % UNQUEUED_SHARDS)


def first_job_id_at(epoch_s: float) -> str:
    """The smallest job id (ULID) of the given instant: every job submitted before it sorts below."""
    millis = max(0, int(epoch_s * 1000))
    return str(ULID.from_bytes(millis.to_bytes(6, "big") + bytes(10)))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _to_item(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(v) for k, v in values.items() if v is not None}


def _from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _de.deserialize(v) for k, v in item.items()}


def job_to_item(job: Job) -> dict[str, Any]:
    values: dict[str, Any] = {
        "pk": job_pk(job.job_id),
        "job_id": job.job_id,
        "tenant": job.tenant,
        "status": job.status.value,
        "tenant_status": tenant_status(job.tenant, job.status),
        "active_tenant": None if job.status.terminal else job.tenant,
        "request": job.request.model_dump_json(),
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "attempt": job.attempt,
        "progress_step": job.progress.step,
        "progress_total": job.progress.total,
        "outputs": json.dumps([o.model_dump(mode="json") for o in job.outputs]),
        "error_code": job.error.code if job.error else None,
        "error_message": job.error.message if job.error else None,
        "cache_key": job.cache_key,
        "idempotency_key": job.idempotency_key,
        "expires_at": job.expires_at,
        "model_is_noise": job.model_is_noise,
        "model_revision": job.model_revision,
        "lora_revisions": lora_pin(job.lora_revisions),
        "cache_source": job.cache_source,
        "usage": job.usage.model_dump_json() if job.usage else None,
        "preview_key": job.preview_key,
        "joined_to": job.joined_to,
        "trace_header": job.trace_header,
    }
    return _to_item(values)


def job_from_item(item: Mapping[str, Any]) -> Job:
    raw = _from_item(item)
    outputs_raw = raw.get("outputs") or "[]"
    error = None
    if raw.get("error_code"):
        error = JobError(code=str(raw["error_code"]), message=str(raw.get("error_message", "")))
    # Stored requests were valid when accepted: bounds tightened since must not make old jobs unreadable.
    fields = json.loads(raw["request"])
    if "priority" in fields:  # construct skips validation: the enum is not made from its value by itself
        fields["priority"] = Priority(fields["priority"])
    if "loras" in fields:  # nor are the LoRA references
        fields["loras"] = [LoraRef.model_construct(**lora) for lora in fields["loras"]]
    request = GenerationRequest.model_construct(**fields)
    webhook = None
    event = raw.get("webhook_event") or TERMINAL_EVENTS.get(JobStatus(raw["status"]), "")
    if raw.get("webhook_id") or (raw.get("webhook_state") and event):
        # Without an id, the state machine gave the delivery up before its first attempt was recorded (its
        # Lambda throttled or failing throughout): the record says so, under the id the attempts would have had.
        webhook = WebhookState(
            event=str(event),
            webhook_id=str(raw.get("webhook_id") or webhook_id(str(raw["job_id"]), str(event))),
            state=raw.get("webhook_state", "pending"),
            attempts=int(raw.get("webhook_attempts", 0)),
            last_status=int(raw["webhook_last_status"]) if raw.get("webhook_last_status") is not None else None,
            last_error=raw.get("webhook_last_error"),
            last_attempt_at=raw.get("webhook_last_attempt_at"),
            delivered_at=raw.get("webhook_delivered_at"),
            next_attempt_at=raw.get("webhook_next_attempt_at"),
        )
    return Job.model_validate(
        {
            "job_id": raw["job_id"],
            "tenant": raw["tenant"],
            "status": raw["status"],
            "request": request,
            "created_at": raw["created_at"],
            "started_at": raw.get("started_at"),
            "finished_at": raw.get("finished_at"),
            "attempt": int(raw.get("attempt", 0)),
            "progress": Progress(step=int(raw.get("progress_step", 0)), total=int(raw.get("progress_total", 0))),
            "outputs": [Output.model_validate(o) for o in json.loads(outputs_raw)],
            "error": error,
            "cache_key": raw["cache_key"],
            "idempotency_key": raw.get("idempotency_key"),
            "expires_at": int(raw["expires_at"]),
            "model_is_noise": bool(raw.get("model_is_noise", False)),
            "model_revision": raw.get("model_revision"),
            "lora_revisions": dict(json.loads(raw["lora_revisions"])) if raw.get("lora_revisions") else {},
            "webhook": webhook,
            "cache_source": raw.get("cache_source"),
            "usage": Usage.model_validate_json(raw["usage"]) if raw.get("usage") else None,
            "preview_key": raw.get("preview_key"),
            "joined_to": raw.get("joined_to"),
            "trace_header": raw.get("trace_header"),
        }
    )


def past_retention(job: Job, now: float) -> bool:
    """Whether ``job`` is gone for its client: its retention ended (``expires_at``), or it failed ``EXPIRED`` (its
    retention ended while it was queued: its TTL was pushed on only so that its ``job.failed`` webhook can still
    read it, see :meth:`JobsRepository.transition`'s ``retain_until``)."""
    return job.expires_at <= now or (job.error is not None and job.error.code == JobErrorCode.EXPIRED)


def _sending(job: Job, item: Mapping[str, Any], now: float) -> bool:
    """Whether the submission that wrote ``job`` may still be sending it to the queue: it is QUEUED, still marked
    unqueued (never sent), joined to no other job (a joined job is sent by its source's settling, not its
    submission), and younger than the API's timeout. That submission may yet fail it ``ENQUEUE_FAILED`` and free
    its key, so a replay must not answer with it; past the timeout the submission is over, and a job still unsent
    is the requeue sweeper's to send."""
    return (
        job.status == JobStatus.QUEUED
        and "unqueued_shard" in item
        and "joined_to" not in item
        and job.created_at.timestamp() + API_TIMEOUT_S > now
    )


def _failed_condition(exc: ClientError, index: int) -> bool:
    """Whether item ``index`` of a cancelled transaction failed its own condition."""
    reasons = exc.response.get("CancellationReasons") or []
    return len(reasons) > index and reasons[index].get("Code") == "ConditionalCheckFailed"


def _conflicted(exc: ClientError) -> bool:
    """Whether a cancelled transaction met another one in flight (and may succeed or find its twin if retried)."""
    reasons = exc.response.get("CancellationReasons") or []
    return any(reason.get("Code") == "TransactionConflict" for reason in reasons)


@dataclass(frozen=True)
class Claim:
    """The claim a status change is made for: it is written only while the job is at ``attempt`` (a newer claim
    owns the job otherwise) and, when ``worker_id`` is given, still held by that worker."""

    attempt: int
    worker_id: str | None = None


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_cursor: str | None


def _encode_cursor(key: Mapping[str, Any]) -> str:
    return _plain_cursor(_from_item(key))


def _plain_cursor(plain: Mapping[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(plain, sort_keys=True).encode()).decode().rstrip("=")


def _listing_key(job_id: str, tenant: str, status: JobStatus | None) -> dict[str, str]:
    """A job's key in the index a listing of ``tenant``'s jobs with ``status`` reads: what its cursors hold."""
    partition = {"tenant": tenant} if status is None else {"tenant_status": tenant_status(tenant, status)}
    return {"pk": job_pk(job_id), "job_id": job_id} | partition


def cursor_after(job: Job, status: JobStatus | None) -> str:
    """The cursor that continues a listing (:meth:`JobsRepository.list_for_tenant` with ``status``) right after
    ``job``: for a page its caller cuts short."""
    return _plain_cursor(_listing_key(job.job_id, job.tenant, status))


def _decode_cursor(cursor: str, tenant: str, status: JobStatus | None) -> dict[str, Any]:
    """The ExclusiveStartKey a cursor stands for, or InvalidCursor.

    A cursor continues only the listing that made it: the caller's own jobs, through the same index (so
    exactly that index's key attributes), and the same status filter. Anything else would reach DynamoDB as
    a start key it refuses.
    """
    invalid = InvalidCursor("cursor is not valid")
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        plain = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: [[[[...
        raise invalid from exc
    if not isinstance(plain, dict) or not all(isinstance(v, str) for v in plain.values()):
        raise invalid
    job_id = plain.get("job_id")
    # An invalid id: DynamoDB refuses an empty key value in a start key (a 500).
    if not isinstance(job_id, str) or not is_valid_job_id(job_id) or plain != _listing_key(job_id, tenant, status):
        raise invalid
    return {k: _ser.serialize(v) for k, v in plain.items()}


# What a claim and its run wrote, which a job handed back to the queue no longer has: no worker, no lease, no
# progress (a client would otherwise see a QUEUED job at the step its last worker reached).
CLEARED_WHEN_QUEUED = ("worker_id", "lease_until", "claim_token", "progress_step", "progress_total", "preview_key")

# A value no job id has: the Idempotency-Key's condition names no stale job with it.
NO_JOB = "-"


class JobsRepository:
    """Reads and writes jobs; every status change goes through :meth:`transition`."""

    def __init__(
        self, dynamodb: DynamoDBClient, table_name: str, *, on_finished: Callable[[Job], object] | None = None
    ) -> None:
        """``on_finished`` is called with each job a write of this repository finished (a terminal transition,
        a job created finished, a joined job completed), once that write has landed: the finished-job metrics
        (``workflows.jobmetrics``)."""
        self._ddb = dynamodb
        self._table = table_name
        self._on_finished = on_finished

    def _landed(self, job: Job) -> Job:
        """``job`` as a write of this repository left it; ``on_finished`` hears of it when it is finished."""
        if self._on_finished is not None and job.status.terminal:
            self._on_finished(job)
        return job

    # -- create / read -------------------------------------------------------------------------

    def create(
        self, job: Job, *, idempotency_fingerprint: str | None = None, charges: Sequence[Charge] = ()
    ) -> tuple[Job, bool]:
        """Store a new job, atomically with its Idempotency-Key record when it has one and with ``charges`` (the
        tenant's counters: the request, its GPU work), in one call.

        Returns ``(job, True)`` when written, or ``(existing_job, False)`` when the key was already used
        with the same fingerprint (nothing charged). Raises IdempotencyConflict when it was used with another
        body, ChargeRefused for the first charge whose limit is reached; then nothing is written.
        """
        created = self._create(job, idempotency_fingerprint, None, charges)
        assert created is not None  # no condition of another item to fail
        if created[1]:
            self._landed(created[0])
        return created

    def create_cache_source(
        self, job: Job, *, entry_pk: str, replaces: str | None, idempotency_fingerprint: str | None = None
    ) -> tuple[Job, bool] | None:
        """:meth:`create`, with the result cache's entry ``entry_pk`` pointed at ``job`` in the same transaction:
        only where the entry is absent (``replaces`` None) or still names ``replaces`` (a job that failed, was
        cancelled or expired). None, with nothing written, when another request's job took the entry first."""
        entry: dict[str, Any] = {
            "Put": {
                "TableName": self._table,
                "Item": _to_item(
                    # Not "tenant": that attribute would put the entry in the by_tenant index beside the jobs.
                    {"pk": entry_pk, "job_id": job.job_id, "source_tenant": job.tenant, "expires_at": job.expires_at}
                ),
                "ConditionExpression": "attribute_not_exists(pk)" if replaces is None else "job_id = :previous",
            }
        }
        if replaces is not None:
            entry["Put"]["ExpressionAttributeValues"] = {":previous": {"S": replaces}}
        return self._create(job, idempotency_fingerprint, entry)

    def create_joined(
        self,
        job: Job,
        *,
        source_id: str,
        alive_until: int,
        idempotency_fingerprint: str | None = None,
        also: Sequence[dict[str, Any]] = (),
    ) -> tuple[Job, bool] | None:
        """:meth:`create` for a job that joins ``source_id`` (an identical job not yet finished): ``job`` is stored
        with ``joined_to`` and added to the source's ``followers`` in one transaction, only while the source is
        QUEUED, RUNNING or POSTPROCESSING and retained past ``alive_until`` (epoch seconds: the joined job is kept
        no longer than its source). None, with nothing written, when it is not.

        ``also``: ``TransactWriteItems`` elements written in the same transaction (the GPU work the join gives back
        and the record that it is owed: :meth:`shared.ratelimit.DailyGpuBudget.deferral`). Written apart, after the
        join, they could land after the source was cancelled and the job sent to run itself, which found nothing
        owed: its work would be given back for good."""
        if job.joined_to != source_id:
            raise ValueError("a joining job names its source in joined_to")
        join = self._join(job.job_id, source_id, alive_until)
        return self._create(job, idempotency_fingerprint, join, also=also)

    def _join(self, job_id: str, source_id: str, alive_until: int) -> dict[str, Any]:
        """The ``TransactWriteItems`` element that adds ``job_id`` to ``source_id``'s ``followers``, only while the
        source is unfinished (:data:`JOINABLE`), retained past ``alive_until`` and has room (:data:`MAX_FOLLOWERS`)."""
        values: dict[str, Any] = {":f": {"SS": [job_id]}, ":alive": {"N": str(alive_until)}, **ROOM_VALUES}
        placeholders = []
        for i, status in enumerate(JOINABLE):
            values[f":j{i}"] = {"S": status.value}
            placeholders.append(f":j{i}")
        return {
            "Update": {
                "TableName": self._table,
                "Key": {"pk": {"S": job_pk(source_id)}},
                "UpdateExpression": "ADD followers :f",
                "ConditionExpression": f"#s IN ({', '.join(placeholders)}) AND expires_at > :alive AND {ROOM}",
                "ExpressionAttributeNames": {"#s": "status"},
                "ExpressionAttributeValues": values,
            }
        }

    def _create(
        self,
        job: Job,
        idempotency_fingerprint: str | None,
        other: dict[str, Any] | None,
        charges: Sequence[Charge] = (),
        *,
        also: Sequence[dict[str, Any]] = (),
    ) -> tuple[Job, bool] | None:
        """The job's put, with ``other`` (a conditional write of another item), the Idempotency-Key's record,
        ``charges`` and ``also`` (writes that land with the job) in one transaction when there are any. None when
        ``other``'s condition failed. A job that names no trace header stores the current one (the submit's)."""
        if job.trace_header is None and current_header() is not None:
            job = job.model_copy(update={"trace_header": current_header()})
        item = job_to_item(job)
        if job.status == JobStatus.QUEUED:
            item["unqueued_shard"] = {"S": unqueued_shard(job.job_id)}  # until mark_enqueued
        put_job: dict[str, Any] = {
            "Put": {
                "TableName": self._table,
                "Item": item,
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }
        if job.idempotency_key is None and other is None and not charges and not also:
            # One item needs no transaction, which DynamoDB bills at twice the write units of a plain put.
            self._put_new(put_job["Put"], job)
            return job, True
        items = [put_job] + ([other] if other is not None else [])
        put_idem: dict[str, Any] | None = None
        if job.idempotency_key is not None:
            idem_pk = self._idem_pk(job.tenant, job.idempotency_key)
            put_idem = {
                "Put": {
                    "TableName": self._table,
                    "Item": _to_item(
                        {
                            "pk": idem_pk,
                            "job_id": job.job_id,
                            "fingerprint": idempotency_fingerprint or "",
                            "expires_at": job.expires_at,
                        }
                    ),
                    # A key lives as long as its job: past the job's retention it may name a new job. ``:now`` is
                    # set on each attempt below; ``:stale``, a job that is gone although its key's record is not.
                    "ConditionExpression": "attribute_not_exists(pk) OR expires_at <= :now OR job_id = :stale",
                }
            }
            items.append(put_idem)
        first_charge = len(items)
        items += [charge.transact_item() for charge in charges]
        items += list(also)
        stale = NO_JOB
        pauses = [*CONFLICT_PAUSES_S, None]
        while pauses:
            pause = pauses.pop(0)
            if put_idem is not None:
                # A key freed meanwhile (its job could not be queued) is free as of now, not as of the first try.
                put_idem["Put"]["ExpressionAttributeValues"] = {
                    ":now": {"N": str(int(time.time()))},
                    ":stale": {"S": stale},
                }
            try:
                self._ddb.transact_write_items(TransactItems=items)  # type: ignore[arg-type]
            except self._ddb.exceptions.TransactionCanceledException as exc:
                if job.idempotency_key is not None:
                    existing, gone = self._look_up_key(job.tenant, job.idempotency_key, idempotency_fingerprint)
                    if existing is not None:
                        return existing, False
                    if stale == NO_JOB and gone is not None and _failed_condition(exc, first_charge - 1):
                        # The key's record outlived its job: take it over, once, from exactly the job found gone
                        # (a concurrent request that took it over first makes this write's condition fail).
                        stale = gone
                        pauses.insert(0, pause)  # this same try again, now with the take-over's condition
                        continue
                for index, charge in enumerate(charges, start=first_charge):
                    if _failed_condition(exc, index):
                        raise ChargeRefused(charge) from exc
                if other is not None and _failed_condition(exc, 1):
                    return None
                if not _conflicted(exc):
                    raise
                if pause is None:
                    if job.idempotency_key is not None:
                        raise IdempotencyKeyInUse() from exc
                    raise
                time.sleep(pause * (1 + random.random()))  # jitter
                continue
            return job, True
        raise AssertionError("unreachable")  # pragma: no cover

    def _put_new(self, put: dict[str, Any], job: Job) -> None:
        """The plain put of a new job. A put whose first send landed but whose answer was lost (a 500, a read
        timeout) is sent again by botocore and fails its ``attribute_not_exists(pk)``: the item it finds is this
        very job (its id is a fresh ULID, its tenant the same), so the job was created, not refused."""
        try:
            self._ddb.put_item(**put, ReturnValuesOnConditionCheckFailure="ALL_OLD")
        except self._ddb.exceptions.ConditionalCheckFailedException as exc:
            old = _old_item(exc) or {}
            if old.get("job_id", {}).get("S") != job.job_id or old.get("tenant", {}).get("S") != job.tenant:
                raise

    def find_by_idempotency_key(self, tenant: str, key: str, fingerprint: str | None) -> Job | None:
        """The job an Idempotency-Key created, or None. Raises IdempotencyConflict on a different body, and
        IdempotencyKeyInUse while the request that wrote the job may still be sending it to the queue.

        A key whose job is past its retention (or already swept by the TTL) is no record: the key is free. So is
        a key whose job could not be queued (FAILED ``ENQUEUE_FAILED``): its submission answered 503, inviting a
        retry with it, and frees it, but that write may have failed.
        """
        return self._look_up_key(tenant, key, fingerprint)[0]

    def _look_up_key(self, tenant: str, key: str, fingerprint: str | None) -> tuple[Job | None, str | None]:
        """:meth:`find_by_idempotency_key`, and the id of the job a live record still names although that job is
        gone or was never queued (a stale key, free to take over from exactly that job), or None."""
        resp = self._ddb.get_item(
            TableName=self._table, Key={"pk": {"S": self._idem_pk(tenant, key)}}, ConsistentRead=True
        )
        item = resp.get("Item")
        if item is None:
            return None, None
        record = _from_item(item)
        expires_at = record.get("expires_at")
        if expires_at is not None and int(expires_at) <= time.time():
            return None, None
        try:
            # A job can end its retention before its key's record does (a joined job takes its source's): the key
            # is then free as well, whatever body it came with.
            job, item = self._read(str(record["job_id"]), tenant=tenant)
        except JobNotFound:
            return None, str(record["job_id"])
        if job.status == JobStatus.FAILED and job.error is not None and job.error.code == JobErrorCode.ENQUEUE_FAILED:
            return None, job.job_id
        if record.get("fingerprint") != (fingerprint or ""):
            raise IdempotencyConflict()
        if _sending(job, item, time.time()):
            raise IdempotencyKeyInUse(retry_after_s=IN_FLIGHT_RETRY_AFTER_S)
        return job, None

    def release_idempotency_key(self, tenant: str, key: str, job_id: str) -> None:
        """Free the key of a job that was never queued (ENQUEUE_FAILED), so that a retry with it, as the 503
        invites, makes a new job. The record is marked expired, which ``find_by_idempotency_key`` and ``create``
        treat as no record; a key already taken by another job is left alone."""
        with contextlib.suppress(self._ddb.exceptions.ConditionalCheckFailedException):  # another job's key now
            self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": self._idem_pk(tenant, key)}},
                UpdateExpression="SET expires_at = :now",
                ConditionExpression="job_id = :j",
                ExpressionAttributeValues={":now": {"N": str(int(time.time()))}, ":j": {"S": job_id}},
            )

    def mark_enqueued(self, job_id: str, *, also: dict[str, Any] | None = None) -> None:
        """The job's queue message is sent: take it out of the ``unqueued`` index. ``also``: a
        ``TransactWriteItems`` element written in the same call (the submission's audit entry); the two land
        together or not at all, and a job gone (swept by the TTL) takes neither."""
        update: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"pk": {"S": job_pk(job_id)}},
            "UpdateExpression": "REMOVE unqueued_shard",
            "ConditionExpression": "attribute_exists(pk)",
        }
        if also is not None:
            self._ddb.transact_write_items(TransactItems=[{"Update": update}, also])  # type: ignore[typeddict-item,list-item]
            return
        with contextlib.suppress(self._ddb.exceptions.ConditionalCheckFailedException):  # swept by the TTL
            self._ddb.update_item(**update)

    def unqueued_before(self, epoch_s: float, *, limit: int, shards: Iterable[int] | None = None) -> list[str]:
        """Ids of jobs submitted before ``epoch_s`` whose queue message was never marked sent, oldest first per
        shard (all shards, or those given), at most ``limit`` in all.

        A job that joined an identical one (the result cache) is sent only by that job's settling, so it is left
        out while its source is unfinished or finished after ``epoch_s``: a source that finished earlier and still
        has it joined never settled it (a crash, or a path that does not settle), and it is sent like any other.
        """
        found: list[str] = []
        cutoff = first_job_id_at(epoch_s)
        for shard in range(UNQUEUED_SHARDS) if shards is None else shards:
            kwargs: dict[str, Any] = {
                "TableName": self._table,
                "IndexName": UNQUEUED_INDEX,
                "KeyConditionExpression": "unqueued_shard = :s AND job_id < :cut",
                "ExpressionAttributeValues": {":s": {"S": str(shard)}, ":cut": {"S": cutoff}},
            }
            while len(found) < limit:
                kwargs["Limit"] = limit - len(found)
                resp = self._ddb.query(**kwargs)
                found.extend(
                    job_id
                    for job_id in (str(item["job_id"]["S"]) for item in resp.get("Items", []))
                    if not self._waits_on_source(job_id, epoch_s)
                )
                last = resp.get("LastEvaluatedKey")
                if not last:
                    break
                kwargs["ExclusiveStartKey"] = last
        return found[:limit]

    def _waits_on_source(self, job_id: str, epoch_s: float) -> bool:
        """Whether a job is joined to a source that will still settle it (unfinished, or finished after
        ``epoch_s``)."""
        item = self._ddb.get_item(
            TableName=self._table, Key={"pk": {"S": job_pk(job_id)}}, ProjectionExpression="joined_to"
        ).get("Item", {})
        source_id = item.get("joined_to", {}).get("S")
        if not source_id:
            return False
        source = self._ddb.get_item(
            TableName=self._table,
            Key={"pk": {"S": job_pk(source_id)}},
            ProjectionExpression="#s, finished_at, expires_at",
            ExpressionAttributeNames={"#s": "status"},
        ).get("Item")
        if source is None:
            return False
        raw = _from_item(source)
        if JobStatus(raw["status"]) in JOINABLE:
            return int(raw.get("expires_at", 0)) > time.time()
        finished = raw.get("finished_at")
        return finished is not None and datetime.fromisoformat(str(finished)).timestamp() > epoch_s

    def get(self, job_id: str, *, tenant: str | None = None, within_retention: bool = True) -> Job:
        """The job, or JobNotFound (also when it belongs to another tenant: indistinguishable). With ``tenant``, a
        job past its retention is not found either, unless ``within_retention`` is False (the webhook of a job
        that expired while queued is still sent)."""
        return self._read(job_id, tenant=tenant, within_retention=within_retention)[0]

    def _read(
        self, job_id: str, *, tenant: str | None = None, within_retention: bool = True
    ) -> tuple[Job, dict[str, Any]]:
        """:meth:`get`, and the item as stored (its index attributes, which the job leaves out)."""
        resp = self._ddb.get_item(TableName=self._table, Key={"pk": {"S": job_pk(job_id)}}, ConsistentRead=True)
        item = resp.get("Item")
        if item is None:
            raise JobNotFound(job_id)
        job = job_from_item(item)
        if tenant is not None and (job.tenant != tenant or (within_retention and past_retention(job, time.time()))):
            # Past its retention a job is gone for clients, even before DynamoDB's TTL sweep deletes it.
            raise JobNotFound(job_id)
        return job, dict(item)

    def list_for_tenant(
        self, tenant: str, *, status: JobStatus | None = None, limit: int = 20, cursor: str | None = None
    ) -> Page:
        """The tenant's jobs, newest first (ids are time-sortable), optionally of one status. Raises InvalidCursor
        for a cursor this listing did not make."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if status is None:
            kwargs["IndexName"] = BY_TENANT_INDEX
            kwargs["KeyConditionExpression"] = "tenant = :t"
            kwargs["ExpressionAttributeValues"] = {":t": {"S": tenant}}
        else:
            kwargs["IndexName"] = BY_TENANT_STATUS_INDEX
            kwargs["KeyConditionExpression"] = "tenant_status = :ts"
            kwargs["ExpressionAttributeValues"] = {":ts": {"S": tenant_status(tenant, status)}}
        if cursor:
            kwargs["ExclusiveStartKey"] = _decode_cursor(cursor, tenant, status)
        resp = self._ddb.query(**kwargs)
        now = time.time()
        jobs = [j for j in (job_from_item(item) for item in resp.get("Items", [])) if not past_retention(j, now)]
        last = resp.get("LastEvaluatedKey")
        return Page(jobs=jobs, next_cursor=_encode_cursor(last) if last else None)

    def count_active(self, tenant: str) -> int:
        """Unfinished jobs of a tenant (the sparse ``active_by_tenant`` index; eventually consistent)."""
        total = 0
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": ACTIVE_INDEX,
            "KeyConditionExpression": "active_tenant = :t",
            "ExpressionAttributeValues": {":t": {"S": tenant}},
            "Select": "COUNT",
        }
        while True:
            resp = self._ddb.query(**kwargs)
            total += int(resp.get("Count", 0))
            last = resp.get("LastEvaluatedKey")
            if not last:
                return total
            kwargs["ExclusiveStartKey"] = last

    # -- status changes ------------------------------------------------------------------------

    def transition(
        self,
        job_id: str,
        target: JobStatus,
        *,
        tenant: str,
        sources: Iterable[JobStatus] | None = None,
        error: JobError | None = None,
        claim: Claim | None = None,
        within_retention: bool = False,
        lease_lapsed_before: float | None = None,
        retain_until: int | None = None,
    ) -> Job:
        """Move a job to ``target`` in one conditional write and return the job as written.

        The write succeeds only if the job belongs to ``tenant`` and its current status may legally become
        ``target`` (and is one of ``sources`` when given), and, with ``claim``, only for that claim of the job;
        with ``lease_lapsed_before`` (epoch seconds), only if its lease ended before then.
        A change a client asks for (a cancel) passes ``within_retention``: past its retention the job is gone
        for clients, as ``get`` says. Raises JobNotFound (absent, another tenant's, or past its retention with
        ``within_retention``) or InvalidTransition (also when the job is at another claim). ``retain_until``
        (epoch seconds) sets the job's TTL in the same write: a job failed past its retention is kept until its
        webhook has been sent.

        A write that landed but whose answer was lost (a 500, a read timeout) is sent again by botocore, and that
        send fails the condition the first one's write no longer meets. The write carries a token of its own
        (``transition_token``) so that this is told from a refusal: the job as it stands is returned, the change
        made, as :meth:`claim` does with its ``claim_token``.
        """
        allowed = allowed_sources(target)
        if sources is not None:
            allowed = allowed & frozenset(sources)
        if not allowed:
            raise InvalidTransition(job_id, "any", target.value)
        names: dict[str, str] = {"#s": "status"}
        values: dict[str, Any] = {
            ":target": target.value,
            ":tenant": tenant,
            ":ts": tenant_status(tenant, target),
        }
        # This call's own mark: a re-sent request whose first send landed finds it; no other call writes it.
        token = secrets.token_hex(8)
        values[":token"] = token
        sets = ["#s = :target", "tenant_status = :ts", "transition_token = :token"]
        allowed_placeholders = []
        for i, src in enumerate(sorted(allowed)):
            values[f":src{i}"] = src.value
            allowed_placeholders.append(f":src{i}")
        condition = f"attribute_exists(pk) AND tenant = :tenant AND #s IN ({', '.join(allowed_placeholders)})"
        now = int(time.time())
        if within_retention:
            condition += " AND expires_at > :now_epoch"
            values[":now_epoch"] = now
        if lease_lapsed_before is not None:
            condition += " AND lease_until < :lapsed"
            values[":lapsed"] = _num(lease_lapsed_before)
        if claim is not None:
            condition += " AND attempt = :attempt"
            values[":attempt"] = claim.attempt
            if claim.worker_id is not None:
                condition += " AND worker_id = :me"
                values[":me"] = claim.worker_id
        fields: dict[str, Any] = {}
        if error is not None:
            fields["error_code"] = error.code
            fields["error_message"] = error.message
        if target.terminal:
            fields["finished_at"] = _iso(utcnow())
        if retain_until is not None:
            fields["expires_at"] = retain_until
        for i, (name, value) in enumerate(fields.items()):
            names[f"#f{i}"] = name
            values[f":f{i}"] = value
            sets.append(f"#f{i} = :f{i}")
        expression = "SET " + ", ".join(sets)
        if target.terminal:
            expression += " REMOVE " + ", ".join(REMOVED_WHEN_FINISHED)
        elif target == JobStatus.QUEUED:
            expression += " REMOVE " + ", ".join(CLEARED_WHEN_QUEUED)
        try:
            resp = self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": job_pk(job_id)}},
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={k: _ser.serialize(v) for k, v in values.items()},
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._ddb.exceptions.ConditionalCheckFailedException as exc:
            old = _old_item(exc)
            if _written_by(old, token):
                # This call's own write: its answer was lost, then re-sent. Others may have moved the job on since
                # (a claim, the state machine's terminal write): only the status it wrote is this call's to report.
                landed = job_from_item(old)
                return self._landed(landed) if landed.status == target else landed
            current = job_from_item(old) if old else None
            if current is None:
                try:
                    current = self.get(job_id)
                except JobNotFound:
                    raise JobNotFound(job_id) from None
            if current.tenant != tenant or (within_retention and past_retention(current, now)):
                raise JobNotFound(job_id) from None
            raise InvalidTransition(job_id, current.status.value, target.value) from None
        return self._landed(job_from_item(resp["Attributes"]))

    # -- worker side ---------------------------------------------------------------------------

    def claim(
        self,
        job_id: str,
        tenant: str,
        *,
        worker_id: str,
        lease_s: float,
        now: float,
        min_life_s: float = 0.0,
        revision: str | None = None,
        loras: Mapping[str, str] | None = None,
    ) -> Job:
        """QUEUED -> RUNNING for this worker, in one conditional write, before any GPU time is spent, only while
        the job has more than ``min_life_s`` of its retention left (``expires_at``): its run must end, and its
        webhook read it, before DynamoDB's TTL may remove it.

        A RUNNING job whose lease ran out (its worker died) may be claimed again; the attempt count goes up.
        With ``revision`` (the model revision the worker loaded), only a job pinned to it, or to none, is claimed;
        with ``loras`` (the revisions the worker's LoRA registry pins for the job's LoRAs, by id), only a job
        pinned to those, or to none.
        Raises JobExpired (past its retention while queued, or claimable with no more than ``min_life_s`` of it
        left), RevisionPinned (claimable, but pinned to another revision; nothing written), InvalidTransition
        (cancelled, finished, handed off, or held by a live worker) or JobNotFound. A claim that finds its own
        write (this worker, this very lease: botocore re-sent the request after the answer to the first send was
        lost) returns the job that write made: it was won.
        """
        queued, running = JobStatus.QUEUED.value, JobStatus.RUNNING.value
        pinned, pinned_values = "", {}
        if revision is not None:
            pinned = " AND (attribute_not_exists(model_revision) OR model_revision = :rev)"
            pinned_values = {":rev": {"S": revision}}
        lease = _num(now + lease_s)
        # This request's own mark: a re-sent request whose first send landed finds it; a duplicate message's claim
        # by the same worker in the same millisecond (the same lease) does not.
        token = secrets.token_hex(8)
        lora_revisions = lora_pin(loras) if loras is not None else None
        if lora_revisions is not None:
            pinned += " AND (attribute_not_exists(lora_revisions) OR lora_revisions = :loras)"
            pinned_values[":loras"] = {"S": lora_revisions}
        try:
            resp = self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": job_pk(job_id)}},
                UpdateExpression=(
                    "SET #s = :running, tenant_status = :ts, worker_id = :w, lease_until = :lease, "
                    "claim_token = :token, started_at = if_not_exists(started_at, :iso), progress_step = :zero "
                    "REMOVE unqueued_shard, joined_to ADD attempt :one"
                ),
                ConditionExpression=(
                    "attribute_exists(pk) AND tenant = :t AND expires_at > :epoch AND "
                    "(#s = :queued OR (#s = :running AND lease_until < :now))" + pinned
                ),
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":running": {"S": running},
                    ":queued": {"S": queued},
                    ":ts": {"S": tenant_status(tenant, JobStatus.RUNNING)},
                    ":w": {"S": worker_id},
                    ":lease": _ser.serialize(lease),
                    ":token": {"S": token},
                    ":now": _ser.serialize(_num(now)),
                    ":epoch": {"N": str(int(now + min_life_s))},
                    ":iso": {"S": _iso(utcnow()) or ""},
                    ":zero": {"N": "0"},
                    ":one": {"N": "1"},
                    ":t": {"S": tenant},
                    **pinned_values,
                },
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._ddb.exceptions.ConditionalCheckFailedException as exc:
            old = _old_item(exc)
            if old is None:
                old = self._ddb.get_item(
                    TableName=self._table, Key={"pk": {"S": job_pk(job_id)}}, ConsistentRead=True
                ).get("Item")
                if old is None:
                    raise JobNotFound(job_id) from None
            current = job_from_item(old)
            if (
                current.status == JobStatus.RUNNING
                and current.tenant == tenant
                and old.get("worker_id", {}).get("S") == worker_id
                and old.get("claim_token", {}).get("S") == token
            ):
                return current  # this request's own write: its answer was lost and botocore sent it again
            if current.tenant != tenant:
                raise JobNotFound(job_id) from None
            if current.expires_at <= int(now) and not current.status.terminal:
                raise JobExpired(job_id) from None  # whoever holds it: nobody may run it
            claimable = current.status == JobStatus.QUEUED or (
                current.status == JobStatus.RUNNING and (self.lease_until(job_id) or 0) < now
            )
            if claimable and current.expires_at <= int(now + min_life_s):
                raise JobExpired(job_id, past=False) from None  # too little left for a run; a live worker's is its own
            if claimable and revision is not None and current.model_revision not in (None, revision):
                raise RevisionPinned(job_id, current.model_revision) from None
            if claimable and loras is not None:
                for lora, pinned_to in sorted(current.lora_revisions.items()):
                    if loras.get(lora) != pinned_to:
                        raise RevisionPinned(job_id, pinned_to, lora=lora) from None
            raise InvalidTransition(job_id, current.status.value, running) from None
        return job_from_item(resp["Attributes"])

    def release_claim(self, job_id: str, tenant: str, *, worker_id: str, attempt: int) -> bool:
        """Undo a claim whose generation never started (RUNNING -> QUEUED, attempt given back).

        The worker claims its next batch while the current one generates; when it stops before running
        that batch, this hands the jobs back at once instead of leaving them to a lapsing lease. Only the
        claiming worker's own, untouched claim is undone (same worker, same attempt, no step recorded), so a
        cancel or a takeover in between wins. Returns whether the claim was released.
        """
        queued, running = JobStatus.QUEUED.value, JobStatus.RUNNING.value
        # The first claim set started_at; a job handed back before any attempt ran has not started.
        removed = ", ".join(CLEARED_WHEN_QUEUED) + (", started_at" if attempt == 1 else "")
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": job_pk(job_id)}},
                UpdateExpression=f"SET #s = :queued, tenant_status = :ts REMOVE {removed} ADD attempt :minus",
                ConditionExpression=(
                    "#s = :running AND worker_id = :w AND attempt = :attempt AND tenant = :t AND progress_step = :zero"
                ),
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":queued": {"S": queued},
                    ":running": {"S": running},
                    ":ts": {"S": tenant_status(tenant, JobStatus.QUEUED)},
                    ":w": {"S": worker_id},
                    ":attempt": {"N": str(attempt)},
                    ":minus": {"N": "-1"},
                    ":zero": {"N": "0"},
                    ":t": {"S": tenant},
                },
            )
        except self._ddb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def running_ids(self, *, limit: int) -> list[str]:
        """Ids of RUNNING jobs, oldest first (the ``by_status`` index), at most ``limit``."""
        found: list[str] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": BY_STATUS_INDEX,
            "KeyConditionExpression": "#s = :running",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {":running": {"S": JobStatus.RUNNING.value}},
            "ProjectionExpression": "job_id",
        }
        while len(found) < limit:
            kwargs["Limit"] = limit - len(found)
            resp = self._ddb.query(**kwargs)
            found += [str(item["job_id"]["S"]) for item in resp.get("Items", [])]
            last = resp.get("LastEvaluatedKey")
            if not last:
                break
            kwargs["ExclusiveStartKey"] = last
        return found

    def lease_until(self, job_id: str) -> float | None:
        """When the job's lease ends (epoch seconds); None when it has none (not claimed, finished or gone)."""
        resp = self._ddb.get_item(
            TableName=self._table, Key={"pk": {"S": job_pk(job_id)}}, ProjectionExpression="lease_until"
        )
        lease = resp.get("Item", {}).get("lease_until", {}).get("N")
        return float(lease) if lease else None

    def lease_remaining(self, job_id: str, now: float) -> float:
        """Seconds until another worker may take this job over (0 when free or gone)."""
        resp = self._ddb.get_item(
            TableName=self._table, Key={"pk": {"S": job_pk(job_id)}}, ProjectionExpression="lease_until"
        )
        lease = resp.get("Item", {}).get("lease_until", {}).get("N")
        return max(0.0, float(lease) - now) if lease else 0.0

    def record_progress(self, job_id: str, *, worker_id: str, step: int, total: int) -> bool:
        """Write step/total while this worker still owns the RUNNING job.

        Returns False when the job is no longer ours to run (cancelled, or taken over): drop its images.
        """
        return self._set_if_ours(
            job_id,
            worker_id,
            "SET progress_step = :step, progress_total = :total",
            {":step": {"N": str(step)}, ":total": {"N": str(total)}},
        )

    def record_preview(self, job_id: str, *, worker_id: str, key: str, step: int, total: int) -> bool:
        """Point this worker's RUNNING job at its preview and its step.

        Returns False when the job is no longer ours (cancelled, or taken over): the caller deletes the preview.
        """
        return self._set_if_ours(
            job_id,
            worker_id,
            "SET preview_key = :key, progress_step = :step, progress_total = :total",
            {":key": {"S": key}, ":step": {"N": str(step)}, ":total": {"N": str(total)}},
        )

    def renew_lease(self, job_id: str, *, worker_id: str, lease_until: float) -> bool:
        """Extend this worker's lease on its RUNNING job (nothing else is written).

        Returns False when the job is no longer ours (cancelled, handed off, released or taken over).
        """
        return self._set_if_ours(
            job_id, worker_id, "SET lease_until = :lease", {":lease": _ser.serialize(_num(lease_until))}
        )

    def _set_if_ours(self, job_id: str, worker_id: str, expression: str, values: dict[str, Any]) -> bool:
        """One update of a RUNNING job held by ``worker_id``; False (nothing written) when it is not."""
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": job_pk(job_id)}},
                UpdateExpression=expression,
                ConditionExpression="#s = :running AND worker_id = :w",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    **values,
                    ":running": {"S": JobStatus.RUNNING.value},
                    ":w": {"S": worker_id},
                },
            )
        except self._ddb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def mark_handed_off(self, job_id: str, *, tenant: str, claim: Claim, usage: Usage) -> bool:
        """The worker's hand-off mark: RUNNING -> POSTPROCESSING with the job's ``usage``, for this claim (attempt
        and worker) only. When the state machine made the move first (its Postprocess), the usage is still
        recorded on the job of this claim, once. Returns whether the usage was written; False when the job is no
        longer this claim's (cancelled, handed back, taken over)."""
        if claim.worker_id is None:
            raise ValueError("the hand-off mark is the claiming worker's")
        names = {"#s": "status"}
        values = {
            ":running": {"S": JobStatus.RUNNING.value},
            ":post": {"S": JobStatus.POSTPROCESSING.value},
            ":succ": {"S": JobStatus.SUCCEEDED.value},
            ":ts": {"S": tenant_status(tenant, JobStatus.POSTPROCESSING)},
            ":t": {"S": tenant},
            ":attempt": {"N": str(claim.attempt)},
            ":me": {"S": claim.worker_id},
            ":usage": {"S": usage.model_dump_json()},
        }
        ours = "tenant = :t AND attempt = :attempt AND worker_id = :me"
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": job_pk(job_id)}},
                UpdateExpression="SET #s = :post, tenant_status = :ts, #u = :usage",
                ConditionExpression=f"{ours} AND #s = :running",
                ExpressionAttributeNames={**names, "#u": "usage"},
                ExpressionAttributeValues={k: v for k, v in values.items() if k != ":succ"},
            )
            return True
        except self._ddb.exceptions.ConditionalCheckFailedException:
            pass
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": job_pk(job_id)}},
                UpdateExpression="SET #u = :usage",
                ConditionExpression=f"{ours} AND #s IN (:post, :succ) AND attribute_not_exists(#u)",
                ExpressionAttributeNames={**names, "#u": "usage"},
                ExpressionAttributeValues={k: v for k, v in values.items() if k not in (":running", ":ts")},
            )
        except self._ddb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    # -- result cache ----------------------------------------------------------------------------

    def repoint_cache_entry(self, entry_pk: str, *, previous: str, job: Job) -> bool:
        """Point the result cache's entry ``entry_pk`` at ``job`` where it still names ``previous``; False, with
        nothing written, where it names another job or is gone."""
        try:
            self._ddb.put_item(
                TableName=self._table,
                Item=_to_item(
                    {"pk": entry_pk, "job_id": job.job_id, "source_tenant": job.tenant, "expires_at": job.expires_at}
                ),
                ConditionExpression="job_id = :previous",
                ExpressionAttributeValues={":previous": {"S": previous}},
            )
        except self._ddb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def cached_job_id(self, entry_pk: str) -> str | None:
        """The job the result cache's entry names, or None (no entry)."""
        resp = self._ddb.get_item(TableName=self._table, Key={"pk": {"S": entry_pk}}, ConsistentRead=True)
        item = resp.get("Item")
        return str(item["job_id"]["S"]) if item else None

    def followers(self, job_id: str) -> list[str]:
        """The jobs that joined ``job_id`` (sorted; empty when none or the job is gone)."""
        resp = self._ddb.get_item(
            TableName=self._table,
            Key={"pk": {"S": job_pk(job_id)}},
            ProjectionExpression="followers",
            ConsistentRead=True,
        )
        return sorted(resp.get("Item", {}).get("followers", {}).get("SS", []))

    def complete_joined(
        self, job_id: str, *, source_id: str, tenant: str, outputs: list[Output], expires_at: int, usage: Usage
    ) -> Job | None:
        """QUEUED -> SUCCEEDED for a job that joined ``source_id``, answered with ``outputs`` (the source's
        images) and retained until ``expires_at`` (no later than they are): one conditional write, only while it
        is QUEUED and still joined to that source. None when it is not (cancelled, handed back to run itself, or
        completed already). A write whose answer was lost and that botocore sent again finds its own
        ``transition_token`` (see :meth:`transition`): the job it completed is returned."""
        now = _iso(utcnow())
        token = secrets.token_hex(8)
        try:
            resp = self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": job_pk(job_id)}},
                UpdateExpression=(
                    "SET #s = :succ, tenant_status = :ts, finished_at = :now, started_at = if_not_exists(started_at,"
                    " :now), outputs = :outputs, cache_source = :src, #u = :usage, expires_at = :exp,"
                    " transition_token = :token REMOVE joined_to, " + ", ".join(REMOVED_WHEN_FINISHED)
                ),
                ConditionExpression="#s = :queued AND joined_to = :src AND tenant = :t",
                ExpressionAttributeNames={"#s": "status", "#u": "usage"},
                ExpressionAttributeValues={
                    ":succ": {"S": JobStatus.SUCCEEDED.value},
                    ":queued": {"S": JobStatus.QUEUED.value},
                    ":ts": {"S": tenant_status(tenant, JobStatus.SUCCEEDED)},
                    ":now": {"S": now or ""},
                    ":outputs": {"S": json.dumps([o.model_dump(mode="json") for o in outputs])},
                    ":src": {"S": source_id},
                    ":usage": {"S": usage.model_dump_json()},
                    ":t": {"S": tenant},
                    ":exp": {"N": str(expires_at)},
                    ":token": {"S": token},
                },
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._ddb.exceptions.ConditionalCheckFailedException as exc:
            old = _old_item(exc)
            if _written_by(old, token):
                # This call's own write, its answer lost and re-sent: the follower it completed (SUCCEEDED, final).
                return self._landed(job_from_item(old))
            return None
        return self._landed(job_from_item(resp["Attributes"]))

    def move_joined(self, job_id: str, *, source_id: str, to_source_id: str, alive_until: int) -> bool:
        """Move a job joined to ``source_id`` (which failed or was cancelled) to ``to_source_id``, an identical job
        that will generate instead: one transaction, only while it is QUEUED and joined to ``source_id`` and the
        new source is unfinished and retained past ``alive_until`` (as :meth:`create_joined`). False, with nothing
        written, otherwise."""
        items: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self._table,
                    "Key": {"pk": {"S": job_pk(job_id)}},
                    "UpdateExpression": "SET joined_to = :to",
                    "ConditionExpression": "#s = :queued AND joined_to = :from",
                    "ExpressionAttributeNames": {"#s": "status"},
                    "ExpressionAttributeValues": {
                        ":to": {"S": to_source_id},
                        ":from": {"S": source_id},
                        ":queued": {"S": JobStatus.QUEUED.value},
                    },
                }
            },
            self._join(job_id, to_source_id, alive_until),
        ]
        try:
            self._ddb.transact_write_items(TransactItems=items)  # type: ignore[arg-type]
        except self._ddb.exceptions.TransactionCanceledException as exc:
            if _failed_condition(exc, 0) or _failed_condition(exc, 1):
                return False
            raise
        return True

    def release_joined(self, job_id: str, *, source_id: str) -> Job | None:
        """A job that joined ``source_id`` runs itself after all (the source failed, was cancelled or expired): its
        ``joined_to`` is removed while it is QUEUED and still joined to that source; the caller sends its
        message (until :meth:`mark_enqueued`, the requeue sweeper would). None when it is not so joined."""
        try:
            resp = self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": job_pk(job_id)}},
                UpdateExpression="REMOVE joined_to",
                ConditionExpression="#s = :queued AND joined_to = :src",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":queued": {"S": JobStatus.QUEUED.value}, ":src": {"S": source_id}},
                ReturnValues="ALL_NEW",
            )
        except self._ddb.exceptions.ConditionalCheckFailedException:
            return None
        return job_from_item(resp["Attributes"])

    def record_webhook_attempt(
        self,
        job_id: str,
        *,
        event: str,
        webhook_id: str,
        outcome: str,
        status: int | None,
        error: str | None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        """Count one delivery attempt and its result on the job (shown by GET), with when the next one is due
        (``next_attempt_at``; None: no other attempt is scheduled).

        A webhook once ``delivered`` stays so: a later attempt that did not deliver (a redelivery's, or one of a
        delivery racing another) is counted with its status and error, and changes neither the state nor when it
        was delivered (one conditional write, then, only if it finds the record delivered, a second that counts).
        """
        state = {"delivered": "delivered", "retry": "retrying", "gave_up": "failed", "blocked": "blocked"}[outcome]
        now = _iso(utcnow())
        counted = [
            "webhook_event = :event",
            "webhook_id = :wid",
            "webhook_last_attempt_at = :now",
            "webhook_last_status = :status",
            "webhook_last_error = :error",
        ]
        values: dict[str, Any] = {
            ":event": {"S": event},
            ":wid": {"S": webhook_id},
            ":now": {"S": now or ""},
            ":status": {"N": str(status)} if status is not None else {"NULL": True},
            ":error": {"S": error} if error else {"NULL": True},
            ":one": {"N": "1"},
        }
        sets = [*counted, "webhook_state = :state"]
        state_values = {":state": {"S": state}}
        if outcome == "delivered":
            sets.append("webhook_delivered_at = :now")
        next_attempt = " REMOVE webhook_next_attempt_at"
        if next_attempt_at is not None:
            sets.append("webhook_next_attempt_at = :next")
            state_values[":next"] = {"S": _iso(next_attempt_at) or ""}
            next_attempt = ""
        condition, condition_values = "attribute_exists(pk)", {}
        if outcome != "delivered":
            condition += " AND (attribute_not_exists(webhook_state) OR webhook_state <> :delivered)"
            condition_values = {":delivered": {"S": "delivered"}}
        key = {"pk": {"S": job_pk(job_id)}}
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key=key,
                UpdateExpression="SET " + ", ".join(sets) + " ADD webhook_attempts :one" + next_attempt,
                ConditionExpression=condition,
                ExpressionAttributeValues=values | state_values | condition_values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._ddb.exceptions.ConditionalCheckFailedException as exc:
            if _old_item(exc) is None:  # the job is gone
                raise
            self._ddb.update_item(  # delivered already: the attempt is counted, the state kept
                TableName=self._table,
                Key=key,
                UpdateExpression="SET " + ", ".join(counted) + " ADD webhook_attempts :one",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues=values,
            )

    def stop_webhook_retries(self, job_id: str, *, attempts: int, error: str) -> bool:
        """Record a ``retrying`` webhook as ``failed`` because no attempt will come: the execution that was retrying
        it ended outright (an operator's StopExecution, its timeout, a broken state). Only the record as read
        (still ``retrying`` after ``attempts`` attempts) is changed, so an attempt that landed since keeps its own
        outcome. Returns whether it was changed."""
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": job_pk(job_id)}},
                UpdateExpression=(
                    "SET webhook_state = :failed, webhook_last_error = :error REMOVE webhook_next_attempt_at"
                ),
                ConditionExpression="webhook_state = :retrying AND webhook_attempts = :attempts",
                ExpressionAttributeValues={
                    ":failed": {"S": "failed"},
                    ":retrying": {"S": "retrying"},
                    ":attempts": {"N": str(attempts)},
                    ":error": {"S": error},
                },
            )
        except self._ddb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    @staticmethod
    def _idem_pk(tenant: str, key: str) -> str:
        return f"IDEM#{tenant}#{hashlib.sha256(key.encode()).hexdigest()}"


def _written_by(old: Mapping[str, Any] | None, token: str) -> TypeGuard[Mapping[str, Any]]:
    """Whether the item a failed condition returned carries ``token``: the status change of the call that made
    it landed (:meth:`JobsRepository.transition`, :meth:`JobsRepository.complete_joined`)."""
    return old is not None and old.get("transition_token", {}).get("S") == token


def _old_item(exc: ClientError) -> dict[str, Any] | None:
    """The item DynamoDB returns with a failed condition (ReturnValuesOnConditionCheckFailure=ALL_OLD)."""
    item = dict(exc.response).get("Item")
    return item if isinstance(item, dict) else None


def _num(value: float) -> Decimal:
    return Decimal(str(round(value, 3)))


def expiry_epoch(created_at: datetime, retention_days: int) -> int:
    return int((created_at + timedelta(days=retention_days)).timestamp())
