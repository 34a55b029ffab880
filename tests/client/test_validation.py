"""A request the API would refuse for its types is refused before it is sent, as the API's own InvalidRequest (same
status, code and field paths), never changed into one it would accept: the client reads a request as the API's
contract (shared/contracts.py) does."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from sdq_client import AsyncClient, Client, ConfigurationError, InvalidArgument, InvalidRequest, SdqError
from sdq_client import errors as client_errors

from handlers import api as api_handler
from shared.contracts import GenerationRequest as ServerRequest
from tests.client.fakeapi import FakeApi, running

REFUSED = [
    {"prompt": "x", "width": "256"},
    {"prompt": "x", "cache": "no"},
    {"prompt": "x", "cache": 0},
    {"prompt": "x", "seed": True},
    {"prompt": "x", "num_images": 2.5},
    {"prompt": "x", "guidance_scale": "7.5"},
    {"prompt": "x", "strength": "0.5", "image": "01KAXAAAAAAAAAAAAAAAAAAAAA"},
    {"prompt": "x", "metadata": {"order": 7}},
    {"prompt": 7},
    {"prompt": "x", "loras": [{"id": 3}]},
    {"width": 256},
]


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with running() as fake:
        yield fake


def server_refusal(body: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """(loc, type) of each error the API's contract finds, as the API's 422 gives them (under "body")."""
    with pytest.raises(ValidationError) as refused:
        ServerRequest.model_validate(body)
    return [(("body", *map(str, e["loc"])), e["type"]) for e in refused.value.errors()]


@pytest.mark.parametrize("body", REFUSED, ids=lambda b: ",".join(f"{k}={v!r}" for k, v in b.items()))
def test_what_the_api_refuses_is_refused_before_sending_as_its_422(api: FakeApi, body: dict[str, Any]) -> None:
    with Client(api.url, "key") as client, pytest.raises(InvalidRequest) as refused:
        client.submit(body)
    error = refused.value
    assert isinstance(error, SdqError)
    assert (error.status, error.code) == (422, "validation_error")
    assert [(f.loc, f.type) for f in error.fields] == server_refusal(body)
    assert error.message == "Invalid request: " + ", ".join(f.field for f in error.fields)
    assert api.seen == []  # nothing was sent


def test_the_async_client_refuses_the_same(api: FakeApi) -> None:
    async def submit() -> None:
        async with AsyncClient(api.url, "key") as client:
            await client.submit({"prompt": "x", "width": "256"})

    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(submit())
    assert [f.field for f in refused.value.fields] == ["width"]
    assert api.seen == []


def test_what_the_api_accepts_is_sent_as_the_same_json(api: FakeApi) -> None:
    body = {"prompt": "x", "seed": 7.0, "guidance_scale": 7, "cache": False, "metadata": {"k": "v"}, "new_field": 1}
    ServerRequest.model_validate({k: v for k, v in body.items() if k != "new_field"})  # the API takes it
    with Client(api.url, "key") as client:
        client.submit(body)
    (sent,) = api.requests("POST", "/v1/jobs")
    # 7.0 is the JSON integer 7 to the API too; a field this client does not know goes as given.
    assert sent.json() == {"prompt": "x", "seed": 7, "guidance_scale": 7, "cache": False, "metadata": {"k": "v"},
                           "new_field": 1}  # fmt: skip


def test_the_clients_422_is_cut_as_the_apis_is() -> None:
    """The client shapes its own refusals as the API's 422: the same limits, owned by the API and checked here
    (the client is a distribution of its own and cannot import them)."""
    for name in ("MAX_ERROR_DETAILS", "MAX_ERROR_LOC_CHARS", "MAX_ERROR_MSG_CHARS"):
        assert getattr(client_errors, name) == getattr(api_handler, name), name


@pytest.mark.parametrize("key", ["ordér-1", "order\n1", "order\t1", " order-1", "order-1 "])
def test_an_idempotency_key_that_cannot_be_sent_as_it_is_is_refused_before_sending(api: FakeApi, key: str) -> None:
    """A header's value is ASCII, and a space at either end is dropped on the way: such a key is the caller's to
    fix, refused with the client's typed error (sync and async alike), not an encoding error or another key."""

    async def submit() -> None:
        async with AsyncClient(api.url, "key") as client:
            await client.run({"prompt": "x"}, idempotency_key=key)

    with Client(api.url, "key") as client, pytest.raises(InvalidArgument) as refused:
        client.submit({"prompt": "x"}, idempotency_key=key)
    assert "Idempotency-Key" in str(refused.value)
    with pytest.raises(InvalidArgument):
        asyncio.run(submit())
    assert api.seen == []


def test_an_idempotency_key_of_printable_ascii_is_sent_as_given(api: FakeApi) -> None:
    with Client(api.url, "key") as client:
        client.submit({"prompt": "x"}, idempotency_key="order 1234/~!")
    assert [s.headers["idempotency-key"] for s in api.requests("POST")] == ["order 1234/~!"]


@pytest.mark.parametrize(
    ("url", "key"),
    [("127.0.0.1:8000", "key"), ("localhost:8000", "key"), ("http://[::1", "key"), ("ftp://host", "key"),
     ("http://", "key"), ("http://127.0.0.1:8000", "clé")],
    ids=["no-scheme", "host-port", "unclosed-bracket", "ftp", "no-host", "non-ascii-key"],
)  # fmt: skip
def test_an_endpoint_that_cannot_be_used_is_a_configuration_error(url: str, key: str) -> None:
    with pytest.raises(ConfigurationError):
        Client(url, key)
    with pytest.raises(ConfigurationError):
        AsyncClient(url, key)
