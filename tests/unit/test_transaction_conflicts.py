"""A single write that meets a transaction in flight on its item: DynamoDB refuses it at once
(``TransactionConflictException``, which botocore's retry modes do not retry), raised here by moto's in-process
DynamoDB (tests/dynamofaults.py) to the service's own clients (shared/aws.py). A tenant's image request or upload
ticket counted while its other submission's transaction holds the same ``RATE#`` item, or a cancel while a join adds
itself to the job, must land once the other has committed, not answer 500."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import ClientError

from shared.aws import AwsClients
from shared.contracts import JobStatus
from shared.dynamoretries import CONFLICT_PAUSES_S
from shared.jobs import JobsRepository
from shared.ratelimit import DailyGpuBudget, RateLimiter
from shared.settings import Settings
from tests.dynamofaults import DynamoFaults, Fault
from tests.unit.conftest import JOBS_TABLE, TENANT, make_job

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

WINDOW_S = 60
NOW = 1_800_000_000.0
RATE_PK = f"RATE#{TENANT}#{WINDOW_S}#{int(NOW // WINDOW_S)}"
BUDGET_PK = f"BUDGET#{TENANT}#{time.strftime('%Y-%m-%d', time.gmtime(NOW))}"


def conflict(expression: str, *, pk: str = "", job_id: str = "", times: int = 1) -> Fault:
    return Fault(job_id, expression, times=times, code="TransactionConflictException", status=400, pk=pk)


def counted(ddb: DynamoDBClient, pk: str, field: str) -> int:
    item = ddb.get_item(TableName=JOBS_TABLE, Key={"pk": {"S": pk}}, ConsistentRead=True).get("Item", {})
    return int(item[field]["N"]) if field in item else 0


@pytest.fixture
def ddb(jobs_table: DynamoDBClient) -> DynamoDBClient:
    """The service's DynamoDB client (the one factory's), on the in-process table."""
    return AwsClients(Settings(region="us-east-1")).dynamodb()


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> DynamoFaults:
    return DynamoFaults(monkeypatch)


def test_a_request_counted_during_a_conflicting_transaction_is_counted_once_it_has_committed(
    ddb: DynamoDBClient, faults: DynamoFaults
) -> None:
    rate = RateLimiter(ddb, JOBS_TABLE)
    fault = faults.add(conflict("ADD hits :one", pk=RATE_PK, times=2))
    assert rate.hit(TENANT, limit=5, window_s=WINDOW_S, now=NOW) is None  # allowed, not an error
    assert fault.hits == 2
    assert counted(ddb, RATE_PK, "hits") == 1
    faults.add(conflict("ADD hits :minus", pk=RATE_PK))  # given back (a replay that made nothing): once too
    rate.release(TENANT, window_s=WINDOW_S, now=NOW)
    assert counted(ddb, RATE_PK, "hits") == 0


def test_gpu_work_charged_and_refunded_during_conflicting_transactions_is_counted_exactly(
    ddb: DynamoDBClient, faults: DynamoFaults
) -> None:
    budget = DailyGpuBudget(ddb, JOBS_TABLE)
    faults.add(conflict("ADD used :work", pk=BUDGET_PK))
    assert budget.charge(TENANT, 300, budget=1000, now=NOW) is None
    assert counted(ddb, BUDGET_PK, "used") == 300
    faults.add(conflict("ADD used :minus", pk=BUDGET_PK))
    budget.refund(TENANT, 300, now=NOW)
    assert counted(ddb, BUDGET_PK, "used") == 0


def test_a_cancel_during_a_join_of_its_job_is_made(ddb: DynamoDBClient, faults: DynamoFaults) -> None:
    repo = JobsRepository(ddb, JOBS_TABLE)
    job, _ = repo.create(make_job())
    fault = faults.add(conflict("SET #s = :target", job_id=job.job_id))
    assert repo.transition(job.job_id, JobStatus.CANCELLED, tenant=TENANT).status == JobStatus.CANCELLED
    assert fault.hits == 1


@pytest.mark.parametrize(
    ("pk", "field", "write"),
    [
        (RATE_PK, "hits", lambda ddb: RateLimiter(ddb, JOBS_TABLE).hit(TENANT, limit=5, window_s=WINDOW_S, now=NOW)),
        (BUDGET_PK, "used", lambda ddb: DailyGpuBudget(ddb, JOBS_TABLE).charge(TENANT, 1, budget=9, now=NOW)),
    ],
)
def test_a_conflict_that_outlasts_every_pause_is_raised_and_counts_nothing(
    ddb: DynamoDBClient, faults: DynamoFaults, pk: str, field: str, write: Callable[[DynamoDBClient], object]
) -> None:
    fault = faults.add(conflict("ADD", pk=pk, times=100))
    with pytest.raises(ClientError, match="TransactionConflict"):
        write(ddb)
    assert fault.hits == len(CONFLICT_PAUSES_S) + 1
    assert counted(ddb, pk, field) == 0
