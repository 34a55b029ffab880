"""The result cache and per-job usage through the real API, a tiny-model worker process and the real state machine.

A request that names its seed and equals an earlier SUCCEEDED job's is answered at once (a job of its own, SUCCEEDED,
no GPU work, its own webhook); one that arrives while the first is unfinished joins it and finishes with it; a
cancelled source sends its joined jobs to run themselves; ``"cache": false``, a drawn seed or another tenant
generate. Every generated job's view carries its GPU share of the batch it ran in.
"""

from __future__ import annotations

import hashlib
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cli.client import ApiError, SdqClient
from localcloud.receiver import ScriptedReceiver
from shared.ratelimit import DailyGpuBudget
from shared.settings import Settings
from shared.tenants import PlanOverrides, TenantStore
from tests.integration.conftest import RunningService, service_fixture, wait_until
from tests.integration.test_worker import FAST_WORKER, batch_lines, clear_worker_logs, executions_per_job

SMALL = {"width": 256, "height": 256, "num_inference_steps": 2}


service = service_fixture("sdq-cache", {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "1000"})


@pytest.fixture
def tenant(service: RunningService) -> Iterator[Callable[[str], SdqClient]]:
    """A new tenant's client; every one is closed when the test ends."""
    made: list[SdqClient] = []

    def new(name: str) -> SdqClient:
        made.append(service.new_tenant(name))
        return made[-1]

    yield new
    for client in made:
        client.close()


@pytest.fixture(autouse=True)
def no_worker_left(service: RunningService) -> Iterator[None]:
    clear_worker_logs(service)
    yield
    for worker in service.workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)


