"""A batch's progress writes and previews take one lane: the job's recorded step never goes backwards."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, cast

import boto3

from shared.jobs import JobsRepository
from shared.media import MediaStore
from tests.unit.workerfakes import claimed, held
from workflows.generation.previews import Captured
from workflows.generation.progress import ProgressRecorder
from workflows.generation.progressevents import ProgressEvents


class HeldTasks(Executor):
    """Writer threads that have not run yet: each submitted task waits until the test finishes it."""

    def __init__(self) -> None:
        self.tasks: list[tuple[str, Future[Any]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.tasks.append((getattr(fn, "__name__", repr(fn)), future))
        return future

    def names(self) -> list[str]:
        return [name for name, _ in self.tasks]

    def finish_last(self) -> None:
        self.tasks[-1][1].set_result(None)


def test_a_progress_write_waits_for_the_preview_in_flight_and_a_preview_for_the_write() -> None:
    """A preview of step 10 (an encode and an upload) that landed after the write of step 12 would set the job's
    progress back to 10: neither is started while the other is in flight."""
    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    repo = JobsRepository(dynamodb, "unused")  # never called: the writer threads never run here
    writers = HeldTasks()
    recorder = ProgressRecorder(
        repo,
        worker_id="w",
        interval_s=0.0,
        hard_stop=threading.Event(),
        writers=writers,
        table_pool=writers,
        events=ProgressEvents(
            MediaStore(boto3.client("s3", region_name="us-east-1"), "unused"),
            repo,
            outputs_prefix="outputs/",
            preview_interval_s=0.0,
        ),
    )
    step_callback = recorder.writer([claimed(held())])
    latents = cast(Captured, object())  # handed to the preview task, which never runs here

    step_callback(1, 30)
    assert writers.names() == ["_write"]
    assert not step_callback.wants_latents(4, 30)  # the write of step 1 is in flight
    writers.finish_last()
    assert step_callback.wants_latents(4, 30)
    step_callback.take_latents(4, 30, latents)
    assert writers.names() == ["_write", "_preview"]
    step_callback(5, 30)
    step_callback(6, 30)
    assert writers.names() == ["_write", "_preview"]  # no write while the preview of step 4 is in flight
    writers.finish_last()
    step_callback(7, 30)
    assert writers.names() == ["_write", "_preview", "_write"]
