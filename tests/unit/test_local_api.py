"""The local API server: API Gateway proxy events in front of a Lambda handler, and its one redirect."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from localcloud.api import LocalApiServer


@pytest.fixture
def server() -> Iterator[tuple[LocalApiServer, list[dict[str, Any]]]]:
    events: list[dict[str, Any]] = []

    def handler(event: dict[str, Any], _context: Any) -> dict[str, Any]:
        events.append(event)
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": json.dumps(event["path"])}

    api = LocalApiServer(handler, port=0, redirects={"/": "/playground/"})
    api.start()
    try:
        yield api, events
    finally:
        api.stop()


def test_root_redirects_and_every_other_path_reaches_the_handler(
    server: tuple[LocalApiServer, list[dict[str, Any]]],
) -> None:
    api, events = server
    root = httpx.get(api.url + "/", follow_redirects=False)
    assert (root.status_code, root.headers["location"]) == (302, "/playground/")
    assert events == []
    for path in ("/playground/", "/docs", "/v1/jobs"):
        answer = httpx.get(api.url + path)
        assert (answer.status_code, answer.json()) == (200, path)
    assert [event["path"] for event in events] == ["/playground/", "/docs", "/v1/jobs"]
    posted = httpx.post(api.url + "/", content=b"{}")
    assert posted.json() == "/"  # only GET and HEAD redirect
