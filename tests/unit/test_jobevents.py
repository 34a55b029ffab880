"""A job's events from the stored job: which event, its id and order, the SSE stream with backoff, heartbeats,
resume and its end."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import boto3
import pytest

from shared.contracts import Job, JobStatus, JobView, Progress
from shared.errors import JobNotFound
from shared.media import MediaStore
from tests.unit.conftest import FakeClock, make_job
from workflows import jobevents
from workflows.jobevents import current_event, is_newer, snapshot, stream
from workflows.jobview import job_view
from workflows.waiting import Backoff


def job(status: JobStatus = JobStatus.QUEUED, step: int = 0, total: int = 0, attempt: int = 0) -> Job:
    return make_job(status, request={"seed": 1}, attempt=attempt, progress=Progress(step=step, total=total))


MEDIA = MediaStore(
    boto3.client("s3", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"),
    "media",
)


def view(current: Job) -> JobView:
    """The real job view (presigning needs no network)."""
    return job_view(current, MEDIA, 3600)


def frames(chunks: Iterator[bytes]) -> list[dict[str, str]]:
    """The stream's events (id, event, data) and comments, in order."""
    out: list[dict[str, str]] = []
    for chunk in chunks:
        for block in chunk.decode().split("\n\n"):
            if not block:
                continue
            fields: dict[str, str] = {}
            for line in block.split("\n"):
                name, _, value = line.partition(": " if not line.startswith("retry:") else ":")
                fields[name or "comment"] = value.strip()
            out.append(fields)
    return out


def states(*steps: tuple[JobStatus, int]) -> tuple[Job, Callable[[], Job], list[int]]:
    base = job(JobStatus.QUEUED, total=10, attempt=1)
    reads: list[int] = []

    def read() -> Job:
        reads.append(1)
        status, step = steps[min(len(reads), len(steps)) - 1]
        return base.model_copy(update={"status": status, "progress": Progress(step=step, total=10)})

    return base, read, reads


def test_each_stored_state_stands_for_one_event() -> None:
    assert current_event(job(JobStatus.QUEUED)) is None
    assert current_event(job(JobStatus.RUNNING, 0, 10, attempt=1)) == jobevents.JobEvent("job.started", "1.0")
    assert current_event(job(JobStatus.RUNNING, 4, 10, attempt=1)) == jobevents.JobEvent("job.progress", "1.4")
    assert current_event(job(JobStatus.POSTPROCESSING, 8, 10, attempt=2)) == jobevents.JobEvent("job.progress", "2.10")
    for status, event in jobevents.TERMINAL_EVENTS.items():
        assert current_event(job(status)) == jobevents.JobEvent(event, "final")


def test_ids_order_steps_attempts_and_the_end() -> None:
    assert is_newer("1.3", "1.2")
    assert not is_newer("1.2", "1.2")
    assert not is_newer("1.2", "1.10")
    assert is_newer("2.0", "1.99")  # a job taken over starts again, after the earlier attempt
    assert is_newer("final", "9.99")
    assert not is_newer("final", "final")
    assert is_newer("1.0", None)
    assert is_newer("1.0", "garbage")  # an id this stream did not give: start from the beginning


def test_the_stream_sends_each_new_state_once_and_ends_after_the_terminal_event() -> None:
    clock = FakeClock()
    base, read, reads = states(
        (JobStatus.QUEUED, 0),
        (JobStatus.RUNNING, 0),
        (JobStatus.RUNNING, 0),
        (JobStatus.RUNNING, 3),
        (JobStatus.RUNNING, 3),
        (JobStatus.RUNNING, 7),
        (JobStatus.POSTPROCESSING, 10),
        (JobStatus.SUCCEEDED, 10),
    )
    out = frames(stream(base, read, view, last_event_id=None, deadline=1e9, clock=clock, sleep=clock.sleep))
    assert out[0] == {"retry": str(jobevents.RECONNECT_MS)}
    events = [(f["id"], f["event"]) for f in out if "event" in f]
    assert events == [
        ("1.0", "job.started"),
        ("1.3", "job.progress"),
        ("1.7", "job.progress"),
        ("1.10", "job.progress"),
        ("final", "job.succeeded"),
    ]
    body = json.loads(out[-1]["data"])
    assert body["type"] == "job.succeeded"
    assert body["data"]["status"] == "SUCCEEDED"
    assert "webhook" not in body["data"]  # the same body as the webhook's
    assert len(reads) == 8  # one read per stored state: it stops at the terminal one


def test_resuming_skips_what_the_client_saw() -> None:
    clock = FakeClock()
    base, read, _ = states((JobStatus.RUNNING, 5), (JobStatus.RUNNING, 6), (JobStatus.FAILED, 6))
    first = base.model_copy(update={"status": JobStatus.RUNNING, "progress": Progress(step=5, total=10)})
    out = frames(stream(first, read, view, last_event_id="1.5", deadline=1e9, clock=clock, sleep=clock.sleep))
    assert [f["id"] for f in out if "event" in f] == ["1.6", "final"]
    done = base.model_copy(update={"status": JobStatus.CANCELLED})
    out = frames(stream(done, read, view, last_event_id="final", deadline=1e9, clock=clock, sleep=clock.sleep))
    assert [f for f in out if "event" in f] == []  # a client that saw the end gets nothing more, and no wait


def test_reads_back_off_while_nothing_changes_and_heartbeats_keep_the_connection() -> None:
    clock = FakeClock()
    base, read, reads = states(*([(JobStatus.QUEUED, 0)] * 40), (JobStatus.CANCELLED, 0))
    out = frames(
        stream(
            base,
            read,
            view,
            last_event_id=None,
            deadline=1e9,
            clock=clock,
            sleep=clock.sleep,
            backoff=Backoff(first_s=0.5, factor=1.5, max_s=3.0),
            heartbeat_s=15,
        )
    )
    assert clock.pauses[:3] == [0.5, 0.75, 1.125]
    assert max(clock.pauses) == 3.0
    assert len(reads) == 41
    heartbeats = [f for f in out if f.get("comment") == "keep-alive"]
    elapsed = clock.now - 100.0
    assert len(heartbeats) == pytest.approx(elapsed // 15, abs=1)
    assert out[-1]["event"] == "job.cancelled"


def test_the_stream_ends_at_its_deadline_with_a_reconnect_hint() -> None:
    clock = FakeClock()
    base, read, _ = states((JobStatus.QUEUED, 0))
    out = frames(stream(base, read, view, last_event_id=None, deadline=130.0, clock=clock, sleep=clock.sleep))
    assert "reconnect with Last-Event-ID" in out[-1]["comment"]
    assert clock.now == pytest.approx(130.0)


def test_a_job_that_vanishes_ends_the_stream() -> None:
    clock = FakeClock()
    base = job(JobStatus.QUEUED)

    def gone() -> Job:
        raise JobNotFound(base.job_id)

    out = frames(stream(base, gone, view, last_event_id=None, deadline=1e9, clock=clock, sleep=clock.sleep))
    assert "gone" in out[-1]["comment"]


def test_the_buffered_snapshot_is_the_current_event_when_it_is_newer() -> None:
    running = job(JobStatus.RUNNING, 4, 10, attempt=1)
    text = snapshot(running, view, None).decode()
    assert text.startswith(f"retry: {jobevents.RECONNECT_MS}\n\n")
    assert "id: 1.4\nevent: job.progress\n" in text
    assert "event:" not in snapshot(running, view, "1.4").decode()
    assert "event:" not in snapshot(job(JobStatus.QUEUED), view, None).decode()
