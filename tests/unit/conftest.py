"""Shared fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from moto import mock_aws
from ulid import ULID

from localcloud.provision import load_sam_template
from shared.contracts import GenerationRequest, Job, JobStatus, utcnow
from shared.settings import get_settings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

JOBS_TABLE = "jobs"
REPO = Path(__file__).resolve().parents[2]
TENANT = "t-1"


def make_job(
    status: JobStatus = JobStatus.QUEUED, *, tenant: str = TENANT, request: dict[str, Any] | None = None, **fields: Any
) -> Job:
    """A job record as the submit path stores one (a fresh id, a day's retention): ``request`` adds to a minimal
    request (accepted as trusted, so tests may use loopback callbacks), ``fields`` set the record's own fields."""
    body = {"prompt": "a lighthouse", **(request or {})}
    req = GenerationRequest.model_validate(body, context={"trusted": True})
    now = utcnow()
    return Job(
        job_id=str(ULID()),
        tenant=tenant,
        status=status,
        request=req,
        created_at=now,
        cache_key=req.cache_key(),
        expires_at=int((now + timedelta(days=1)).timestamp()),
        **fields,
    )


class FakeClock:
    """Time that moves only when the code under test sleeps (forward: a zero pause would be a busy loop)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.pauses.append(seconds)
        self.now += seconds


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the built-in ``tiny`` model, saved once per session and reloaded by each test module."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(autouse=True)
def settings_read_per_test() -> Iterator[None]:
    """Settings are read once per process; each test reads them afresh, after its own environment changes."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def table_from_template(monkeypatch: pytest.MonkeyPatch, resource: str, name: str) -> Iterator[DynamoDBClient]:
    """An in-memory DynamoDB (moto, in process) with a table ``name`` keyed and indexed as template.yaml declares
    its ``resource``: for the adapters' writes and queries without the local cloud."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    props: dict[str, Any] = load_sam_template(REPO / "template.yaml")["Resources"][resource]["Properties"]
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName=name,
            KeySchema=props["KeySchema"],
            AttributeDefinitions=props["AttributeDefinitions"],
            GlobalSecondaryIndexes=props["GlobalSecondaryIndexes"],
            BillingMode="PAY_PER_REQUEST",
        )
        yield client


@pytest.fixture
def jobs_table(monkeypatch: pytest.MonkeyPatch) -> Iterator[DynamoDBClient]:
    """The jobs table (``JOBS_TABLE``), as template.yaml declares it."""
    yield from table_from_template(monkeypatch, "JobsTable", JOBS_TABLE)
