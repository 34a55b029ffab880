"""Worker fault handling with the loop run in-process around the real tiny pipeline, so a fault can be injected
where a GPU would raise it: out-of-memory above a batch size, and an error confined to one job; and the idle
worker's warm-up of the shapes it has not compiled yet."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from PIL.Image import Image

from shared.aws import AwsClients
from shared.jobs import JobsRepository
from shared.media import MediaStore
from shared.orchestration import Orchestrator
from shared.queue import Received, WorkerQueue
from shared.settings import Settings
from tests.integration.conftest import RecordingQueue, RunningService, start_service, stop_service
from workflows.generation.pipeline import BatchShape, GenerationOOM, ImageJob, PipelineRunner
from workflows.generation.worker import Worker, WorkerConfig

SMALL = {"width": 256, "height": 256, "num_inference_steps": 2}


class FaultyGpu:
    """The real runner, except that batches above ``oom_above`` images run out of memory and a prompt
    containing ``poison`` makes the whole call fail (as a bad input would)."""

    def __init__(self, runner: PipelineRunner, oom_above: int) -> None:
        self._runner = runner
        self.oom_above = oom_above
        self.calls: list[int] = []

    @property
    def model_name(self) -> str:
        return self._runner.model_name

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
    ) -> dict[str, list[Image]]:
        images = sum(j.num_images for j in jobs)
        self.calls.append(images)
        if images > self.oom_above:
            raise GenerationOOM(images, shape.width, shape.height, "injected: CUDA out of memory")
        if any("poison" in j.prompt for j in jobs):
            raise RuntimeError("injected: this prompt breaks the pipeline")
        return self._runner.generate(jobs, shape, on_step)


class FlakyDeleteQueue(WorkerQueue):
    """SQS as it is on a bad day: the first ``failures`` DeleteMessageBatch calls report every entry as
    failed (and delete nothing), the way a partial batch failure does."""

    def __init__(self, sqs: Any, url: str, failures: int) -> None:
        super().__init__(sqs, url)
        self.failures = failures
        self.refused: list[str] = []

    def delete(self, messages: list[Received]) -> list[str]:
        if self.failures > 0:
            self.failures -= 1
            self.refused += [m.message_id for m in messages]
            return [m.message_id for m in messages]
        return super().delete(messages)


class LostExtensionsQueue(WorkerQueue):
    """SQS seen by a stalled worker: its heartbeat's visibility extensions are lost (refused, as SQS refuses a
    receipt handle once the message was received again), so its message reappears when the receive's visibility
    timeout ends; and its receiver gets nothing after the first message, so another worker picks it up."""

    def __init__(self, sqs: Any, url: str) -> None:
        super().__init__(sqs, url)
        self.first_receipt: dict[str, str] = {}
        self.refused = 0

    def receive(self, *, max_messages: int, wait_s: int, visibility_s: int) -> list[Received]:
        if self.first_receipt:
            time.sleep(wait_s)
            return []
        received = super().receive(max_messages=max_messages, wait_s=wait_s, visibility_s=visibility_s)
        for r in received:
            self.first_receipt.setdefault(r.message_id, r.receipt_handle)
        return received

    def set_visibility(self, messages: list[Received], visibility_s: int) -> list[str]:
        lost = [m for m in messages if self.first_receipt.get(m.message_id) == m.receipt_handle]
        rest = [m for m in messages if m not in lost]
        self.refused += len(lost)
        return [m.message_id for m in lost] + (super().set_visibility(rest, visibility_s) if rest else [])


class DeleteRecordingQueue(WorkerQueue):
    """The real queue, recording the job id of every message it deleted."""

    def __init__(self, sqs: Any, url: str) -> None:
        super().__init__(sqs, url)
        self.deleted: list[str] = []

    def delete(self, messages: list[Received]) -> list[str]:
        failed = super().delete(messages)
        self.deleted += [m.message.job_id for m in messages if m.message is not None and m.message_id not in failed]
        return failed


class SlowGpu(FaultyGpu):
    """The real runner, slowed to ``step_s`` per denoising step: a job that outlasts the visibility timeout."""

    def __init__(self, runner: PipelineRunner, step_s: float) -> None:
        super().__init__(runner, oom_above=64)
        self.step_s = step_s

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
    ) -> dict[str, list[Image]]:
        def slow_step(step: int, total: int) -> None:
            time.sleep(self.step_s)
            if on_step is not None:
                on_step(step, total)

        return super().generate(jobs, shape, slow_step)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    running = start_service(tmp_path_factory.mktemp("sdq-faults"), {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "1000"})
    yield running
    stop_service(running)


@pytest.fixture(scope="module")
def runner() -> PipelineRunner:
    return PipelineRunner.load("tiny")


@pytest.fixture
def run_worker(
    service: RunningService, runner: PipelineRunner, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., tuple[Worker, FaultyGpu]]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    env = service.env
    settings = Settings(
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region=env["AWS_DEFAULT_REGION"],
        table_name=env["SDQ_TABLE_NAME"],
        queue_url=env["SDQ_QUEUE_URL"],
        bucket=env["SDQ_BUCKET"],
        state_machine_arn=env["SDQ_STATE_MACHINE_ARN"],
    )
    started: list[tuple[Worker, threading.Thread]] = []

    def start(
        oom_above: int,
        *,
        failed_deletes: int = 0,
        visibility_s: int = 30,
        gpu: FaultyGpu | None = None,
        queue: WorkerQueue | None = None,
        heartbeat_s: float = 2,
    ) -> tuple[Worker, FaultyGpu]:
        aws = AwsClients(settings)
        gpu = gpu or FaultyGpu(runner, oom_above)
        worker = Worker(
            queue=queue or FlakyDeleteQueue(aws.sqs(), settings.queue_url, failed_deletes),
            repo=JobsRepository(aws.dynamodb(), settings.table_name),
            media=MediaStore(aws.s3(), settings.bucket),
            orchestrator=Orchestrator(aws.stepfunctions(), settings.state_machine_arn),
            generator=gpu,
            config=WorkerConfig(
                max_batch_images=8,
                max_batch_wait_s=1.5,
                receive_wait_s=1,
                visibility_s=visibility_s,
                heartbeat_s=heartbeat_s,
                grace_s=120,
                progress_interval_s=1,
                xray=False,
            ),
        )
        thread = threading.Thread(target=worker.run, daemon=True, name=f"run-{worker.config.worker_id}")
        thread.start()
        started.append((worker, thread))
        return worker, gpu

    yield start
    for worker, thread in started:
        worker.request_stop()
        thread.join(timeout=60)
        assert not thread.is_alive()


def wait_terminal(client: Any, ids: list[str], timeout_s: float = 120) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = {i: client.get(i) for i in ids}
        if all(j["status"] in {"SUCCEEDED", "FAILED", "CANCELLED"} for j in jobs.values()):
            return jobs
        time.sleep(0.3)
    raise AssertionError("jobs did not finish")


def test_oom_splits_the_batch_and_every_job_completes(
    service: RunningService, run_worker: Callable[..., tuple[Worker, FaultyGpu]]
) -> None:
    client = service.new_tenant("oom")
    ids = [client.submit({"prompt": f"fox {i}", **SMALL})["id"] for i in range(4)]
    _worker, gpu = run_worker(2)
    jobs = wait_terminal(client, ids)
    assert {j["status"] for j in jobs.values()} == {"SUCCEEDED"}
    assert gpu.calls[0] == 4  # one call for the whole batch, which ran out of memory ...
    assert sorted(gpu.calls[1:]) == [2, 2]  # ... then the halves
    sfn = service.boto("stepfunctions")
    for job_id in ids:
        arn = service.env["SDQ_STATE_MACHINE_ARN"].replace(":stateMachine:", ":execution:") + f":{job_id}-1"
        handoff = sfn.describe_execution(executionArn=arn)["input"]
        assert len(handoff.encode()) < 2048  # S3 keys and job facts only, far below the 256 KiB limit
        assert json.loads(handoff)["staging_keys"] == [f"staging/{job_id}/1/0.png"]


def test_a_job_too_big_for_memory_fails_alone_and_the_rest_of_its_batch_completes(
    service: RunningService, run_worker: Callable[..., tuple[Worker, FaultyGpu]]
) -> None:
    client = service.new_tenant("oom-one")
    ids = [
        client.submit({"prompt": "small a", **SMALL})["id"],
        client.submit({"prompt": "too big", **SMALL, "num_images": 3})["id"],
        client.submit({"prompt": "small b", **SMALL})["id"],
    ]
    run_worker(2)
    jobs = wait_terminal(client, ids)
    assert jobs[ids[0]]["status"] == "SUCCEEDED"
    assert jobs[ids[2]]["status"] == "SUCCEEDED"
    assert jobs[ids[1]]["status"] == "FAILED"
    assert jobs[ids[1]]["error"]["code"] == "OUT_OF_MEMORY"


def test_an_error_confined_to_one_job_fails_only_that_job(
    service: RunningService, run_worker: Callable[..., tuple[Worker, FaultyGpu]]
) -> None:
    client = service.new_tenant("one-bad")
    ids = [client.submit({"prompt": p, **SMALL})["id"] for p in ["good one", "poison", "good two"]]
    run_worker(8)
    jobs = wait_terminal(client, ids)
    assert [jobs[i]["status"] for i in ids] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert jobs[ids[1]]["error"]["code"] == "GENERATION_FAILED"
    assert "breaks the pipeline" in jobs[ids[1]]["error"]["message"]


def test_a_failed_delete_means_a_redelivery_that_is_a_no_op(
    service: RunningService, run_worker: Callable[..., tuple[Worker, FaultyGpu]]
) -> None:
    client = service.new_tenant("undeleted")
    job_id = client.submit({"prompt": "delete me", **SMALL})["id"]
    worker, gpu = run_worker(8, failed_deletes=1, visibility_s=5)
    assert wait_terminal(client, [job_id])[job_id]["status"] == "SUCCEEDED"
    # The message comes back after its visibility timeout; the worker sees the job is done and deletes it.
    deadline = time.monotonic() + 60
    while service.queue_depth() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert service.queue_depth() == 0
    queue = worker.queue
    assert isinstance(queue, FlakyDeleteQueue)
    assert len(queue.refused) == 1  # the hand-off's delete really failed ...
    assert gpu.calls == [1]  # ... and yet the job was generated once
    assert client.get(job_id)["attempt"] == 1
    names = [
        e["name"]
        for e in service.boto("stepfunctions").list_executions(stateMachineArn=service.env["SDQ_STATE_MACHINE_ARN"])[
            "executions"
        ]
    ]
    assert [n for n in names if n.startswith(job_id)] == [f"{job_id}-1"]
    assert worker.batches[0].jobs == 1


class TakenOverGpu(FaultyGpu):
    """The real runner, but while the batch generates another worker takes its job over (as after a lapsed
    lease), and the step callback runs so the progress write finds the job gone."""

    def __init__(self, runner: PipelineRunner, repo: JobsRepository, tenant: str) -> None:
        super().__init__(runner, oom_above=8)
        self._repo = repo
        self._tenant = tenant

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
    ) -> dict[str, list[Image]]:
        for job in jobs:
            self._repo.claim(job.key, self._tenant, worker_id="worker-b", lease_s=300, now=time.time() + 1000)
        if on_step is not None:
            on_step(1, shape.steps)
        return super().generate(jobs, shape, None)


def test_a_job_taken_over_mid_batch_is_dropped_but_its_message_is_kept_for_the_new_owner(
    service: RunningService, runner: PipelineRunner, run_worker: Callable[..., tuple[Worker, FaultyGpu]]
) -> None:
    tenant, client = service.new_named_tenant("takeover")
    job_id = client.submit({"prompt": "taken over", **SMALL})["id"]
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    worker, _gpu = run_worker(8, visibility_s=5, gpu=TakenOverGpu(runner, repo, tenant))
    deadline = time.monotonic() + 60
    while not (worker.batches and worker.held_count() == 0) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker.batches
    assert worker.held_count() == 0
    job = repo.get(job_id)
    assert job.status.value == "RUNNING"
    assert job.attempt == 2  # the new owner's claim stands
    item = service.boto("dynamodb").get_item(TableName=service.table, Key={"pk": {"S": f"JOB#{job_id}"}})["Item"]
    assert item["worker_id"]["S"] == "worker-b"
    executions = service.boto("stepfunctions").list_executions(stateMachineArn=service.env["SDQ_STATE_MACHINE_ARN"])
    assert not [e for e in executions["executions"] if e["name"].startswith(job_id)]  # no hand-off
    # Not deleted: if worker-b dies too, this message is the job's only way back.
    assert service.queue_depth() == 1


def test_a_lost_visibility_extension_does_not_let_another_worker_run_the_job_again(
    service: RunningService, runner: PipelineRunner, run_worker: Callable[..., tuple[Worker, FaultyGpu]]
) -> None:
    """The lease in the table, not the message, says who runs a job. When SQS refuses a worker's visibility
    extensions (a stalled heartbeat: the message reappeared and another worker received it), the first worker
    keeps renewing its lease, so the second finds the job held and waits instead of generating it again."""
    client = service.new_tenant("lost-ext")
    job_id = client.submit({"prompt": "a slow fox", **SMALL, "num_inference_steps": 8})["id"]
    lost = LostExtensionsQueue(service.boto("sqs"), service.queue_url)
    # 8 steps of 1 s against a 3 s visibility timeout and lease, renewed every second.
    _first, slow = run_worker(8, visibility_s=3, heartbeat_s=1, gpu=SlowGpu(runner, step_s=1.0), queue=lost)
    deadline = time.monotonic() + 60
    while client.get(job_id)["status"] != "RUNNING":
        assert time.monotonic() < deadline, "the first worker did not claim the job"
        time.sleep(0.1)
    seen = RecordingQueue(service.boto("sqs"), service.queue_url)
    _second, other = run_worker(8, visibility_s=3, queue=seen)
    job = wait_terminal(client, [job_id])[job_id]
    assert job["status"] == "SUCCEEDED"
    assert lost.refused > 0  # the extensions were lost ...
    assert job_id in seen.job_ids  # ... so the message came back, and the second worker received it
    assert slow.calls == [1]
    assert other.calls == []  # the second worker received the message but never generated the job
    assert job["attempt"] == 1


class CancelThenOomGpu(FaultyGpu):
    """The real runner, except that the first call cancels its first job through the API, lets the step callback
    find the job cancelled, and then runs out of memory, so the batch is split with that job dropped."""

    def __init__(self, runner: PipelineRunner, cancel: Callable[[str], Any]) -> None:
        super().__init__(runner, oom_above=64)
        self._cancel = cancel

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
    ) -> dict[str, list[Image]]:
        if not self.calls:
            self.calls.append(sum(j.num_images for j in jobs))
            self._cancel(jobs[0].key)
            if on_step is not None:
                on_step(1, shape.steps)  # the progress write finds the job cancelled
            raise GenerationOOM(len(jobs), shape.width, shape.height, "injected: CUDA out of memory")
        return super().generate(jobs, shape, on_step)


def test_a_job_cancelled_in_a_batch_that_fails_is_let_go_when_the_batch_is_split(
    service: RunningService, runner: PipelineRunner, run_worker: Callable[..., tuple[Worker, FaultyGpu]]
) -> None:
    """A job cancelled while its batch runs out of memory is not generated again in the halves, and its message
    is deleted then, not kept hidden (and extended) for as long as the worker lives."""
    client = service.new_tenant("cancel-split")
    ids = [client.submit({"prompt": f"split fox {i}", **SMALL})["id"] for i in range(3)]
    queue = DeleteRecordingQueue(service.boto("sqs"), service.queue_url)
    worker, gpu = run_worker(8, gpu=CancelThenOomGpu(runner, client.cancel), queue=queue)
    jobs = wait_terminal(client, ids)
    cancelled = [i for i in ids if jobs[i]["status"] == "CANCELLED"]
    assert len(cancelled) == 1
    assert [jobs[i]["status"] for i in ids if i not in cancelled] == ["SUCCEEDED", "SUCCEEDED"]
    assert gpu.calls[0] == 3
    assert sum(gpu.calls[1:]) == 2  # the halves generate the two live jobs, never the cancelled one
    deadline = time.monotonic() + 30
    while (worker.held_count() or set(ids) - set(queue.deleted)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker.held_count() == 0  # the cancelled job's message is not held ...
    assert set(ids) <= set(queue.deleted)  # ... but deleted, like the two finished jobs' messages


def take_visible(service: RunningService) -> list[str]:
    """The job ids of the messages visible in the queue now, deleted (the test's own clean-up)."""
    sqs = service.boto("sqs")
    got = sqs.receive_message(QueueUrl=service.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    messages = got.get("Messages", [])
    for m in messages:
        sqs.delete_message(QueueUrl=service.queue_url, ReceiptHandle=m["ReceiptHandle"])
    return [json.loads(m["Body"])["job_id"] for m in messages]


class PollInFlightQueue(WorkerQueue):
    """SQS with a long poll's answer still on its way: the receive that gets a message holds it (invisible, as SQS
    does once it hands a message to a poll) until ``answer`` is set."""

    def __init__(self, sqs: Any, url: str) -> None:
        super().__init__(sqs, url)
        self.caught = threading.Event()
        self.answer = threading.Event()

    def receive(self, *, max_messages: int, wait_s: int, visibility_s: int) -> list[Received]:
        received = super().receive(max_messages=max_messages, wait_s=wait_s, visibility_s=visibility_s)
        if received:
            self.caught.set()
            self.answer.wait(timeout=30)
        return received


def test_a_message_a_stopping_workers_poll_was_handed_is_visible_again_once_it_exits(
    service: RunningService, run_worker: Callable[..., tuple[Worker, FaultyGpu]]
) -> None:
    """An idle worker stopped while its long poll is open: the job sent meanwhile is handed to that poll. The
    worker waits for the poll to return and makes the message visible again before it exits, instead of leaving it
    hidden for the whole visibility timeout."""
    client = service.new_tenant("stop-mid-poll")
    queue = PollInFlightQueue(service.boto("sqs"), service.queue_url)
    worker, gpu = run_worker(8, queue=queue, visibility_s=300)
    (thread,) = [t for t in threading.enumerate() if t.name == f"run-{worker.config.worker_id}"]
    job_id = client.submit({"prompt": "sent during the stop", **SMALL})["id"]
    assert queue.caught.wait(timeout=30)
    worker.request_stop()
    threading.Timer(1.0, queue.answer.set).start()  # the poll's answer arrives after the stop
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert queue.answer.is_set()  # the worker waited for its poll ...
    assert client.get(job_id)["status"] == "QUEUED"
    assert gpu.calls == []
    assert take_visible(service) == [job_id]  # ... and the message is visible again as it exits
    client.cancel(job_id)


class BrokenGpu(FaultyGpu):
    """A GPU after a sticky CUDA error (an illegal memory access, an Xid): every call fails at once."""

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
    ) -> dict[str, list[Image]]:
        self.calls.append(sum(j.num_images for j in jobs))
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_broken_device_hands_its_jobs_back_and_its_worker_stops_as_faulty(
    service: RunningService, runner: PipelineRunner, run_worker: Callable[..., tuple[Worker, FaultyGpu]]
) -> None:
    """The worker cannot tell a bad job from a broken device until jobs fail one after another: at most the first
    job fails; the rest go back to the queue for another worker (their messages visible), and the worker stops on
    its own, marked faulty (``sdq worker`` then exits with status 70 and the container is replaced)."""
    client = service.new_tenant("broken-gpu")
    ids = [client.submit({"prompt": f"doomed fox {i}", **SMALL})["id"] for i in range(6)]
    worker, _gpu = run_worker(8, gpu=BrokenGpu(runner, oom_above=8))
    deadline = time.monotonic() + 60
    while not (worker.faulty and worker.held_count() == 0) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker.faulty
    assert worker.held_count() == 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = {i: client.get(i) for i in ids}
        if all(j["status"] in {"QUEUED", "FAILED"} for j in jobs.values()):
            break
        time.sleep(0.3)
    statuses = [j["status"] for j in jobs.values()]
    assert statuses.count("FAILED") <= 1, statuses
    assert statuses.count("QUEUED") >= len(ids) - 1, statuses  # each to run again elsewhere, at once
    queued = {i for i, j in jobs.items() if j["status"] == "QUEUED"}
    assert queued <= set(take_visible(service))  # their messages are visible now: another worker runs them at once
    for job_id in queued:
        client.cancel(job_id)


class ColdGpu(FaultyGpu):
    """The real runner with ``cold`` compiled shapes left to warm. A compile takes minutes on a CPU, so each warm-up
    here is one short real call, as the runner's is (``PipelineRunner.warm_next``: three steps at the shape). It
    records how many messages the worker held as each warm-up began, and how often it was asked with none left."""

    def __init__(self, runner: PipelineRunner, cold: int) -> None:
        super().__init__(runner, oom_above=8)
        self.cold = cold
        self.held_at_warm_ups: list[int] = []
        self.asked_with_none_left = 0
        self.worker: Worker | None = None

    def warm_next(self) -> bool:
        if self.cold == 0:
            self.asked_with_none_left += 1
            return False
        deadline = time.monotonic() + 5
        while self.worker is None and time.monotonic() < deadline:  # set as soon as run_worker returns
            time.sleep(0.01)
        assert self.worker is not None
        self.held_at_warm_ups.append(self.worker.held_count())
        warm_up = ImageJob("warm-up", "warm-up", "", seed=0, num_images=1)
        self._runner.generate([warm_up], BatchShape(256, 256, 1, 7.5, "euler"))
        self.cold -= 1
        return True


def test_an_idle_worker_warms_its_cold_shapes_one_at_a_time_and_never_while_it_holds_a_job(
    service: RunningService, runner: PipelineRunner, run_worker: Callable[..., tuple[Worker, FaultyGpu]]
) -> None:
    """The runner warms its smallest bucket before the worker starts; the worker warms the other buckets on turns
    when it holds no message, so a job is never kept waiting behind a warm-up it could have run before, and it
    stops asking once the runner says every shape is warm."""
    client = service.new_tenant("cold-shapes")
    ids = [client.submit({"prompt": f"fox {i}", **SMALL})["id"] for i in range(3)]
    cold = ColdGpu(runner, cold=2)
    worker, _ = run_worker(8, gpu=cold)
    cold.worker = worker
    jobs = wait_terminal(client, ids)
    assert {j["status"] for j in jobs.values()} == {"SUCCEEDED"}
    deadline = time.monotonic() + 30
    while not (cold.cold == 0 and cold.asked_with_none_left) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cold.cold == 0, "the idle worker did not warm every cold shape"
    time.sleep(2.5)  # two more idle turns (the batch wait is at most a second)
    assert cold.asked_with_none_left == 1  # told none was left, it stopped asking
    assert cold.held_at_warm_ups == [0, 0]
