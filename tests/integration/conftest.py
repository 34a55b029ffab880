"""Fixtures that run the real service: `sdq up` as a process (local cloud + API), real HTTP, real boto3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import boto3
import httpx
import pytest
from ulid import ULID

from cli.client import Endpoint, SdqClient
from localcloud.receiver import ScriptedReceiver
from shared.apikeys import ApiKeyStore
from shared.contracts import GenerationRequest, Job, JobStatus, utcnow
from shared.deliveryslots import DeliverySlots, StreamSlots
from shared.jobs import JobsRepository, expiry_epoch
from shared.queue import Received, WorkerQueue

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunningService:
    api_url: str
    api_key: str
    env: dict[str, str]
    state_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[IO[bytes]] = field(default_factory=list)

    def boto(self, service: str) -> Any:
        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.env["AWS_ENDPOINT_URL"],
            region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    @property
    def table(self) -> str:
        return self.env["SDQ_TABLE_NAME"]

    @property
    def queue_url(self) -> str:
        return self.env["SDQ_QUEUE_URL"]

    def new_tenant(self, name: str) -> SdqClient:
        """A fresh tenant with its own API key, registered straight in the table."""
        return self.new_named_tenant(name)[1]

    def new_named_tenant(self, name: str) -> tuple[str, SdqClient]:
        tenant = f"{name}-{time.monotonic_ns()}"
        key = ApiKeyStore(self.boto("dynamodb"), self.table).create(tenant).plaintext
        return tenant, SdqClient(Endpoint(self.api_url, key))

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, timeout=30)

    def queue_depth(self) -> int:
        attrs = self.boto("sqs").get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def table_items(self) -> int:
        return len(self.table_keys())

    def table_keys(self) -> set[str]:
        """The partition keys of the jobs table's items (a failed comparison then names the item that changed),
        but a tenant's webhook and event-stream leases: earlier tests' deliveries write those on their own time
        (a cancel's webhook execution runs after the cancel answered), never a request's answer."""
        leases = (DeliverySlots.PREFIX, StreamSlots.PREFIX)
        keys = {item["pk"]["S"] for item in self.boto("dynamodb").scan(TableName=self.table)["Items"]}
        return {key for key in keys if not key.startswith(leases)}

    def start_worker(
        self, *args: str, env: dict[str, str] | None = None, log_name: str = "worker"
    ) -> subprocess.Popen[bytes]:
        log = open(self.state_dir / f"{log_name}-{len(self.workers)}.log", "wb")  # noqa: SIM115
        self.logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", *args],
            env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers.append(proc)
        return proc


def start_service(
    state_dir: Path, extra_env: dict[str, str] | None = None, timeout_s: float = 120, args: Sequence[str] = ()
) -> RunningService:
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "service.log"
    env = {**os.environ, "SDQ_STATE_DIR": str(state_dir), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    log = open(log_path, "wb")  # noqa: SIM115
    # A short authorizer cache: a revoked key is refused within it (test_abuse), and the cache still works.
    up = ["up", "--port", "0", "--no-worker", "--authorizer-cache-seconds", "2"]
    if "--model" not in args:  # the suite's jobs run on the fast random-weight model unless a test names others
        up += ["--model", "tiny"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *up, *args],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    state_file = state_dir / "local.json"
    deadline = time.monotonic() + timeout_s
    while not state_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            log.close()
            raise RuntimeError(f"sdq up did not start:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.2)
    state = json.loads(state_file.read_text())
    service_env = {k: v for k, v in state["env"].items()}
    service_env.update({k: v for k, v in (extra_env or {}).items()})
    return RunningService(
        api_url=state["api_url"],
        api_key=state["api_key"],
        env=service_env,
        state_dir=state_dir,
        log_path=log_path,
        process=proc,
        logs=[log],
    )


def stop_service(service: RunningService) -> None:
    for worker in service.workers:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
    service.process.send_signal(signal.SIGINT)
    try:
        service.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        service.process.kill()
        service.process.wait(timeout=10)
    for log in service.logs:
        log.close()


def service_fixture(name: str, env: dict[str, str]) -> Any:
    """A module-scoped ``service`` fixture: the control plane started with ``env`` under a temp folder ``name``."""

    @pytest.fixture(scope="module")
    def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
        running = start_service(tmp_path_factory.mktemp(name), env)
        yield running
        stop_service(running)

    return service


# The control plane (local cloud + API), no worker: jobs stay QUEUED.
service = service_fixture("sdq", {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "5"})


@pytest.fixture
def received() -> list[str]:
    """The job id of every message a test's workers received, in order (``RecordingQueue(..., into=received)``)."""
    return []


@pytest.fixture
def receiver() -> Iterator[ScriptedReceiver]:
    """A webhook receiver on 127.0.0.1, stopped when the test ends."""
    r = ScriptedReceiver().start()
    yield r
    r.stop()


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.3) -> None:
    """Return once ``predicate()`` holds; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def store_queued_job(
    repo: JobsRepository, tenant: str, *, expires_at: int | None = None, enqueued: bool = True, **fields: Any
) -> Job:
    """A QUEUED job written straight to the table, bypassing the API (and its checks): for jobs the API would
    refuse (an internal callback URL, a past retention) or that a test drives through other states. The test
    sends (or withholds) its message itself; ``enqueued=False`` leaves it as a submission that died before the
    send leaves it, marked unqueued for the requeue sweeper."""
    body = {"prompt": "a red fox", "width": 256, "height": 256, **fields}
    request = GenerationRequest.model_validate(body, context={"trusted": True}).normalised()
    now = utcnow()
    job = Job(
        job_id=str(ULID()),
        tenant=tenant,
        status=JobStatus.QUEUED,
        request=request,
        created_at=now,
        cache_key=request.cache_key(),
        expires_at=expires_at if expires_at is not None else expiry_epoch(now, 1),
    )
    repo.create(job)
    if enqueued:
        repo.mark_enqueued(job.job_id)
    return job


class RecordingQueue(WorkerQueue):
    """The real queue, recording the job id of every message received (into ``into`` when given, so several
    workers' queues can share one record)."""

    def __init__(self, sqs: Any, url: str, into: list[str] | None = None) -> None:
        super().__init__(sqs, url)
        self.job_ids: list[str] = into if into is not None else []

    def receive(self, *, max_messages: int, wait_s: int, visibility_s: int) -> list[Received]:
        received = super().receive(max_messages=max_messages, wait_s=wait_s, visibility_s=visibility_s)
        self.job_ids += [r.message.job_id for r in received if r.message is not None]
        return received
