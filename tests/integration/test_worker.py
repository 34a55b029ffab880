"""The GPU worker as a process (tiny model on CPU) against the local cloud: batching, exactly-once, faults.

Each test submits through the real API, runs `sdq worker` processes, and checks the table, the queue and the
state machine's executions with boto3.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cli.client import SdqClient
from localcloud.receiver import ScriptedReceiver
from shared.contracts import JobStatus, QueueMessage, utcnow
from shared.jobs import JobsRepository
from tests.integration.conftest import REPO, RunningService, service_fixture, store_queued_job, wait_until
from workflows.generation.watchdog import EXIT_HUNG

FAST_WORKER = {
    "SDQ_VISIBILITY_TIMEOUT_S": "6",
    "SDQ_HEARTBEAT_S": "2",
    "SDQ_RECEIVE_WAIT_S": "1",
    "SDQ_MAX_BATCH_WAIT_MS": "1500",
    "SDQ_MAX_BATCH_IMAGES": "8",
    "SDQ_GRACE_S": "60",
    "SDQ_PROGRESS_INTERVAL_S": "0.2",
}
SMALL = {"width": 256, "height": 256, "num_inference_steps": 2}


service = service_fixture("sdq-worker", {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "1000"})


@pytest.fixture(autouse=True)
def drained(service: RunningService) -> Iterator[None]:
    """Each test starts with an empty queue and leaves no worker running."""
    sqs = service.boto("sqs")
    # WaitTimeSeconds=0: the queue long-polls 20 s by default (template.yaml), which an empty queue would wait out.
    drain = {"QueueUrl": service.queue_url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 0}
    while messages := sqs.receive_message(**drain).get("Messages", []):
        for m in messages:
            sqs.delete_message(QueueUrl=service.queue_url, ReceiptHandle=m["ReceiptHandle"])
    yield
    for worker in service.workers:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)


def statuses(client: SdqClient, ids: list[str]) -> dict[str, str]:
    return {job_id: client.get(job_id)["status"] for job_id in ids}


def all_terminal(client: SdqClient, ids: list[str]) -> Callable[[], bool]:
    return lambda: all(s in {"SUCCEEDED", "FAILED", "CANCELLED"} for s in statuses(client, ids).values())


def executions(service: RunningService) -> list[dict[str, Any]]:
    sfn = service.boto("stepfunctions")
    found: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"stateMachineArn": service.env["SDQ_STATE_MACHINE_ARN"]}
    while True:
        page = sfn.list_executions(**kwargs)
        found += page["executions"]
        if not page.get("nextToken"):
            return found
        kwargs["nextToken"] = page["nextToken"]


def executions_per_job(service: RunningService, ids: list[str]) -> dict[str, int]:
    names = [e["name"] for e in executions(service)]
    return {job_id: sum(1 for n in names if n.startswith(job_id + "-")) for job_id in ids}


def batch_lines(service: RunningService) -> list[dict[str, Any]]:
    lines = []
    for log in sorted(service.state_dir.glob("worker-*.log")):
        for raw in log.read_text(errors="replace").splitlines():
            if raw.startswith("{") and '"message":"batch"' in raw.replace(" ", ""):
                lines.append(json.loads(raw))
    return lines


def worker_story(service: RunningService) -> str:
    """Each worker log's batches and claim/lease events, for an assertion message (what ran where, and why)."""
    keep = ("batch", "job held", "lease", "taken over", "cancelled", "hand-off", "needs no work", "claim")
    out = []
    for log in sorted(service.state_dir.glob("worker-*.log")):
        for raw in log.read_text(errors="replace").splitlines():
            if not raw.startswith("{"):
                continue
            event = json.loads(raw)
            message = str(event.get("message", ""))
            if any(k in message for k in keep):
                fields = {
                    k: event[k] for k in ("timestamp", "job_id", "job_ids", "lease_remaining_s", "error") if k in event
                }
                out.append(f"{log.name}: {message} {fields}")
    return "\n".join(out)


