"""The result cache shared by every tenant (``SDQ_RESULT_CACHE_SCOPE=global``), through the real API and a tiny-model
worker: one tenant's identical request joins, then is answered by, another tenant's job, and its view does not name
that job (its id is another tenant's, and tells when that tenant submitted it)."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import RunningService, service_fixture, wait_until
from tests.integration.test_worker import FAST_WORKER

service = service_fixture(
    "sdq-cache-global", {"SDQ_RESULT_CACHE_SCOPE": "global", "SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "1000"}
)


@pytest.fixture(autouse=True)
def no_worker_left(service: RunningService) -> Iterator[None]:
    yield
    for worker in service.workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)


def test_a_view_never_names_the_job_of_another_tenant_that_answers_it(service: RunningService) -> None:
    _, alice = service.new_named_tenant("alice")
    _, bob = service.new_named_tenant("bob")
    try:
        request = {"prompt": "a shared owl", "seed": 404, "width": 256, "height": 256, "num_inference_steps": 2}
        source = alice.submit(request)  # no worker yet: it waits QUEUED
        joined = bob.submit(request)
        seen: list[dict[str, Any]] = [joined, bob.get(joined["id"]), bob.list()]
        assert joined["status"] == "QUEUED"
        assert seen[1]["cache"] == {"hit": False, "source_job": None, "joined_job": None}
        own = alice.submit(request)  # the same tenant's copy: no id either (whose a job is is not on the view)
        assert alice.get(own["id"])["cache"] == {"hit": False, "source_job": None, "joined_job": None}

        service.start_worker(env=FAST_WORKER)
        wait_until(lambda: bob.get(joined["id"])["status"] == "SUCCEEDED", 180, joined["id"])
        answered = bob.get(joined["id"])
        assert answered["cache"] == {"hit": True, "source_job": None, "joined_job": None}
        assert answered["usage"]["gpu_s"] == 0
        hit = bob.submit(request)  # answered at once from alice's images
        assert hit["status"] == "SUCCEEDED"
        assert hit["cache"] == {"hit": True, "source_job": None, "joined_job": None}
        seen += [answered, hit, bob.get(hit["id"]), bob.list()]
        # Nowhere but in the images' URLs, which are the source's objects (their keys name its tenant and job: a
        # global cache tells one tenant what another generated, docs/api.md says so).
        for body in seen:
            text = json.dumps(_without_image_urls(body))
            at = text.find(source["id"])
            assert at < 0, text[max(0, at - 300) : at + 100]
    finally:
        alice.close()
        bob.close()


def _without_image_urls(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: _without_image_urls(v) for k, v in body.items() if k not in ("url", "thumbnail_url")}
    if isinstance(body, list):
        return [_without_image_urls(v) for v in body]
    return body
