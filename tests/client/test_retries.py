"""What the client does when a request fails on the way (a lost answer, a timeout, a gateway's 502, a 429): it
tries again only what is safe to repeat (GETs, and a submit, which always carries an Idempotency-Key), a bounded
number of times, so one lost answer never makes a second job and one bad answer never ends a wait.

Against a scripted API on loopback (tests/client/fakeapi.py): real HTTP, the failures as a network or a gateway
produces them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from sdq_client import AsyncClient, Client, JobStatus, RateLimited, ServerError

from tests.client.fakeapi import DROP, LOST, FakeApi, Reply, Slow, gateway_502, running

FAST = 0.01  # the first pause between tries (seconds), shortened for the tests


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with running() as fake:
        yield fake


def keys(api: FakeApi) -> list[str | None]:
    return [s.headers.get("idempotency-key") for s in api.requests("POST", "/v1/jobs")]


def test_every_submit_carries_an_idempotency_key_a_fresh_one_unless_given(api: FakeApi) -> None:
    with Client(api.url, "key") as client:
        first = client.submit({"prompt": "a fox"})
        second = client.submit({"prompt": "a fox"})
        mine = client.submit({"prompt": "a fox"}, idempotency_key="order-1234")
    sent = keys(api)
    assert all(sent)
    assert sent[0] != sent[1]  # two calls are two jobs
    assert sent[2] == "order-1234"
    assert len({first.id, second.id, mine.id}) == 3


@pytest.mark.parametrize("lost", [LOST, Slow(2.0)], ids=["connection-closed", "read-timeout"])
def test_a_submit_whose_answer_is_lost_is_sent_again_with_its_key_and_makes_one_job(
    api: FakeApi, lost: str | Slow
) -> None:
    api.fault("POST", "/v1/jobs", lost)  # the API made the job; its answer never came back
    with Client(api.url, "key", timeout=0.5, retry_backoff=FAST) as client:
        job = client.submit({"prompt": "a fox"})
    sent = keys(api)
    assert len(sent) == 2
    assert sent[0] == sent[1]  # the same key: the second try answers with the first try's job
    assert list(api.jobs) == [job.id]


@pytest.mark.parametrize(
    "failure",
    [gateway_502(), Reply(503, {"error": {"code": "unavailable", "message": "Try again."}}), Reply(504), DROP],
    ids=["502", "503", "504", "dropped"],
)
def test_one_failed_answer_does_not_end_a_wait_or_a_run(api: FakeApi, failure: Reply | str) -> None:
    api.gets_until_done = 2
    with Client(api.url, "key", retry_backoff=FAST) as client:
        queued = client.submit({"prompt": "a fox"})
        api.fault("GET", "/v1/jobs/", failure)
        assert client.wait(queued.id, timeout=30).status is JobStatus.SUCCEEDED
        api.fault("POST", "/v1/jobs", failure)
        api.fault("GET", "/v1/jobs/", failure)
        ran = client.run({"prompt": "a cat"}, timeout=30)
    assert ran.status is JobStatus.SUCCEEDED
    assert len(api.jobs) == 2


def test_the_async_client_tries_again_too(api: FakeApi) -> None:
    api.fault("POST", "/v1/jobs", LOST)
    api.fault("GET", "/v1/jobs/", gateway_502())

    async def run() -> JobStatus | str:
        async with AsyncClient(api.url, "key", retry_backoff=FAST) as client:
            return (await client.run({"prompt": "a fox"}, timeout=30)).status

    assert asyncio.run(run()) is JobStatus.SUCCEEDED
    assert len(api.jobs) == 1
    assert len(set(keys(api))) == 1


def test_a_reads_429_is_tried_again_after_its_retry_after_unless_that_is_too_long(api: FakeApi) -> None:
    limited = {"error": {"code": "too_many_requests", "message": "Slow down.", "details": None}}
    job_id = api.add_job("RUNNING")
    api.fault("GET", f"/v1/jobs/{job_id}", Reply(429, limited, {"Retry-After": "0"}))
    with Client(api.url, "key", retry_backoff=FAST) as client:
        assert client.get(job_id).id == job_id
        assert len(api.requests("GET")) == 2
        api.fault("GET", f"/v1/jobs/{job_id}", Reply(429, limited, {"Retry-After": "3600"}))
        with pytest.raises(RateLimited) as refused:
            client.get(job_id)
    assert refused.value.retry_after == 3600
    assert len(api.requests("GET")) == 3  # an hour is the caller's decision: raised at once


def test_a_submits_429_is_raised_at_once_since_each_refusal_spends_the_rate(api: FakeApi) -> None:
    """The API counts a refused submit against the plan's rate as it counts a submission: a client that retried
    by itself would spend the window's slots on its own refusals."""
    limited = {"error": {"code": "too_many_requests", "message": "Slow down.", "details": None}}
    api.fault("POST", "/v1/jobs", Reply(429, limited, {"Retry-After": "0"}))
    with Client(api.url, "key", retry_backoff=FAST) as client, pytest.raises(RateLimited) as refused:
        client.submit({"prompt": "a fox"})
    assert refused.value.retry_after == 0
    assert len(api.requests("POST")) == 1


