"""The wait behind ``Prefer: wait``: re-reads with backoff until the job is terminal or the deadline passes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from shared.contracts import Job, JobStatus
from shared.errors import JobNotFound
from tests.unit.conftest import FakeClock, make_job
from workflows.waiting import MAX_WAIT_S, Backoff, max_reads, wait_until_finished


def reader(statuses: list[JobStatus], base: Job) -> tuple[list[int], Callable[[], Job]]:
    calls: list[int] = []

    def read() -> Job:
        calls.append(1)
        return base.model_copy(update={"status": statuses[min(len(calls), len(statuses)) - 1]})

    return calls, read


def test_returns_as_soon_as_a_read_finds_the_job_terminal() -> None:
    clock = FakeClock()
    first = make_job()
    calls, read = reader([JobStatus.RUNNING, JobStatus.POSTPROCESSING, JobStatus.SUCCEEDED], first)
    waited = wait_until_finished(first, read, deadline=clock() + 25, clock=clock, sleep=clock.sleep)
    assert waited.finished
    assert waited.job.status is JobStatus.SUCCEEDED
    assert waited.reads == len(calls) == 3
    assert clock.pauses == [0.25, 0.5, 1.0]
    assert waited.waited_s == pytest.approx(1.75)


def test_a_terminal_job_or_a_past_deadline_costs_no_read() -> None:
    clock = FakeClock()
    calls, read = reader([JobStatus.RUNNING], make_job())
    done = wait_until_finished(
        make_job(JobStatus.CANCELLED), read, deadline=clock() + 25, clock=clock, sleep=clock.sleep
    )
    late = wait_until_finished(make_job(), read, deadline=clock() - 1, clock=clock, sleep=clock.sleep)
    assert done.reads == late.reads == 0
    assert not calls
    assert not clock.pauses
    assert done.finished
    assert not late.finished


def test_an_unfinished_job_is_read_once_more_at_the_deadline_and_no_later() -> None:
    clock = FakeClock()
    calls, read = reader([JobStatus.RUNNING], make_job())
    waited = wait_until_finished(make_job(), read, deadline=clock() + 3.6, clock=clock, sleep=clock.sleep)
    assert not waited.finished
    assert waited.job.status is JobStatus.RUNNING
    # 0.25 + 0.5 + 1 + 1 + 0.85: the backoff caps at 1 s and the last pause is cut to the deadline.
    assert clock.pauses == pytest.approx([0.25, 0.5, 1.0, 1.0, 0.85])
    assert clock.now == pytest.approx(103.6)
    assert waited.reads == len(calls) == 5 == max_reads(3.6)


def test_the_longest_wait_makes_a_bounded_number_of_reads() -> None:
    clock = FakeClock()
    calls, read = reader([JobStatus.QUEUED], make_job())
    waited = wait_until_finished(make_job(), read, deadline=clock() + MAX_WAIT_S, clock=clock, sleep=clock.sleep)
    assert waited.reads == len(calls) == max_reads(MAX_WAIT_S) == 27  # docs/api.md quotes this number
    assert clock.now == pytest.approx(100 + MAX_WAIT_S)
    assert MAX_WAIT_S <= 25  # API Gateway's 29 s must hold the wait and the request's own work


def test_a_custom_backoff_is_followed() -> None:
    clock = FakeClock()
    _, read = reader([JobStatus.QUEUED], make_job())
    backoff = Backoff(first_s=0.1, factor=3, max_s=0.5)
    wait_until_finished(make_job(), read, deadline=clock() + 1.5, clock=clock, sleep=clock.sleep, backoff=backoff)
    assert clock.pauses == pytest.approx([0.1, 0.3, 0.5, 0.5, 0.1])


def test_a_job_gone_meanwhile_raises_what_the_read_raises() -> None:
    clock = FakeClock()
    first = make_job()

    def read() -> Job:
        raise JobNotFound(first.job_id)

    with pytest.raises(JobNotFound):
        wait_until_finished(first, read, deadline=clock() + 5, clock=clock, sleep=clock.sleep)
