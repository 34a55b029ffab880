"""A ``wait()``/``run()`` timeout bounds every request made for it: against an API that takes a request and never
answers, the call ends with WaitTimeout at its timeout, not with httpx's timeout after the client's own (30 s a
try). Against a scripted API on loopback (tests/client/fakeapi.py): real HTTP, a server that holds the answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
from sdq_client import AsyncClient, Client, JobStatus, WaitTimeout

from tests.client.fakeapi import FakeApi, Reply, Seen, Slow, running

HUNG = Slow(20.0)  # far past every timeout a test here sets: the answer never comes in time


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with running() as fake:
        yield fake


def timed_out(call: Callable[[], object]) -> tuple[WaitTimeout, float]:
    """The WaitTimeout ``call()`` raised (a coroutine is run), and how long it took."""

    def run() -> None:
        result = call()
        if asyncio.iscoroutine(result):
            asyncio.run(result)

    started = time.monotonic()
    with pytest.raises(WaitTimeout) as raised:
        run()
    return raised.value, time.monotonic() - started


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_wait_whose_api_never_answers_ends_at_its_timeout(api: FakeApi, kind: str) -> None:
    job_id = api.add_job("RUNNING")
    api.fault("GET", "/v1/jobs/", HUNG, times=100)

    def call() -> object:
        with Client(api.url, "key") as client:  # 30 s a request: the deadline is shorter
            return client.wait(job_id, timeout=1.5)

    async def acall() -> object:
        async with AsyncClient(api.url, "key") as client:
            return await client.wait(job_id, timeout=1.5)

    error, took = timed_out(call if kind == "sync" else acall)
    assert took < 4
    assert error.job is None  # no answer came: no job was seen
    assert error.timeout_s == 1.5


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_run_whose_polls_get_no_answer_ends_at_its_timeout_with_the_job_as_last_seen(api: FakeApi, kind: str) -> None:
    api.fault("GET", "/v1/jobs/", HUNG, times=100)  # the submit is answered; every poll is held

    def call() -> object:
        with Client(api.url, "key") as client:
            return client.run({"prompt": "a fox"}, timeout=2)

    async def acall() -> object:
        async with AsyncClient(api.url, "key") as client:
            return await client.run({"prompt": "a fox"}, timeout=2)

    error, took = timed_out(call if kind == "sync" else acall)
    assert took < 4.5
    (job_id,) = api.jobs
    assert error.job.id == job_id
    assert error.job.status is JobStatus.QUEUED


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_run_whose_submit_gets_no_answer_ends_at_its_timeout(api: FakeApi, kind: str) -> None:
    api.fault("POST", "/v1/jobs", HUNG, times=100)

    def call() -> object:
        with Client(api.url, "key") as client:
            return client.run({"prompt": "a fox"}, timeout=1.5, idempotency_key="order-1")

    async def acall() -> object:
        async with AsyncClient(api.url, "key") as client:
            return await client.run({"prompt": "a fox"}, timeout=1.5, idempotency_key="order-1")

    error, took = timed_out(call if kind == "sync" else acall)
    assert took < 4
    assert error.job is None  # the job may have been made: its key's replay answers with it
    assert {s.headers["idempotency-key"] for s in api.requests("POST")} == {"order-1"}


def test_a_wait_asks_the_api_to_answer_before_its_deadline(api: FakeApi) -> None:
    """The API holds a `Prefer: wait` answer for the seconds asked: a wait asks for no more than the time left less
    a margin, so the held answer (the job as last seen) comes back before the deadline cuts the request."""
    job_id = api.add_job("RUNNING")

    def held(seen: Seen) -> Reply:  # as the API does: the answer held for the wait asked (the job stays RUNNING)
        asked = int(seen.headers.get("prefer", "wait=0").partition("=")[2])
        time.sleep(asked)
        applied = {"Preference-Applied": f"wait={asked}"} if asked else {}
        return Reply(200, api.jobs[job_id], {"Retry-After": "1", **applied})

    api.route("GET", f"/v1/jobs/{job_id}", held)
    started = time.monotonic()
    with Client(api.url, "key") as client, pytest.raises(WaitTimeout) as raised:
        client.wait(job_id, timeout=3)
    assert time.monotonic() - started < 4
    assert api.requests("GET")[0].headers["prefer"] == "wait=2"  # 3 s left: held 2 s at most
    assert raised.value.job.id == job_id  # the held answer came back in time


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stream_whose_api_never_answers_ends_soon_after_its_timeout(api: FakeApi, kind: str) -> None:
    """The stream's own reads end at its timeout; the job it then asks for (none of its events came) is asked for a
    few seconds at most, not the client's retries of 30 s each."""
    job_id = api.add_job("RUNNING")
    api.fault("GET", "/v1/jobs/", HUNG, times=100)  # the event stream and the job's GET alike

    def call() -> object:
        with Client(api.url, "key") as client:
            return list(client.stream(job_id, timeout=1))

    async def acall() -> object:
        async with AsyncClient(api.url, "key") as client:
            return [event async for event in client.stream(job_id, timeout=1)]

    error, took = timed_out(call if kind == "sync" else acall)
    assert took < 8
    assert error.job is None