def test_a_throttled_retry_of_a_submit_that_may_have_landed_is_tried_again(api: FakeApi) -> None:
    """The first try made the job but its answer was lost; the gateway throttles the retry before the API sees it.
    Raising then would leave a caller without the key to make a second job: the key's replay must answer."""
    limited = {"message": "Too Many Requests"}  # the gateway's own 429: the API never ran
    api.fault("POST", "/v1/jobs", LOST)
    api.fault("POST", "/v1/jobs", Reply(429, limited, {"Retry-After": "0"}))
    with Client(api.url, "key", timeout=0.5, retry_backoff=FAST) as client:
        job = client.submit({"prompt": "a fox"})
    assert len(api.requests("POST")) == 3
    assert len(set(keys(api))) == 1
    assert list(api.jobs) == [job.id]  # one job, answered by the key's replay


def test_retries_are_bounded_and_configurable(api: FakeApi) -> None:
    job_id = api.add_job()
    api.fault("GET", "/v1/jobs/", gateway_502(), times=100)
    with Client(api.url, "key", retries=2, retry_backoff=FAST) as client, pytest.raises(ServerError) as failed:
        client.get(job_id)
    assert failed.value.status == 502
    assert len(api.requests("GET")) == 3
    with Client(api.url, "key", retries=0) as client, pytest.raises(ServerError):
        client.get(job_id)
    assert len(api.requests("GET")) == 4


def test_what_is_not_safe_to_repeat_is_sent_once(api: FakeApi) -> None:
    job_id = api.add_job()
    api.fault("POST", f"/v1/jobs/{job_id}/cancel", LOST)  # a cancel carries no key
    api.fault("GET", "/v1/jobs/", Reply(500, {"error": {"code": "internal_error", "message": "Internal error."}}))
    with Client(api.url, "key", retry_backoff=FAST) as client:
        with pytest.raises(ServerError) as failed:
            client.get(job_id)  # a 500 is the API's own failure, not a gateway's: trying again would not help
        with pytest.raises(httpx.RemoteProtocolError):
            client.cancel(job_id)
    assert failed.value.status == 500
    assert len(api.requests("GET")) == 1
    assert len(api.requests("POST")) == 1


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (gateway_502(), "Bad Gateway: Internal server error"),
        (Reply(503, b"<html><body>\n<h1>503 Service Unavailable</h1>\n" + b"x" * 5000), "Service Unavailable: <html>"),
        (Reply(504, b""), "Gateway Timeout"),
    ],
    ids=["gateway-json", "html-page", "empty"],
)
def test_an_error_answer_not_in_the_apis_shape_still_says_what_it_was(
    api: FakeApi, answer: Reply, message: str
) -> None:
    job_id = api.add_job()
    api.fault("GET", "/v1/jobs/", answer, times=100)
    with Client(api.url, "key", retries=0) as client, pytest.raises(ServerError) as failed:
        client.get(job_id)
    assert failed.value.message.startswith(message)
    assert len(failed.value.message) < 250  # the start of the body, not all of it
    assert str(failed.value).startswith(f"{answer.status}: {message}")


def test_a_submit_whose_key_is_in_use_waits_as_its_retry_after_says_and_gets_the_job(api: FakeApi) -> None:
    """The first request with this key is still sending its job to the queue (409 idempotency_key_in_use): the
    client asks again after the answer's Retry-After, with the same key, and gets the job."""
    in_use = {"error": {"code": "idempotency_key_in_use", "message": "Still in progress.", "details": None}}
    api.fault("POST", "/v1/jobs", Reply(409, in_use, {"Retry-After": "1"}), times=2)
    started = time.monotonic()
    with Client(api.url, "key", retry_backoff=FAST) as client:
        job = client.submit({"prompt": "a fox"})
    assert time.monotonic() - started >= 2.0  # two pauses of the asked second, not the 0.01 s backoff
    assert len(api.requests("POST")) == 3
    assert len(set(keys(api))) == 1
    assert list(api.jobs) == [job.id]


def test_a_key_in_use_is_asked_again_for_as_long_as_the_first_request_may_send_whatever_the_retries(
    api: FakeApi,
) -> None:
    """The first request's queue send can take the API's whole timeout: more in-use answers than ``retries``."""
    in_use = {"error": {"code": "idempotency_key_in_use", "message": "Still in progress.", "details": None}}
    api.fault("POST", "/v1/jobs", Reply(409, in_use, {"Retry-After": "0"}), times=6)
    with Client(api.url, "key", retries=2, retry_backoff=FAST) as client:
        job = client.submit({"prompt": "a fox"})
    assert len(api.requests("POST")) == 7
    assert list(api.jobs) == [job.id]
