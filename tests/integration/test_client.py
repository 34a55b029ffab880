"""The installable client (`sdq_client`) and the `sdq` CLI over real HTTP against the local stack with a worker:
run/wait/typed errors, and the CLI's --json, --version and exit codes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sdq_client import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    InvalidRequest,
    JobStatus,
    JobView,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    UnsupportedMediaType,
    WaitTimeout,
)

from shared.apikeys import ApiKeyStore
from shared.jobs import JobsRepository
from tests.integration.conftest import REPO, RunningService, start_service, stop_service, store_queued_job

SMALL = {"prompt": "a red fox", "width": 256, "height": 256, "num_inference_steps": 2}
LONG = {"prompt": "a slow fox", "width": 512, "height": 512, "num_inference_steps": 60}
CAP = 3


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    running = start_service(
        tmp_path_factory.mktemp("sdq-client"),
        {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": str(CAP)},
        args=["--api-processes", "2"],
    )
    running.start_worker(env={"SDQ_RECEIVE_WAIT_S": "1", "SDQ_MAX_BATCH_WAIT_MS": "200"})
    with Client(running.api_url, running.api_key) as client:  # a first job warms the worker (builds its model)
        assert client.wait(client.submit({**SMALL, "seed": 20}).id, timeout=300).status is JobStatus.SUCCEEDED
    yield running
    stop_service(running)


def tenant_key(service: RunningService, name: str = "client") -> tuple[str, str]:
    tenant = f"{name}-{uuid.uuid4().hex[:8]}"
    return tenant, ApiKeyStore(service.boto("dynamodb"), service.table).create(tenant).plaintext


def tenant_client(service: RunningService, name: str = "client", **options: Any) -> tuple[str, Client]:
    tenant, key = tenant_key(service, name)
    return tenant, Client(service.api_url, key, **options)


def test_run_returns_the_finished_job_typed(service: RunningService) -> None:
    seen: list[JobStatus] = []
    _, client = tenant_client(service)
    with client:
        job = client.run(
            {**SMALL, "seed": 21, "metadata": {"order": "7"}}, timeout=60, on_update=lambda j: seen.append(j.status)
        )
        image = client.download(job.outputs[0].url)
    assert isinstance(job, JobView)
    assert job.status is JobStatus.SUCCEEDED
    assert job.request.seed == 21
    assert job.metadata == {"order": "7"}
    assert job.outputs[0].width == 256
    assert image.startswith(b"\x89PNG")
    assert seen[-1] is JobStatus.SUCCEEDED


def test_wait_returns_a_job_once_it_has_finished(service: RunningService) -> None:
    _, client = tenant_client(service)
    with client:
        submitted = client.submit({**SMALL, "seed": 22})
        assert submitted.status is JobStatus.QUEUED
        done = client.wait(submitted.id, timeout=60)
    assert done.id == submitted.id
    assert done.status is JobStatus.SUCCEEDED


def test_run_and_wait_give_up_after_their_timeout_with_the_job_as_last_seen(service: RunningService) -> None:
    tenant, client = tenant_client(service)
    stuck = store_queued_job(JobsRepository(service.boto("dynamodb"), service.table), tenant).job_id
    with client:
        with pytest.raises(WaitTimeout) as waited:
            client.wait(stuck, timeout=2)
        with pytest.raises(WaitTimeout) as ran:
            client.run({**LONG, "seed": 23}, timeout=2)
        client.cancel(ran.value.job.id)
    assert waited.value.job.status is JobStatus.QUEUED
    assert ran.value.job.status in {JobStatus.QUEUED, JobStatus.RUNNING}


def test_the_async_client_runs_a_job(service: RunningService) -> None:
    _, key = tenant_key(service)

    async def run() -> tuple[JobView, list[str]]:
        async with AsyncClient(service.api_url, key) as client:
            job = await client.run({**SMALL, "seed": 24}, timeout=60)
            listed = [j.id async for j in client.iter_jobs(page_size=1)]
            return job, listed

    job, listed = asyncio.run(run())
    assert job.status is JobStatus.SUCCEEDED
    assert listed == [job.id]


def test_stream_follows_a_job_to_its_end(service: RunningService) -> None:
    _, client = tenant_client(service)
    with client:
        job = client.submit({**SMALL, "num_inference_steps": 8, "seed": 28})
        events = list(client.stream(job.id, timeout=120))
    assert events[-1].type == "job.succeeded"
    assert events[-1].data.status is JobStatus.SUCCEEDED
    assert events[-1].data.outputs
    assert {e.data.id for e in events} == {job.id}
    ids = [e.event_id for e in events]
    assert len(ids) == len(set(ids))  # no event twice


def test_every_refusal_is_its_typed_error(service: RunningService) -> None:
    tenant, client = tenant_client(service, "refusals")
    with client, Client(service.api_url, "sdq_not_a_key") as stranger:
        with pytest.raises(Unauthorized) as unauthorized:
            stranger.get("01KAXAAAAAAAAAAAAAAAAAAAAA")
        with pytest.raises(NotFound) as not_found:
            client.get("01KAXAAAAAAAAAAAAAAAAAAAAA")
        with pytest.raises(InvalidRequest) as invalid:
            client.submit({"prompt": "a fox", "width": 513})
        with pytest.raises(BadRequest):
            client.list(cursor="not-a-cursor")
        with pytest.raises(UnsupportedMediaType):
            client.request("POST", "/v1/jobs", content=b"prompt=fox", headers={"Content-Type": "text/plain"})
        with pytest.raises(PayloadTooLarge):
            client.request("POST", "/v1/jobs", json={"prompt": "x" * 2_000_000})
        key = f"k-{uuid.uuid4()}"
        first = client.submit({**SMALL, "seed": 25}, idempotency_key=key)
        with pytest.raises(Conflict) as conflict:
            client.submit({**SMALL, "seed": 26}, idempotency_key=key)
        client.cancel(first.id)
        with pytest.raises(Conflict):
            client.cancel(first.id)
        repo = JobsRepository(service.boto("dynamodb"), service.table)
        for _ in range(CAP):
            store_queued_job(repo, tenant)
        with pytest.raises(RateLimited) as limited:
            client.submit({**SMALL, "seed": 27})
    assert unauthorized.value.status == 401
    assert not_found.value.code == "not_found"
    assert [(f.field, f.loc[0]) for f in invalid.value.fields] == [("width", "body")]
    assert "multiple of 8" in invalid.value.fields[0].msg
    assert conflict.value.code == "idempotency_key_reused"
    assert limited.value.retry_after is not None
    assert limited.value.retry_after > 0


# -- the CLI -------------------------------------------------------------------------------------


def sdq(service: RunningService, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {"SDQ_STATE_DIR": str(service.state_dir), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_cli_submit_wait_json_prints_the_finished_job_and_saves_its_images(
    service: RunningService, tmp_path: Path
) -> None:
    done = sdq(service, "submit", "a red fox", "--width", "256", "--height", "256", "--steps", "2", "--seed", "31",
               "--wait", "--json", "--out", str(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)  # stdout is the job's JSON and nothing else
    assert job["status"] == "SUCCEEDED"
    assert [p.name for p in tmp_path.iterdir()] == [f"{job['id']}-0.png"]
    for command in (["status", job["id"]], ["wait", job["id"], "--out", str(tmp_path)]):
        again = sdq(service, *command, "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["id"] == job["id"]
    listed = sdq(service, "jobs", "--json", "--limit", "1")
    assert listed.returncode == 0
    assert json.loads(listed.stdout)["jobs"][0]["id"] == job["id"]


def test_cli_exit_codes_tell_usage_errors_refusals_and_failed_jobs_apart(service: RunningService) -> None:
    usage = sdq(service, "submit")
    assert usage.returncode == 2
    # A flag value outside its choices: refused before sending as the API refuses a field (exit 4), no traceback.
    bad_choice = sdq(service, "submit", "a fox", "--scheduler", "nope")
    assert bad_choice.returncode == 4
    assert "scheduler" in bad_choice.stderr
    assert "Traceback" not in bad_choice.stderr
    refused = sdq(service, "submit", "a fox", "--width", "513", "--json")
    assert refused.returncode == 4
    assert "Traceback" not in refused.stderr
    assert "width" in refused.stderr
    assert json.loads(refused.stdout)["body"]["error"]["code"] == "validation_error"
    missing = sdq(service, "status", "01KAXAAAAAAAAAAAAAAAAAAAAA")
    assert missing.returncode == 4
    assert "Traceback" not in missing.stderr
    assert "not_found" in missing.stderr
    queued = json.loads(sdq(service, "submit", "a slow fox", "--steps", "60", "--json").stdout)
    cancelled = sdq(service, "cancel", queued["id"], "--json")
    assert json.loads(cancelled.stdout)["status"] == "CANCELLED"
    waited = sdq(service, "wait", queued["id"], "--json")
    assert waited.returncode == 1  # the job finished, but not SUCCEEDED
    assert json.loads(waited.stdout)["status"] == "CANCELLED"
    version = sdq(service, "--version")
    assert version.returncode == 0
    assert version.stdout.startswith("sdq ")
    assert "sdq-client " in version.stdout
