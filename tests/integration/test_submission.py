"""The submission workflow against the local cloud when the queue cannot take the message."""

from __future__ import annotations

import pytest

from shared.contracts import GenerationRequest, JobStatus
from shared.errors import EnqueueFailed
from shared.jobs import JobsRepository
from shared.queue import JobQueue
from shared.settings import Settings
from tests.integration.conftest import RunningService
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
