"""Starting a cancel's webhook execution: retried briefly, never raised to the request that cancelled."""

from __future__ import annotations

from typing import Any, cast

from botocore.exceptions import ClientError
from ulid import ULID

from shared.contracts import GenerationRequest, Job, JobStatus, utcnow
from shared.orchestration import Orchestrator
from workflows.webhooks import start_notice_retrying


class FlakyOrchestrator:
    """Fails its first ``failures`` starts the way boto3 does, then starts."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.names: list[str] = []

    def start(self, name: str, payload: dict[str, Any]) -> str:
        self.names.append(name)
        if len(self.names) <= self.failures:
            raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "down"}}, "StartExecution")
        return f"arn:aws:states:us-east-1:000000000000:execution:sm:{name}"


def cancelled_job() -> Job:
    request = GenerationRequest.model_validate(
        {"prompt": "fox", "callback_url": "https://hooks.example.com/x"}, context={"trusted": True}
    )
    return Job(
        job_id=str(ULID()),
        tenant="t",
        status=JobStatus.CANCELLED,
        request=request,
        created_at=utcnow(),
        cache_key="k",
        expires_at=2**31,
    )


def test_a_failed_start_is_retried_after_a_short_pause() -> None:
    orchestrator, pauses = FlakyOrchestrator(failures=2), list[float]()
    arn = start_notice_retrying(cast("Orchestrator", orchestrator), cancelled_job(), "cancelled", sleep=pauses.append)
    assert arn is not None
    assert arn.endswith(orchestrator.names[-1])
    assert len(orchestrator.names) == 3
    assert pauses == [0.1, 0.2]


def test_a_start_that_keeps_failing_returns_none_instead_of_raising() -> None:
    orchestrator, pauses = FlakyOrchestrator(failures=99), list[float]()
    arn = start_notice_retrying(cast("Orchestrator", orchestrator), cancelled_job(), "cancelled", sleep=pauses.append)
    assert arn is None
    assert len(orchestrator.names) == 3
    assert pauses == [0.1, 0.2]


def test_a_notice_started_once_by_name_retries_under_that_one_name() -> None:
    """An abandoned job's `job.failed` notice: a retried start whose first try did land (its answer lost) must
    find the same execution, not start a second webhook."""
    orchestrator, pauses = FlakyOrchestrator(failures=2), list[float]()
    job = cancelled_job().model_copy(update={"status": JobStatus.FAILED})
    arn = start_notice_retrying(cast("Orchestrator", orchestrator), job, "failed", sleep=pauses.append, once=True)
    assert arn is not None
    assert orchestrator.names == [f"{job.job_id}-failed"] * 3
