"""Answers that cost the service more than the request that asked for them: a 422 for a body of thousands of
unknown keys, and the interactive docs page. Real HTTP against the local stack."""

from __future__ import annotations

import json

from tests.integration.conftest import RunningService

BODY_CAP = 256 * 1024  # SDQ_MAX_BODY_BYTES' default: the largest body that gets as far as validation


def _post(service: RunningService, body: bytes) -> tuple[int, bytes, dict[str, object]]:
    with service.http() as http:
        resp = http.post(
            "/v1/jobs",
            content=body,
            headers={"x-api-key": service.api_key, "content-type": "application/json"},
        )
    return resp.status_code, resp.content, resp.json()


def test_a_body_of_thousands_of_unknown_keys_gets_a_small_422(service: RunningService) -> None:
    keys = {f"k{i:05d}": 1 for i in range(20_000)}
    body = json.dumps({"prompt": "a red fox", **keys}).encode()
    assert len(body) < BODY_CAP
    status, raw, answer = _post(service, body)
    assert status == 422
    assert len(raw) < 8 * 1024, f"a {len(raw)} byte answer to a {len(body)} byte request"
    error = answer["error"]
    assert isinstance(error, dict)
    assert len(error["details"]) == 20
    assert error["details"][0]["loc"] == ["body", "k00000"]
    assert error["message"].endswith(f"and {len(keys) - 20} more")


def test_a_very_long_unknown_key_is_not_echoed_whole(service: RunningService) -> None:
    long_key = "k" * 200_000
    body = json.dumps({"prompt": "a red fox", long_key: 1}).encode()
    status, raw, answer = _post(service, body)
    assert status == 422
    assert len(raw) < 2 * 1024
    error = answer["error"]
    assert isinstance(error, dict)
    [detail] = error["details"]
    assert detail["loc"][1].startswith("kkk")
    assert len(detail["loc"][1]) <= 64
