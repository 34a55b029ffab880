"""``GET /v1/jobs`` pages stay inside what a Lambda function may answer (6 MB): a page whose jobs' views would pass
the byte budget is cut short, and its cursor continues right after the last job shown, through the same index,
so a client walking the pages sees every job once. Real repository and presigning on moto."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import boto3
import pytest

from shared.contracts import Job, JobStatus, JobView
from shared.jobs import JobsRepository
from shared.media import MediaStore
from tests.unit.conftest import JOBS_TABLE, make_job
from workflows import jobview
from workflows.jobview import job_list, job_view

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


def walk(repo: JobsRepository, view: object, status: JobStatus | None) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = repo.list_for_tenant("t-big", status=status, limit=100, cursor=cursor)
        shown = job_list(page, view, status)  # type: ignore[arg-type]
        pages.append([v.id for v in shown.jobs])
        body = len(json.dumps(shown.model_dump(mode="json")))
        assert body <= jobview.LIST_BODY_BUDGET + 200 or len(shown.jobs) == 1
        cursor = shown.next_cursor
        if cursor is None:
            return pages


@pytest.mark.parametrize("status", [None, JobStatus.QUEUED])
def test_a_page_too_big_to_answer_is_cut_and_its_cursor_loses_no_job(
    jobs_table: DynamoDBClient, monkeypatch: pytest.MonkeyPatch, status: JobStatus | None
) -> None:
    repo = JobsRepository(jobs_table, JOBS_TABLE)
    media = MediaStore(boto3.client("s3", region_name="us-east-1"), "media")
    prompt = "a lighthouse in a storm, " + "\U0001f30a" * 900  # escaped as 12 bytes a wave in the answer
    jobs: list[Job] = [repo.create(make_job(tenant="t-big", request={"prompt": prompt}))[0] for _ in range(7)]

    def view(job: Job) -> JobView:
        return job_view(job, media, 3600)

    one = len(json.dumps(view(jobs[0]).model_dump(mode="json")))
    monkeypatch.setattr(jobview, "LIST_BODY_BUDGET", int(one * 2.5))
    pages = walk(repo, view, status)
    newest_first = [j.job_id for j in reversed(jobs)]
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert [i for p in pages for i in p] == newest_first
    # Under the budget the page is the listing's own, as before.
    monkeypatch.setattr(jobview, "LIST_BODY_BUDGET", 4_000_000)
    assert walk(repo, view, status) == [newest_first]
