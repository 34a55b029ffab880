"""Answers that cost the service more than the request that asked for them: a 422 for a body of thousands of
unknown keys, and the interactive docs page. Real HTTP against the local stack."""

from __future__ import annotations

import json
import re
from pathlib import Path

from localcloud.provision import load_sam_template
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


def test_the_docs_page_is_small_and_cached_and_its_assets_are_cached_for_a_year(service: RunningService) -> None:
    with service.http() as http:
        page = http.get("/docs")
        assert page.status_code == 200
        assert page.headers["cache-control"] == "public, max-age=300"
        # The page holds the schema; the Swagger UI's 1.7 MB of script and styles are files of their own.
        assert len(page.content) < 256 * 1024, len(page.content)
        assets = re.findall(r"(?:src|href)='(docs/assets/[^']+)'", page.text)
        assert {a.rsplit("/", 1)[1] for a in assets} == {"swagger-ui-bundle.min.js", "swagger-ui.min.css"}
        for asset in assets:
            first = http.get("/" + asset)
            assert first.status_code == 200
            assert first.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert first.headers["content-type"].startswith(("text/javascript", "text/css"))
            again = http.get("/" + asset, headers={"If-None-Match": first.headers["etag"]})
            assert again.status_code == 304
            assert again.content == b""
        assert http.get("/docs/assets/0.0.0/swagger-ui.min.css").status_code == 404


def test_api_gateway_compresses_answers_for_clients_that_accept_it() -> None:
    sam = load_sam_template(Path(__file__).resolve().parents[2] / "template.yaml")
    assert sam["Resources"]["Api"]["Properties"]["MinimumCompressionSize"] == 1024
    events = sam["Resources"]["ApiFunction"]["Properties"]["Events"]
    assert events["DocsAssets"]["Properties"]["Path"] == "/docs/assets/{proxy+}"
    assert events["DocsAssets"]["Properties"]["Auth"] == {"ApiKeyRequired": False, "Authorizer": "NONE"}
