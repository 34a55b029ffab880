"""Driving the state machine the way the worker's hand-off does, for the tests of the real ASL."""

from __future__ import annotations

import io
import json
import time
from typing import Any

from PIL import Image

from shared.contracts import Job, WorkflowInput
from shared.jobs import JobsRepository
from tests.integration.conftest import RunningService, store_queued_job


class ExecutionHarness:
    """Jobs put in RUNNING through the repository's own claim, staged PNGs, one execution per job and attempt."""

    def __init__(self, *, repo: JobsRepository, s3: Any, sfn: Any, bucket: str, machine: str, tenant: str) -> None:
        self.repo = repo
        self.s3 = s3
        self.sfn = sfn
        self.bucket = bucket
        self.machine = machine
        self.tenant = tenant

    def running_job(self, callback_url: str | None, **fields: Any) -> Job:
        """A job as a worker leaves it just before the hand-off: RUNNING."""
        if callback_url:
            fields["callback_url"] = callback_url
        job = store_queued_job(self.repo, self.tenant, **fields)
        return self.repo.claim(job.job_id, self.tenant, worker_id="test", lease_s=60, now=time.time())

    def stage(self, job: Job, count: int = 1) -> list[str]:
        keys = []
        for i in range(count):
            buf = io.BytesIO()
            Image.new("RGB", (job.request.width, job.request.height), (200, 80 + i, 40)).save(buf, format="PNG")
            key = f"staging/{job.job_id}/{job.attempt}/{i}.png"
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=buf.getvalue())
            keys.append(key)
        return keys

    def start(self, job: Job, keys: list[str], **extra: Any) -> str:
        payload = {
            "job_id": job.job_id,
            "tenant": job.tenant,
            "attempt": job.attempt,
            "staging_keys": keys,
            "has_callback": job.request.wants_webhook("completed"),  # as the worker sets it
            **extra,
        }
        # The contract's fields in the shape the worker sends them, checked; a test's own marker passes as it is.
        known = {k: v for k, v in payload.items() if k in WorkflowInput.model_fields}
        body = {**payload, **WorkflowInput.model_validate(known).payload()}
        arn = self.sfn.start_execution(
            stateMachineArn=self.machine, name=f"{job.job_id}-{job.attempt}", input=json.dumps(body)
        )["executionArn"]
        return str(arn)

    def wait(self, arn: str, timeout_s: float = 120) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = str(self.sfn.describe_execution(executionArn=arn)["status"])
            if status != "RUNNING":
                return status
            time.sleep(0.3)
        raise AssertionError(f"execution {arn} still running after {timeout_s}s")

    def entered_states(self, arn: str) -> list[str]:
        events = self.sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
        return [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]


class ServiceHarness(ExecutionHarness):
    """The harness on a running local stack: its clients, bucket and state machine."""

    def __init__(self, service: RunningService, tenant: str) -> None:
        super().__init__(
            repo=JobsRepository(service.boto("dynamodb"), service.table),
            s3=service.boto("s3"),
            sfn=service.boto("stepfunctions"),
            bucket=service.env["SDQ_BUCKET"],
            machine=service.env["SDQ_STATE_MACHINE_ARN"],
            tenant=tenant,
        )
        self.service = service