def assert_one_failed_webhook(receiver: ScriptedReceiver, job_id: str, code: str) -> None:
    """The job's client hears of its failure once, signed, with the code, like any failure in the state machine."""
    deadline = time.monotonic() + 60
    while not receiver.by_job(job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # a second delivery would have arrived by now
    [delivery] = receiver.by_job(job_id)
    assert delivery.verified
    body = delivery.json()
    assert body["type"] == "job.failed"
    assert body["data"]["error"]["code"] == code


def clear_worker_logs(service: RunningService) -> None:
    for log in service.state_dir.glob("worker-*.log"):
        log.unlink()


def test_six_jobs_of_two_shapes_run_as_two_batches_and_all_succeed(service: RunningService) -> None:
    clear_worker_logs(service)
    client = service.new_tenant("batch")
    ids = [client.submit({"prompt": f"fox {i}", **SMALL})["id"] for i in range(3)]
    ids += [client.submit({"prompt": f"owl {i}", **SMALL, "width": 320})["id"] for i in range(3)]
    worker = service.start_worker(env=FAST_WORKER)
    wait_until(all_terminal(client, ids), 180, "six jobs to finish")
    assert set(statuses(client, ids).values()) == {"SUCCEEDED"}
    batches = batch_lines(service)
    assert sorted(b["jobs"] for b in batches) == [3, 3]
    assert sorted(b["shape"].split("x")[0] for b in batches) == ["256", "320"]
    assert executions_per_job(service, ids) == dict.fromkeys(ids, 1)
    job = client.get(ids[0])
    assert job["attempt"] == 1
    assert job["progress"]["total"] == 2
    assert len(job["outputs"]) == 1
    assert job["outputs"][0]["width"] == 256
    assert client.download(job["outputs"][0]["url"])[:8] == b"\x89PNG\r\n\x1a\n"
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0


def test_duplicate_delivery_and_two_workers_run_each_job_once(service: RunningService) -> None:
    clear_worker_logs(service)
    client = service.new_tenant("dup")
    sqs = service.boto("sqs")
    ids = []
    for i in range(4):
        job = client.submit({"prompt": f"dup {i}", **SMALL})
        ids.append(job["id"])
    # Duplicate every message (SQS is at-least-once): the same bodies a second time.
    received = []
    while len(received) < 4:
        received += sqs.receive_message(QueueUrl=service.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0).get(
            "Messages", []
        )
    for message in {m["MessageId"]: m for m in received}.values():
        sqs.send_message(QueueUrl=service.queue_url, MessageBody=message["Body"])
    workers = [service.start_worker(env=FAST_WORKER) for _ in range(2)]
    wait_until(all_terminal(client, ids), 240, "jobs to finish")
    assert set(statuses(client, ids).values()) == {"SUCCEEDED"}
    assert executions_per_job(service, ids) == dict.fromkeys(ids, 1)
    assert sum(b["images"] for b in batch_lines(service)) == 4, worker_story(service)  # no job generated twice
    wait_until(lambda: service.queue_depth() == 0, 30, "the duplicates to be deleted")
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0


# A slow worker's PYTHONPATH starts with a folder holding this as sitecustomize.py: each denoising step of a prompt
# containing SLOW takes at least half a second more, as a big job on a busy GPU does, while the 2 CPU cores stay
# free for the rest of the suite (a 768 px job of 60 steps kept them busy for a minute).
SLOW_SITECUSTOMIZE = """
from workflows.generation import pipeline

_generate = pipeline.PipelineRunner.generate


def generate(self, jobs, shape, on_step=None):
    if any("SLOW" in job.prompt for job in jobs):
        import time

        inner = on_step

        def on_step(step, total):
            time.sleep(0.5)
            return inner(step, total) if inner is not None else None

    return _generate(self, jobs, shape, on_step)


pipeline.PipelineRunner.generate = generate
"""


def worker_hook(folder: Path, source: str) -> dict[str, str]:
    """A worker's environment whose Python runs ``source`` at start-up (as sitecustomize.py in ``folder``)."""
    (folder / "sitecustomize.py").write_text(source)
    # The repository after the hook's folder: the hook imports the worker's own modules, before Python adds it.
    return {"PYTHONPATH": os.pathsep.join([str(folder), str(REPO)])}


def slow_hook(folder: Path) -> dict[str, str]:
    """A worker's environment that makes each step of a SLOW job last at least 0.5 s (SLOW_SITECUSTOMIZE)."""
    return worker_hook(folder, SLOW_SITECUSTOMIZE)


def test_sigkill_mid_batch_then_restart_completes_every_job_once(service: RunningService, tmp_path: Path) -> None:
    client = service.new_tenant("kill")
    ids = [client.submit({"prompt": f"SLOW kill {i}", **SMALL, "num_inference_steps": 20})["id"] for i in range(3)]
    worker = service.start_worker(env={**FAST_WORKER, "SDQ_MAX_BATCH_IMAGES": "3", **slow_hook(tmp_path)})
    wait_until(lambda: any(client.get(i)["progress"]["step"] > 0 for i in ids), 120, "generation to start", poll_s=0.1)
    worker.kill()
    worker.wait(timeout=10)
    assert any(s == "RUNNING" for s in statuses(client, ids).values())
    service.start_worker(env=FAST_WORKER)
    wait_until(all_terminal(client, ids), 300, "jobs to finish after the restart")
    assert set(statuses(client, ids).values()) == {"SUCCEEDED"}
    assert executions_per_job(service, ids) == dict.fromkeys(ids, 1)
    assert max(client.get(i)["attempt"] for i in ids) == 2  # taken over once the dead worker's lease ran out


def test_sigterm_finishes_the_running_batch_and_releases_the_rest(service: RunningService, tmp_path: Path) -> None:
    client = service.new_tenant("term")
    # Long enough to be running while the stop hands the rest back (milliseconds: 20 steps of at least 0.5 s), short
    # enough to finish within the 60 s grace.
    slow = {**SMALL, "num_inference_steps": 20}
    ids = [client.submit({"prompt": f"SLOW term {i}", **slow})["id"] for i in range(4)]
    env = {**FAST_WORKER, "SDQ_MAX_BATCH_IMAGES": "1", "SDQ_MAX_BATCH_WAIT_MS": "0", "SDQ_VISIBILITY_TIMEOUT_S": "120"}
    env |= slow_hook(tmp_path)
    log_path = service.state_dir / f"worker-{len(service.workers)}.log"
    worker = service.start_worker(env=env)
    wait_until(lambda: any(client.get(i)["progress"]["step"] > 0 for i in ids), 120, "the first batch", poll_s=0.1)
    running = next(i for i in ids if client.get(i)["progress"]["step"] > 0)
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)

    def visible() -> int:
        attrs = service.boto("sqs").get_queue_attributes(
            QueueUrl=service.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"])

    # The unstarted jobs (the batch claimed ahead among them) go back while the running batch still runs, not
    # when it ends and not after the 120 s visibility timeout: other workers can start them meanwhile.
    wait_until(lambda: visible() == 3, 30, "the unstarted jobs' messages to be visible", poll_s=0.1)
    assert client.get(running)["status"] == "RUNNING"
    assert {client.get(i)["status"] for i in ids if i != running} == {"QUEUED"}
    assert worker.wait(timeout=90) == 0
    assert time.monotonic() - started < 60
    done = [i for i, s in statuses(client, ids).items() if s != "QUEUED"]
    assert done == [running]  # the batch that was running finished and was handed off
    assert visible() == 3
    # The batch claimed ahead went back before the running batch's pipeline call ended (the worker logs in order).
    events = [json.loads(line).get("message") for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert events.index("claimed job handed back unstarted") < events.index("batch")
    service.start_worker(env={**FAST_WORKER, "SDQ_MAX_BATCH_IMAGES": "4"})
    wait_until(all_terminal(client, ids), 300, "the released jobs to finish")
    assert set(statuses(client, ids).values()) == {"SUCCEEDED"}
    assert executions_per_job(service, ids) == dict.fromkeys(ids, 1)
    # The next batch, claimed while the first one ran, was handed back unstarted: no attempt used up.
    assert [client.get(i)["attempt"] for i in ids] == [1, 1, 1, 1]


def test_poison_message_goes_to_the_dlq_and_its_job_fails(service: RunningService) -> None:
    client = service.new_tenant("poison")
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    job = store_queued_job(repo, "poison-tenant", prompt="poison", **SMALL)
    service.boto("sqs").send_message(
        QueueUrl=service.queue_url,
        MessageBody="{this is not a job message",
        MessageAttributes={
            "job_id": {"DataType": "String", "StringValue": job.job_id},
            "tenant": {"DataType": "String", "StringValue": job.tenant},
        },
    )
    worker = service.start_worker(env=FAST_WORKER)
    wait_until(lambda: repo.get(job.job_id).status == JobStatus.FAILED, 120, "the poison job to fail")
    failed = repo.get(job.job_id)
    assert failed.error is not None
    assert failed.error.code == "DEAD_LETTERED"
    # The worker is still alive and still generating.
    healthy = client.submit({"prompt": "after the poison", **SMALL})
    wait_until(all_terminal(client, [healthy["id"]]), 120, "a normal job after the poison message")
    assert client.get(healthy["id"])["status"] == "SUCCEEDED"
    assert worker.poll() is None


def test_cancel_during_generation_leaves_the_job_cancelled_without_outputs(service: RunningService) -> None:
    client = service.new_tenant("cancel-run")
    job = client.submit({"prompt": "cancel me", "width": 512, "height": 512, "num_inference_steps": 60})
    service.start_worker(env=FAST_WORKER)
    wait_until(lambda: client.get(job["id"])["progress"]["step"] > 0, 120, "generation to start", poll_s=0.1)
    client.cancel(job["id"])
    # The worker stops the job's pipeline call at its next step and logs the batch with the job let go.
    wait_until(
        lambda: any(job["id"] in line["job_ids"] and line["cancelled"] == 1 for line in batch_lines(service)),
        60,
        "the worker to let the cancelled job go",
    )
    final = client.get(job["id"])
    assert final["status"] == "CANCELLED"
    assert final["outputs"] == []
    listing = service.boto("s3").list_objects_v2(Bucket=service.env["SDQ_BUCKET"], Prefix="outputs/")
    assert not [o for o in listing.get("Contents", []) if job["id"] in o["Key"]]


def test_second_sigterm_stops_at_once_and_releases_the_running_jobs(service: RunningService) -> None:
    client = service.new_tenant("term2")
    job = client.submit({"prompt": "long", "width": 512, "height": 512, "num_inference_steps": 100})
    worker = service.start_worker(env={**FAST_WORKER, "SDQ_VISIBILITY_TIMEOUT_S": "120", "SDQ_GRACE_S": "120"})
    wait_until(lambda: client.get(job["id"])["progress"]["step"] > 0, 120, "generation to start", poll_s=0.1)
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert time.monotonic() - started < 15
    assert client.get(job["id"])["status"] == "RUNNING"  # interrupted, not finished
    attrs = service.boto("sqs").get_queue_attributes(
        QueueUrl=service.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert int(attrs["ApproximateNumberOfMessages"]) == 1  # released now, not after 120 s


def test_a_job_longer_than_the_visibility_timeout_is_kept_by_the_heartbeat(
    service: RunningService, tmp_path: Path
) -> None:
    clear_worker_logs(service)
    client = service.new_tenant("long")
    # 30 steps of at least 0.5 s: three times the 5 s visibility timeout, however fast the CPU.
    job = client.submit({"prompt": "SLOW long one", **SMALL, "num_inference_steps": 30})
    env = {**FAST_WORKER, "SDQ_VISIBILITY_TIMEOUT_S": "5", **slow_hook(tmp_path)}
    # Two workers: had the message become visible again, the idle one would have received it.
    for _ in range(2):
        service.start_worker(env=env)
    wait_until(all_terminal(client, [job["id"]]), 300, "the long job")
    final = client.get(job["id"])
    assert final["status"] == "SUCCEEDED"
    assert final["timings"]["run_s"] > int(env["SDQ_VISIBILITY_TIMEOUT_S"])  # really outlived it
    assert final["attempt"] == 1
    assert executions_per_job(service, [job["id"]]) == {job["id"]: 1}
    logs = " ".join(p.read_text(errors="replace") for p in service.state_dir.glob("worker-*.log"))
    assert "held by another worker" not in logs


@pytest.mark.parametrize("left_s", [2, 600], ids=["passed", "too-little-for-a-run"])
def test_a_job_that_expired_while_queued_is_skipped_and_marked_expired(
    service: RunningService, receiver: ScriptedReceiver, left_s: int
) -> None:
    """Also a job with minutes left: run, it could finish after DynamoDB's TTL removed it, losing its webhook."""
    clear_worker_logs(service)
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    tenant, client = service.new_named_tenant("expired-tenant")
    receiver.secret = client.webhook_secret()
    expires_at = int(time.time()) + left_s
    job = store_queued_job(repo, tenant, prompt="stale", expires_at=expires_at, callback_url=receiver.url, **SMALL)
    message = QueueMessage(job_id=job.job_id, tenant=job.tenant, request=job.request, enqueued_at=utcnow())
    service.boto("sqs").send_message(QueueUrl=service.queue_url, MessageBody=message.model_dump_json())
    if left_s < 3:
        time.sleep(3)  # its retention passes while it waits in the queue
    service.start_worker(env=FAST_WORKER)
    wait_until(lambda: repo.get(job.job_id).status == JobStatus.FAILED, 120, "the expired job to be skipped")
    error = repo.get(job.job_id).error
    assert error is not None
    assert error.code == "EXPIRED"
    assert batch_lines(service) == []  # no GPU time spent on it
    wait_until(lambda: service.queue_depth() == 0, 30, "its message to be deleted")
    assert_one_failed_webhook(receiver, job.job_id, "EXPIRED")  # its client is told, though the job is past retention


def test_a_healthy_job_dead_lettered_by_crashes_runs_again_and_a_worn_out_one_fails(
    service: RunningService, receiver: ScriptedReceiver
) -> None:
    """SQS counts receives, not failures: a valid message whose job still has attempts left comes back from the
    DLQ; one whose job already used every attempt (it keeps killing workers) ends FAILED."""
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    sqs = service.boto("sqs")
    tenant, client = service.new_named_tenant("dlq-tenant")
    receiver.secret = client.webhook_secret()
    fresh = store_queued_job(repo, tenant, prompt="collateral", **SMALL)
    worn = store_queued_job(repo, tenant, prompt="worn out", callback_url=receiver.url, **SMALL)
    for _ in range(3):  # three claims whose workers died: the lease is over each time
        repo.claim(worn.job_id, worn.tenant, worker_id="dead", lease_s=0, now=time.time())
    for job in (fresh, worn):
        message = QueueMessage(job_id=job.job_id, tenant=job.tenant, request=job.request, enqueued_at=utcnow())
        sqs.send_message(QueueUrl=service.env["SDQ_DLQ_URL"], MessageBody=message.model_dump_json())
    service.start_worker(env=FAST_WORKER)
    wait_until(lambda: repo.get(fresh.job_id).status == JobStatus.SUCCEEDED, 120, "the requeued job to succeed")
    wait_until(lambda: repo.get(worn.job_id).status == JobStatus.FAILED, 60, "the worn-out job to fail")
    error = repo.get(worn.job_id).error
    assert error is not None
    assert error.code == "DEAD_LETTERED"
    assert repo.get(fresh.job_id).attempt == 1
    assert_one_failed_webhook(receiver, worn.job_id, "DEAD_LETTERED")


# The hung worker's PYTHONPATH starts with a folder holding this as sitecustomize.py (Python imports it at start-up):
# the first denoising step of a prompt containing HANG sleeps for an hour, as a wedged GPU call blocks. No test
# branch in the worker itself.
HANG_SITECUSTOMIZE = """
from workflows.generation import pipeline

_generate = pipeline.PipelineRunner.generate


def generate(self, jobs, shape, on_step=None):
    if any("HANG" in job.prompt for job in jobs):
        import time

        def on_step(step, total):
            time.sleep(3600)

    return _generate(self, jobs, shape, on_step)


pipeline.PipelineRunner.generate = generate
"""


def test_a_hung_pipeline_call_makes_the_worker_exit_non_zero_and_its_job_runs_again(
    service: RunningService, tmp_path: Path
) -> None:
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    job = store_queued_job(repo, "watchdog-tenant", prompt="HANG at the first step", **SMALL)
    message = QueueMessage(job_id=job.job_id, tenant=job.tenant, request=job.request, enqueued_at=utcnow())
    service.boto("sqs").send_message(QueueUrl=service.queue_url, MessageBody=message.model_dump_json())
    hook = worker_hook(tmp_path, HANG_SITECUSTOMIZE)
    hung = service.start_worker(env={**FAST_WORKER, "SDQ_STALL_TIMEOUT_S": "3", **hook})
    wait_until(lambda: repo.get(job.job_id).status == JobStatus.RUNNING, 120, "the job to be claimed")
    started = time.monotonic()
    assert hung.wait(timeout=60) == EXIT_HUNG  # the call never returns: only the watchdog ends the process
    assert time.monotonic() - started < 30
    # Its job goes back: another worker takes it over once the dead worker's lease lapses, and it succeeds.
    service.start_worker(env=FAST_WORKER)
    wait_until(lambda: repo.get(job.job_id).status == JobStatus.SUCCEEDED, 120, "the job to run again")
    assert repo.get(job.job_id).attempt == 2


class FakeEcsAgent(ThreadingHTTPServer):
    """The ECS agent's task protection endpoint on 127.0.0.1, recording each PUT body."""

    def __init__(self) -> None:
        self.states: list[dict[str, Any]] = []
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                if self.path == "/task-protection/v1/state":
                    agent.states.append(json.loads(self.rfile.read(length)))
                    self.send_response(200)
                else:
                    self.send_response(404)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def test_a_worker_on_ecs_is_protected_from_scale_in_while_it_has_work_and_let_go_after(
    service: RunningService,
) -> None:
    agent = FakeEcsAgent()
    try:
        client = service.new_tenant("protection-tenant")
        service.start_worker(env={**FAST_WORKER, "ECS_AGENT_URI": agent.uri})
        job = client.submit({"prompt": "protected", **SMALL})
        wait_until(all_terminal(client, [job["id"]]), 120, "the job")
        wait_until(lambda: len(agent.states) >= 2, 30, "the protection to be let go")
        assert agent.states == [{"ProtectionEnabled": True, "ExpiresInMinutes": 60}, {"ProtectionEnabled": False}]
        assert client.get(job["id"])["status"] == "SUCCEEDED"
    finally:
        agent.shutdown()
        agent.server_close()