def finished(client: Any, job_id: str, timeout_s: float = 180) -> dict[str, Any]:
    wait_until(lambda: client.get(job_id)["status"] in {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout_s, job_id)
    return dict(client.get(job_id))


def webhooks(receiver: ScriptedReceiver, job_id: str, timeout_s: float = 60) -> list[dict[str, Any]]:
    wait_until(lambda: bool(receiver.by_job(job_id)), timeout_s, f"the webhook of {job_id}", poll_s=0.1)
    time.sleep(0.5)  # a second delivery would have arrived by now
    deliveries = receiver.by_job(job_id)
    assert all(d.verified for d in deliveries)
    return [d.json() | {"webhook-id": d.headers.get("webhook-id")} for d in deliveries]


def sha(client: Any, job: dict[str, Any]) -> list[str]:
    return [hashlib.sha256(client.download(o["url"])).hexdigest() for o in job["outputs"]]


def generated_images(service: RunningService) -> int:
    return sum(b["images"] for b in batch_lines(service))


def test_a_hit_is_a_job_of_its_own_answered_at_once_with_no_gpu_work(
    service: RunningService, receiver: ScriptedReceiver, tenant: Callable[[str], SdqClient]
) -> None:
    client = tenant("hit")
    receiver.secret = client.webhook_secret()
    request = {"prompt": "a red fox", "seed": 1234, "num_images": 2, **SMALL, "callback_url": receiver.url}
    worker = service.start_worker(env=FAST_WORKER)
    source = finished(client, client.submit(request)["id"])
    assert source["status"] == "SUCCEEDED"
    assert source["cache"] == {"hit": False, "source_job": None, "joined_job": None}
    # The generated job's usage: its share of its batch (it was alone in it), priced as `sdq cost` prices.
    usage = source["usage"]
    assert usage["gpu_s"] > 0
    assert usage["batch_jobs"] == 1
    assert usage["batch_images"] == 2
    assert usage["pixel_steps"] == 256 * 256 * 2 * 2
    assert usage["estimated_cost_usd"] == pytest.approx(usage["gpu_s"] * 1.006 / 3600, abs=2e-6)
    assert "g5.xlarge" in usage["price_basis"]
    assert "1.006" in usage["price_basis"]
    assert generated_images(service) == 2

    hit = client.submit(request)
    assert hit["status"] == "SUCCEEDED"  # answered by the submit itself
    assert hit["id"] != source["id"]
    assert hit["cache"] == {"hit": True, "source_job": source["id"], "joined_job": None}
    assert hit["usage"]["gpu_s"] == 0
    assert hit["usage"]["batch_jobs"] == 0
    assert hit["usage"]["estimated_cost_usd"] == 0
    assert hit["usage"]["pixel_steps"] == usage["pixel_steps"]
    assert hit["request"]["seed"] == 1234
    assert sha(client, client.get(hit["id"])) == sha(client, source)
    assert [o["sha256"] for o in hit["outputs"]] == [o["sha256"] for o in source["outputs"]]
    # Its own job.succeeded webhook, with its own webhook-id; the source's came once.
    [own] = webhooks(receiver, hit["id"])
    assert own["type"] == "job.succeeded"
    assert own["data"]["cache"]["hit"] is True
    [first] = webhooks(receiver, source["id"])
    assert own["webhook-id"] != first["webhook-id"]
    # No GPU work, no workflow execution of its own beyond the notice.
    assert generated_images(service) == 2
    assert executions_per_job(service, [hit["id"]]) == {hit["id"]: 1}  # the notice only
    # Listed like any job; the other tenant gets no hit (scoped to the tenant by default).
    assert client.list(status="SUCCEEDED")["jobs"][0]["id"] == hit["id"]
    other = tenant("stranger")
    stranger = other.submit(request | {"callback_url": None})
    assert stranger["status"] == "QUEUED"
    assert stranger["cache"]["hit"] is False
    assert finished(other, stranger["id"])["usage"]["gpu_s"] > 0
    # "cache": false and a request without a seed generate.
    fresh = client.submit(request | {"cache": False, "callback_url": None})
    drawn = client.submit({k: v for k, v in request.items() if k not in ("seed", "callback_url")})
    for job in (fresh, drawn):
        assert job["status"] == "QUEUED"
        assert job["cache"]["hit"] is False
    for job in (fresh, drawn):
        done = finished(client, job["id"])
        assert done["cache"]["hit"] is False
        assert done["usage"]["gpu_s"] > 0
    assert generated_images(service) == 2 + 2 + 2 + 2  # source, stranger, fresh, drawn: never the hit
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0


def test_identical_requests_join_the_running_one_and_finish_with_it(
    service: RunningService, receiver: ScriptedReceiver, tenant: Callable[[str], SdqClient]
) -> None:
    client = tenant("join")
    receiver.secret = client.webhook_secret()
    request = {"prompt": "an owl", "seed": 77, **SMALL, "callback_url": receiver.url}
    source = client.submit(request)  # no worker yet: it waits QUEUED
    joined = client.submit(request)
    quitter = client.submit(request)
    assert source["cache"]["joined_job"] is None
    for job in (joined, quitter):
        assert job["status"] == "QUEUED"
        assert job["cache"] == {"hit": False, "source_job": None, "joined_job": source["id"]}
    # Cancelling a joined job cancels nothing else.
    assert client.cancel(quitter["id"])["status"] == "CANCELLED"
    assert client.get(source["id"])["status"] == "QUEUED"

    service.start_worker(env=FAST_WORKER)
    done = finished(client, source["id"])
    follower = finished(client, joined["id"], timeout_s=30)
    assert done["status"] == follower["status"] == "SUCCEEDED"
    assert follower["cache"] == {"hit": True, "source_job": source["id"], "joined_job": None}
    assert follower["usage"]["gpu_s"] == 0
    assert done["usage"]["gpu_s"] > 0
    assert sha(client, follower) == sha(client, done)
    assert generated_images(service) == 1  # one generation for the three requests
    [a] = webhooks(receiver, source["id"])
    [b] = webhooks(receiver, joined["id"])
    assert a["type"] == b["type"] == "job.succeeded"
    assert a["webhook-id"] != b["webhook-id"]
    assert client.get(quitter["id"])["status"] == "CANCELLED"
    # Both finished together: the joined job right after its source.
    gap = abs(_epoch(follower["finished_at"]) - _epoch(done["finished_at"]))
    assert gap < 10, gap


def test_a_cancelled_source_sends_its_joined_jobs_to_generate_themselves(
    service: RunningService, tenant: Callable[[str], SdqClient]
) -> None:
    client = tenant("orphan")
    request = {"prompt": "a heron", "seed": 5, **SMALL}
    source = client.submit(request)
    joined = client.submit(request)
    assert joined["cache"]["joined_job"] == source["id"]
    assert client.cancel(source["id"])["status"] == "CANCELLED"
    released = client.get(joined["id"])
    assert released["status"] == "QUEUED"
    assert released["cache"]["joined_job"] is None
    service.start_worker(env=FAST_WORKER)
    done = finished(client, joined["id"])
    assert done["status"] == "SUCCEEDED"
    assert done["cache"]["hit"] is False
    assert done["usage"]["gpu_s"] > 0
    assert generated_images(service) == 1


def test_identical_jobs_and_cancels_spend_the_daily_gpu_budget_like_any_jobs(service: RunningService) -> None:
    """The budget bypass: a copy joins a job (its GPU work given back), the job is cancelled, and the copy runs;
    repeated, any number of jobs ran on one job's budget. The copy sent to run is counted, so the tenant's budget
    sees both jobs and refuses a third that does not fit; the copy itself is never refused: it was accepted."""
    name, client = service.new_named_tenant("budget")
    ddb = service.boto("dynamodb")
    TenantStore(ddb, service.table, Settings()).create(name, overrides=PlanOverrides(daily_gpu_budget_mpx_steps=2))
    budget = DailyGpuBudget(ddb, service.table)
    request = {"prompt": "a kestrel", "seed": 11, "width": 256, "height": 256, "num_inference_steps": 12}
    work = 256 * 256 * 12  # 0.79 megapixel steps: two fit in the budget of 2, three do not
    try:
        source = client.submit(request)
        copy = client.submit(request)
        assert copy["cache"]["joined_job"] == source["id"]
        assert budget.used(name, now=time.time()) == work
        assert client.cancel(source["id"])["status"] == "CANCELLED"
        assert client.get(copy["id"])["cache"]["joined_job"] is None  # sent to generate itself
        assert budget.used(name, now=time.time()) == 2 * work
        with pytest.raises(ApiError) as refused:
            client.submit(request | {"seed": 12})
        assert refused.value.status == 429
        assert "megapixel steps" in refused.value.body["error"]["message"]
        service.start_worker(env=FAST_WORKER)
        done = finished(client, copy["id"])
        assert done["status"] == "SUCCEEDED"
        assert done["usage"]["gpu_s"] > 0
        assert budget.used(name, now=time.time()) == 2 * work
    finally:
        client.close()


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()
