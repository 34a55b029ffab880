"""`Prefer: wait` over real HTTP against the local stack: the answer is held until the job finishes or the wait
runs out, and `Preference-Applied` says what was honoured.

Jobs that must stay unfinished are stored QUEUED with no queue message, so no worker takes them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from shared.apikeys import ApiKeyStore
from shared.contracts import JobStatus
from shared.jobs import JobsRepository
from tests.integration.conftest import RunningService, start_service, stop_service, store_queued_job

SMALL = {"prompt": "a red fox", "width": 256, "height": 256, "num_inference_steps": 2}
WORKER_ENV = {"SDQ_RECEIVE_WAIT_S": "1", "SDQ_MAX_BATCH_WAIT_MS": "200", "SDQ_PROGRESS_INTERVAL_S": "0.2"}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    running = start_service(
        tmp_path_factory.mktemp("sdq-wait"),
        {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "1000"},
        args=["--api-processes", "2"],
    )
    running.start_worker(env=WORKER_ENV)
    warm_up(running)
    yield running
    stop_service(running)


def warm_up(service: RunningService, timeout_s: float = 300) -> None:
    """One job through the worker first (it builds the tiny model on its first job), polled without waits, so
    the timings below measure waits and not a cold worker."""
    with service.http() as http:
        headers = {"x-api-key": service.api_key}
        job_id = http.post("/v1/jobs", json={**SMALL, "seed": 10}, headers=headers).json()["id"]
        deadline = time.monotonic() + timeout_s
        while http.get(f"/v1/jobs/{job_id}", headers=headers).json()["status"] != "SUCCEEDED":
            assert time.monotonic() < deadline, "the worker did not finish a first job"
            time.sleep(0.5)


TENANT = f"waiter-{uuid.uuid4().hex[:8]}"
KEYS: dict[str, str] = {}


def auth(service: RunningService, **extra: str) -> dict[str, str]:
    if service.api_url not in KEYS:
        KEYS[service.api_url] = ApiKeyStore(service.boto("dynamodb"), service.table).create(TENANT).plaintext
    return {"x-api-key": KEYS[service.api_url], **extra}


def stuck_job(service: RunningService) -> str:
    """A QUEUED job of the test tenant that no worker will take (its message is never sent)."""
    return store_queued_job(JobsRepository(service.boto("dynamodb"), service.table), TENANT).job_id


def timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    resp = call()
    return resp, time.monotonic() - started


def test_submit_with_prefer_wait_answers_201_with_the_finished_job(service: RunningService) -> None:
    with service.http() as http:
        resp = http.post("/v1/jobs", json={**SMALL, "seed": 11}, headers=auth(service, Prefer="wait=20"))
        assert resp.status_code == 201, resp.text
        job = resp.json()
        assert job["status"] == "SUCCEEDED"
        assert len(job["outputs"]) == 1
        assert job["outputs"][0]["url"].startswith("http")
        assert resp.headers["Preference-Applied"] == "wait=20"
        assert resp.headers["Location"] == f"/v1/jobs/{job['id']}"
        assert "Retry-After" not in resp.headers
        # The answer is the job as GET shows it.
        got = http.get(f"/v1/jobs/{job['id']}", headers=auth(service)).json()
    fresh = {"outputs", "outputs_expire_at"}  # presigned anew on every call
    assert {k: v for k, v in got.items() if k not in fresh} == {k: v for k, v in job.items() if k not in fresh}


def test_a_replayed_finished_job_is_200_with_prefer_wait_and_202_without(service: RunningService) -> None:
    key = {"Idempotency-Key": f"wait-{uuid.uuid4()}"}
    body = {**SMALL, "seed": 12}
    with service.http() as http:
        first = http.post("/v1/jobs", json=body, headers=auth(service, Prefer="wait", **key))
        assert first.status_code == 201, first.text
        assert first.headers["Preference-Applied"] == "wait=25"
        again = http.post("/v1/jobs", json=body, headers=auth(service, Prefer="wait", **key))
        plain = http.post("/v1/jobs", json=body, headers=auth(service, **key))
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Preference-Applied"] == "wait=25"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["status"] == "SUCCEEDED"
    assert plain.status_code == 202  # without the preference: today's answer
    assert "Preference-Applied" not in plain.headers


def test_submit_without_prefer_is_unchanged(service: RunningService) -> None:
    with service.http() as http:
        resp = http.post("/v1/jobs", json={**SMALL, "seed": 13}, headers=auth(service))
    assert resp.status_code == 202
    assert resp.json()["status"] == "QUEUED"
    assert "Preference-Applied" not in resp.headers
    assert int(resp.headers["Retry-After"]) >= 1


def test_get_waits_out_n_seconds_on_an_unfinished_job_then_answers_it_as_it_stands(service: RunningService) -> None:
    job_id = stuck_job(service)
    with service.http() as http:
        resp, took = timed(lambda: http.get(f"/v1/jobs/{job_id}", headers=auth(service, Prefer="wait=2")))
    assert resp.status_code == 200
    assert resp.json()["status"] == "QUEUED"
    assert resp.headers["Preference-Applied"] == "wait=2"
    assert int(resp.headers["Retry-After"]) >= 1
    assert 2.0 <= took < 5.0, took


def test_submit_whose_job_does_not_finish_in_time_answers_202(service: RunningService) -> None:
    # 1 s is far too short for a 40-step 512x512 job on a CPU.
    body = {**SMALL, "width": 512, "height": 512, "num_inference_steps": 40, "seed": 14}
    with service.http() as http:
        resp, took = timed(lambda: http.post("/v1/jobs", json=body, headers=auth(service, Prefer="wait=1")))
        assert resp.status_code == 202, resp.text
        assert resp.json()["status"] in {"QUEUED", "RUNNING"}
        assert resp.headers["Preference-Applied"] == "wait=1"
        assert 1.0 <= took < 4.0, took
        http.post(f"/v1/jobs/{resp.json()['id']}/cancel", headers=auth(service))


def test_a_wait_ends_within_a_second_of_the_job_finishing(service: RunningService) -> None:
    job_id = stuck_job(service)
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    with service.http() as waiting, ThreadPoolExecutor(1) as pool:
        held = pool.submit(timed, lambda: waiting.get(f"/v1/jobs/{job_id}", headers=auth(service, Prefer="wait=20")))
        time.sleep(2.0)
        # Finished behind the API's back (as a worker or the state machine would): the wait finds it by re-reading.
        repo.transition(job_id, JobStatus.CANCELLED, tenant=TENANT)
        finished_at = time.monotonic()
        resp, took = held.result(timeout=30)
        answered_after = time.monotonic() - finished_at
    assert resp.status_code == 200
    assert resp.json()["status"] == "CANCELLED"
    assert resp.headers["Preference-Applied"] == "wait=20"
    assert "Retry-After" not in resp.headers
    assert took >= 2.0
    assert answered_after < 2.5, answered_after  # the backoff re-reads at least once a second


def test_while_one_request_waits_the_other_requests_are_answered_at_once(service: RunningService) -> None:
    """A wait holds one of the 2 API processes, as it holds one Lambda environment on AWS; every request meanwhile
    goes to the idle one, none queues behind the wait."""
    job_id = stuck_job(service)
    with service.http() as waiting, ThreadPoolExecutor(1) as pool:
        held = pool.submit(timed, lambda: waiting.get(f"/v1/jobs/{job_id}", headers=auth(service, Prefer="wait=8")))
        time.sleep(1.0)  # the wait has begun
        took = []
        for _ in range(8):
            with service.http() as http:  # a connection of its own each time, as separate clients would open
                resp, seconds = timed(lambda http=http: http.get(f"/v1/jobs/{job_id}", headers=auth(service)))
            assert resp.status_code == 200
            took.append(seconds)
        assert not held.done(), took  # all of them answered while the wait still ran
        assert held.result(timeout=30)[0].status_code == 200


@pytest.mark.parametrize(
    ("prefer", "applied"),
    [
        ("wait=300", "wait=25"),  # capped
        ('respond-async, wait="3"', "wait=3"),  # one preference among others, quoted
        ("wait=soon", None),  # not whole seconds: ignored
        ("handling=lenient", None),  # another preference: ignored
    ],
)
def test_preference_applied_says_what_was_honoured(service: RunningService, prefer: str, applied: str | None) -> None:
    with service.http() as http:
        done = http.post("/v1/jobs", json={**SMALL, "seed": 15}, headers=auth(service, Prefer="wait=20")).json()
        assert done["status"] == "SUCCEEDED"
        resp, took = timed(lambda: http.get(f"/v1/jobs/{done['id']}", headers=auth(service, Prefer=prefer)))
    assert resp.status_code == 200
    assert resp.headers.get("Preference-Applied") == applied
    assert took < 2.0  # a finished job is answered at once


def test_two_prefer_lines_count_as_one_list(service: RunningService) -> None:
    job_id = stuck_job(service)
    headers = [*auth(service).items(), ("Prefer", "respond-async"), ("Prefer", "wait=1")]
    with service.http() as http:
        resp, took = timed(lambda: http.get(f"/v1/jobs/{job_id}", headers=headers))
    assert resp.status_code == 200
    assert resp.headers["Preference-Applied"] == "wait=1"
    assert took >= 1.0
