"""The job as clients see it (workflows/jobview.py)."""

from __future__ import annotations

import boto3
from moto import mock_aws

from shared.contracts import Job, JobStatus, Progress
from shared.media import MediaStore
from tests.unit.conftest import make_job
from workflows.jobview import job_view


def job_at(status: JobStatus, step: int, total: int) -> Job:
    return make_job(status, request={"num_inference_steps": total}, progress=Progress(step=step, total=total))


def test_a_succeeded_job_shows_every_step_done_and_a_running_one_its_last_written_step() -> None:
    with mock_aws():
        media = MediaStore(boto3.client("s3", region_name="us-east-1"), "media")
        done = job_view(job_at(JobStatus.SUCCEEDED, 6, 8), media, 60).progress
        running = job_view(job_at(JobStatus.RUNNING, 6, 8), media, 60).progress
        failed = job_view(job_at(JobStatus.FAILED, 6, 8), media, 60).progress
    assert (done.step, done.total) == (8, 8)
    assert (running.step, running.total) == (6, 8)
    assert (failed.step, failed.total) == (6, 8)
