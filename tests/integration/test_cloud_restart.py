"""Scenario 18: the local cloud is restarted under a running worker.

``sdq up`` is killed (no clean shutdown) and started again on the same ``--cloud-port``. The local cloud keeps
its state in memory, so the restarted one is a fresh stack; it has the same names (see
``localcloud.provision.name_local_resources``), so the worker that kept running finds its queue, table,
bucket and state machine again. The worker must ride out the outage with growing back-off, never exit, and
then run new jobs.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.integration.conftest import start_service, stop_service, wait_until
from tests.integration.test_worker import FAST_WORKER, SMALL

STACK_NAMES = ("SDQ_QUEUE_URL", "SDQ_DLQ_URL", "SDQ_TABLE_NAME", "SDQ_BUCKET", "SDQ_STATE_MACHINE_ARN")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_events(log: Path, message: str) -> list[dict[str, object]]:
    events = []
    for raw in log.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            event = json.loads(raw)
            if event.get("message") == message:
                events.append(event)
    return events


def test_the_worker_rides_out_a_local_cloud_restart_and_resumes(tmp_path: Path) -> None:
    cloud_port = free_port()
    state = tmp_path / "sdq"
    first = start_service(state, args=["--cloud-port", str(cloud_port)])
    second = None
    try:
        worker = first.start_worker(env=FAST_WORKER)
        worker_log = state / "worker-0.log"
        client = first.new_tenant("restart")
        before = client.submit({"prompt": "before the restart", **SMALL})["id"]
        wait_until(lambda: client.get(before)["status"] == "SUCCEEDED", 180, "the first job")

        first.process.kill()  # the local cloud dies with its process: connections refused from here on
        first.process.wait(timeout=10)
        (state / "local.json").unlink()
        wait_until(lambda: len(worker_events(worker_log, "receive failed; retrying")) >= 4, 60, "failed receives")
        assert worker.poll() is None, "the worker exited when the cloud went away"

        second = start_service(state, args=["--cloud-port", str(cloud_port)])
        assert {k: second.env[k] for k in STACK_NAMES} == {k: first.env[k] for k in STACK_NAMES}
        client = second.new_tenant("restart")
        after = client.submit({"prompt": "after the restart", **SMALL})["id"]
        wait_until(lambda: client.get(after)["status"] == "SUCCEEDED", 180, "the job submitted after the restart")
        assert worker.poll() is None
        job = client.get(after)
        assert job["attempt"] == 1
        assert len(job["outputs"]) == 1

        # Back-off: each wait is drawn from [b/2, b] with b doubling from 0.5 s, so the waits grow.
        delays = [float(str(e["retry_in_s"])) for e in worker_events(worker_log, "receive failed; retrying")]
        for i, delay in enumerate(delays[:6]):
            assert 0.25 * 2**i - 0.01 <= delay <= 0.5 * 2**i + 0.01, delays
        resumed = worker_events(worker_log, "queue reachable again; resuming")
        assert len(resumed) == 1
        assert int(str(resumed[0]["failed_receives"])) == len(delays)
        batches = [e for e in worker_events(worker_log, "batch")]
        assert [b["job_ids"] for b in batches] == [[before], [after]]
    finally:
        for running in (first, second):
            if running is not None:
                stop_service(running)
