"""The finished-job metrics of the repository the Lambdas and the worker use: one EMF line per job that a write
of theirs finished, none for a write that did not land or did not finish the job."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from shared.contracts import JobError, JobStatus
from shared.errors import InvalidTransition
from tests.unit.conftest import JOBS_TABLE, TENANT, make_job
from workflows.jobmetrics import MeteredJobsRepository, record_marked

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


def finished(out: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]
    return [line for line in lines if "JobsFinished" in line]


def test_a_terminal_write_is_counted_once_and_a_refused_one_not_at_all(
    jobs_table: DynamoDBClient, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = MeteredJobsRepository(jobs_table, JOBS_TABLE)
    job, _ = repo.create(make_job())
    repo.transition(job.job_id, JobStatus.RUNNING, tenant=TENANT)
    assert finished(capsys.readouterr().out) == []  # created QUEUED, then RUNNING: not finished

    failed = repo.transition(job.job_id, JobStatus.FAILED, tenant=TENANT, error=JobError(code="X", message="x"))
    with pytest.raises(InvalidTransition):  # a second writer (a retried dead letter, a cancel) finds it final
        repo.transition(job.job_id, JobStatus.CANCELLED, tenant=TENANT)
    [line] = finished(capsys.readouterr().out)
    assert (line["status"], line["service"], line["job_id"]) == ("FAILED", "jobs", job.job_id)
    # What the runbook groups failures by, and whose they were: properties, not dimensions (one alarm series).
    assert (line["error_code"], line["tenant"]) == ("X", TENANT)
    assert line["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["status", "service"]]
    assert failed.finished_at is not None
    assert line["JobLatency"] == [pytest.approx((failed.finished_at - failed.created_at).total_seconds())]


def test_a_job_stored_finished_is_counted_when_it_is_created(
    jobs_table: DynamoDBClient, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = MeteredJobsRepository(jobs_table, JOBS_TABLE)
    answered = make_job(JobStatus.SUCCEEDED)  # a result-cache hit: answered at submit
    answered = answered.model_copy(update={"finished_at": answered.created_at})
    repo.create(answered)
    [line] = finished(capsys.readouterr().out)
    assert (line["status"], line["JobLatency"]) == ("SUCCEEDED", [0.0])
    assert line["tenant"] == TENANT
    assert "error_code" not in line


def test_the_state_machines_count_reads_the_marks_times(capsys: pytest.CaptureFixture[str]) -> None:
    assert record_marked(
        {
            "job_id": "01J",
            "status": "SUCCEEDED",
            "created_at": "2026-12-06T10:00:00.250000+00:00",  # as the repository stores it
            "finished_at": "2026-12-06T10:00:42.750Z",  # $$.State.EnteredTime, as MarkSucceeded writes it
        }
    ) == {"counted": "SUCCEEDED"}
    [line] = finished(capsys.readouterr().out)
    assert (line["job_id"], line["JobsFinished"], line["JobLatency"]) == ("01J", [1.0], [42.5])
    assert "tenant" not in line  # the payload names neither
    assert "error_code" not in line


def test_the_state_machines_count_of_a_failure_carries_what_its_payload_names(
    capsys: pytest.CaptureFixture[str],
) -> None:
    record_marked(
        {
            "job_id": "01J",
            "status": "FAILED",
            "tenant": "acme",
            "error_code": "OUT_OF_MEMORY",
            "created_at": "2026-12-06T10:00:00+00:00",
            "finished_at": "2026-12-06T10:00:05Z",
        }
    )
    [line] = finished(capsys.readouterr().out)
    assert (line["status"], line["tenant"], line["error_code"]) == ("FAILED", "acme", "OUT_OF_MEMORY")
