"""A job id is one path segment, whatever it holds: an id with a slash, a query or dot segments reaches no other
route (it is an unknown job, a 404), and an empty one is refused before anything is sent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sdq_client import AsyncClient, Client, InvalidArgument, NotFound, SdqError, UnexpectedAnswer

from tests.client.fakeapi import FakeApi, Reply, running


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with running() as fake:
        fake.add_job("SUCCEEDED")
        yield fake


CALLS: dict[str, Callable[[Client, str], Any]] = {
    "get": lambda c, i: c.get(i),
    "wait": lambda c, i: c.wait(i, timeout=5),
    "cancel": lambda c, i: c.cancel(i),
    "redeliver_webhook": lambda c, i: c.redeliver_webhook(i),
    "stream": lambda c, i: next(iter(c.stream(i))),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_an_empty_job_id_is_refused_before_sending(api: FakeApi, call: Callable[[Client, str], Any]) -> None:
    with Client(api.url, "key") as client, pytest.raises(InvalidArgument) as refused:
        call(client, "")
    assert isinstance(refused.value, SdqError)
    assert api.seen == []


@pytest.mark.parametrize(
    ("job_id", "path"),
    [
        ("a/b", "/v1/jobs/a%2Fb"),
        ("?status=SUCCEEDED", "/v1/jobs/%3Fstatus%3DSUCCEEDED"),
        ("..", "/v1/jobs/%2E%2E"),
        ("../webhook-secret", "/v1/jobs/..%2Fwebhook-secret"),
        ("#x y", "/v1/jobs/%23x%20y"),
    ],
)
def test_a_job_id_is_one_path_segment(api: FakeApi, job_id: str, path: str) -> None:
    with Client(api.url, "key") as client:
        with pytest.raises(NotFound):
            client.get(job_id)
        with pytest.raises(NotFound):
            client.cancel(job_id)
    assert [s.path for s in api.seen] == [path, path + "/cancel"]


def test_the_async_client_encodes_the_same(api: FakeApi) -> None:
    async def get() -> None:
        async with AsyncClient(api.url, "key") as client:
            await client.get("?status=SUCCEEDED")

    with pytest.raises(NotFound):
        asyncio.run(get())
    assert [s.path for s in api.seen] == ["/v1/jobs/%3Fstatus%3DSUCCEEDED"]


def test_an_answer_that_is_not_the_apis_is_an_unexpected_answer(api: FakeApi) -> None:
    (job_id,) = api.jobs
    api.route("GET", f"/v1/jobs/{job_id}", lambda _: Reply(200, {"jobs": [], "next_cursor": None}))
    with Client(api.url, "key") as client, pytest.raises(UnexpectedAnswer) as unexpected:
        client.get(job_id)
    assert unexpected.value.status == 200
    assert '"jobs"' in unexpected.value.snippet
    assert unexpected.value.errors
