"""Queue position and ETA on the local stack: real HTTP, a real worker process (tiny model on CPU), a controlled
backlog. Position and ETA must fall as the jobs ahead finish, and the ETA must land within a stated error of the
real wait.

The bound: every answer's ETA within 8 s or 75% of the real wait (whichever is larger), and the median error
within 3 s. It is for a 2-core machine shared with other work: the worker's batches are timed on that CPU, so a
neighbour's load stretches or shrinks them after the rate was measured (batches of the same shape took 1.6 to 5.3
s in one run at load average 10). Measured on 2026-12-06 at load average 6-12: at most 6.2 s off (59% of a
10.5 s wait, the first answer after the backlog formed), medians under 1 s. ``-s`` prints each answer's error.
"""

from __future__ import annotations

import itertools
import signal
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from cli.client import SdqClient
from tests.integration.conftest import RunningService, start_service, stop_service

WORKER_ENV = {
    "SDQ_MAX_BATCH_IMAGES": "2",
    "SDQ_MAX_BATCH_WAIT_MS": "300",
    "SDQ_RECEIVE_WAIT_S": "1",
    "SDQ_VISIBILITY_TIMEOUT_S": "30",
    "SDQ_HEARTBEAT_S": "5",
    "SDQ_PROGRESS_INTERVAL_S": "1",
}
SHAPE = {"width": 256, "height": 256, "num_inference_steps": 16}
BACKLOG = 12  # one-image jobs ahead of the watched one: 6 batches of 2, plus the watched job's own batch
ETA_ERROR_S = 8.0  # |claimed - (asked at + eta_s)|, or this fraction of the real wait if that is larger
ETA_ERROR_FRACTION = 0.75
MEDIAN_ERROR_S = 3.0  # over all the answers


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    running = start_service(tmp_path_factory.mktemp("sdq-queue"), {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "100"})
    yield running
    stop_service(running)


@dataclass(frozen=True)
class Sample:
    asked_at: float
    status: str
    queue: dict[str, Any] | None


def wait_for(client: SdqClient, ids: list[str], status: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(client.get(i)["status"] == status for i in ids):
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {status}: {[client.get(i)['status'] for i in ids]}")


def claimed_at(view: dict[str, Any]) -> float:
    """When the job was claimed (turned RUNNING), as epoch seconds."""
    created = datetime.fromisoformat(view["created_at"]).timestamp()
    return float(created + view["timings"]["queued_s"])


def test_position_and_eta_fall_with_the_backlog_and_the_eta_meets_the_real_wait(service: RunningService) -> None:
    client = service.new_tenant("queue-me")
    other = service.new_tenant("queue-other")
    submit = {"prompt": "a red fox", **SHAPE}

    # No worker yet, and on the local stack none starts on its own (no fleet scales up here).
    first = client.submit(submit)["id"]
    queue = client.get(first)["queue"]
    assert queue["position"] == 1
    assert queue["workers"] == 0
    assert queue["eta_s"] is None
    assert queue["reason"].startswith("No worker is running, and none starts on its own")

    # A worker starts and measures the shape on a few batches.
    worker = service.start_worker(env=WORKER_ENV)
    # Three batches: a shape's first batch is a warm-up the rate does not keep.
    warm = [first, *(client.submit(submit)["id"] for _ in range(5))]
    wait_for(client, warm, "SUCCEEDED", timeout_s=240)
    assert client.get(first)["queue"] is None  # finished jobs carry none

    # The backlog: jobs of two tenants ahead of the watched one, submitted while the (idle) worker is paused, so
    # that all of them are queued when it resumes.
    worker.send_signal(signal.SIGSTOP)
    try:
        for i in range(BACKLOG):
            (client if i % 2 else other).submit(submit)
        watched = client.submit(submit)["id"]
        paused = client.get(watched)["queue"]
    finally:
        worker.send_signal(signal.SIGCONT)
    assert (paused["position"], paused["images_ahead"]) == (BACKLOG + 1, BACKLOG)
    assert paused["reason"].startswith(
        f"Waiting for {BACKLOG} jobs ({BACKLOG // 2} of them yours) with {BACKLOG} images"
    )
    samples: list[Sample] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        asked = time.time()
        view = client.get(watched)
        samples.append(Sample(asked, view["status"], view["queue"]))
        if view["status"] != "QUEUED":
            break
        time.sleep(0.4)
    assert worker.poll() is None, "the worker died"
    start = claimed_at(client.get(watched))

    queued = [s for s in samples if s.status == "QUEUED" and s.queue is not None]
    assert len(queued) >= 3, samples
    positions = [s.queue["position"] for s in queued]  # type: ignore[index]
    etas = [s.queue["eta_s"] for s in queued]  # type: ignore[index]
    assert all(s.queue is not None and s.queue["images_ahead"] == s.queue["position"] - 1 for s in queued)
    assert all(s.queue is not None and s.queue["workers"] == 1 for s in queued)
    # Falling: never up (index reads are eventually consistent, locally exact), and down by the end.
    assert all(b <= a for a, b in itertools.pairwise(positions)), positions
    assert positions[-1] < positions[0]
    assert all(e is not None for e in etas), etas
    assert etas[-1] < etas[0], etas

    errors = []
    for s in queued:
        assert s.queue is not None
        predicted = s.asked_at + s.queue["eta_s"]
        real_wait = start - s.asked_at
        errors.append((round(real_wait, 2), round(s.queue["eta_s"], 2), round(predicted - start, 2)))
    print(f"\nqueue ETA (real wait s, eta s, error s) for {len(errors)} answers: {errors}")
    print(f"positions: {positions}")
    worst = [e for e in errors if abs(e[2]) > max(ETA_ERROR_S, ETA_ERROR_FRACTION * e[0])]
    assert not worst, f"ETA off by more than the bound: {worst} of {errors}"
    assert statistics.median(abs(e[2]) for e in errors) <= MEDIAN_ERROR_S, errors
