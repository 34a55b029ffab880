"""A newer server's answers: values of the API's enumerations this client does not know yet (a new job status,
scheduler, priority, webhook state, audit action) reach the caller as strings instead of failing the call, and
the values it knows stay typed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sdq_client import AsyncClient, AuditAction, AuditOutcome, Client, JobStatus, Priority, WaitTimeout

from tests.client.fakeapi import FakeApi, Reply, job_body, running

NEW_REQUEST = {"scheduler": "heun", "output_format": "avif", "priority": "urgent", "webhook_events": ["queued"]}


def newer_job(job_id: str, status: str, *, finished: bool) -> dict[str, Any]:
    job = job_body(job_id, "RUNNING", request=NEW_REQUEST)
    webhook = {"event": "job.archived", "webhook_id": "msg_1", "state": "paused", "attempts": 1}
    return job | {"status": status, "finished_at": job["created_at"] if finished else None, "webhook": webhook}


def audit_entry(action: str, outcome: str) -> dict[str, Any]:
    at = datetime.now(UTC).isoformat()
    return {"id": f"a-{action}", "at": at, "tenant": "t", "action": action, "outcome": outcome}


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with running() as fake:
        fake.jobs = {
            "01KAXNEW00000000000000000A": newer_job("01KAXNEW00000000000000000A", "ARCHIVED", finished=True),
            "01KAXNEW00000000000000000B": newer_job("01KAXNEW00000000000000000B", "PREPROCESSING", finished=False),
            "01KAXOLD00000000000000000C": job_body("01KAXOLD00000000000000000C", "SUCCEEDED"),
        }
        fake.gets_until_done = None
        entries = [audit_entry("job.submit", "accepted"), audit_entry("key.rotate", "deferred")]
        fake.route("GET", "/v1/audit", lambda _: Reply(200, {"entries": entries, "next_cursor": None}))
        yield fake


def test_list_and_get_read_values_this_client_does_not_know(api: FakeApi) -> None:
    with Client(api.url, "key") as client:
        jobs = {job.id: job for job in client.iter_jobs()}
        assert len(client.list().jobs) == 3
        archived = client.get("01KAXNEW00000000000000000A")
    new, old = jobs["01KAXNEW00000000000000000B"], jobs["01KAXOLD00000000000000000C"]
    assert (new.status, new.request.scheduler, new.request.output_format) == ("PREPROCESSING", "heun", "avif")
    assert (new.request.priority, new.request.webhook_events) == ("urgent", ["queued"])
    assert new.webhook is not None
    assert new.webhook.state == "paused"
    assert old.status is JobStatus.SUCCEEDED  # a known value is still the enum member
    assert old.request.priority is Priority.NORMAL
    assert old.request.scheduler == "euler_a"
    # A status this client does not know is finished once the job has finished_at, as every finished job has.
    assert archived.status == "ARCHIVED"
    assert archived.finished
    assert not new.finished
    assert old.finished


def test_wait_ends_on_an_unknown_status_only_once_the_job_has_finished(api: FakeApi) -> None:
    with Client(api.url, "key") as client:
        assert client.wait("01KAXNEW00000000000000000A", timeout=5).status == "ARCHIVED"
        with pytest.raises(WaitTimeout) as timed_out:
            client.wait("01KAXNEW00000000000000000B", timeout=1)
    assert timed_out.value.job.status == "PREPROCESSING"


def test_the_audit_log_reads_new_actions_and_outcomes(api: FakeApi) -> None:
    with Client(api.url, "key") as client:
        entries = list(client.iter_audit())
    assert [(e.action, e.outcome) for e in entries] == [("job.submit", "accepted"), ("key.rotate", "deferred")]
    assert entries[0].action is AuditAction.JOB_SUBMIT
    assert entries[0].outcome is AuditOutcome.ACCEPTED


def test_a_stream_reads_a_new_status_and_ends_when_the_job_has_finished(api: FakeApi) -> None:
    job_id = "01KAXNEW00000000000000000A"
    event = {"type": "job.archived", "timestamp": datetime.now(UTC).isoformat(), "data": api.jobs[job_id]}
    frame = f"event: job.archived\nid: 1\ndata: {json.dumps(event)}\n\n".encode()
    api.route("GET", f"/v1/jobs/{job_id}/events", lambda _: Reply(200, frame, {"Content-Type": "text/event-stream"}))

    async def read() -> list[Any]:
        async with AsyncClient(api.url, "key") as client:
            return [e.data.status async for e in client.stream(job_id)]

    with Client(api.url, "key") as client:
        assert [e.data.status for e in client.stream(job_id)] == ["ARCHIVED"]
    assert asyncio.run(read()) == ["ARCHIVED"]
