"""Fair share between tenants on the local stack: real HTTP, the local cloud's fair queue, a real worker process
(tiny model on CPU).

Tenant A queues 40 jobs; once the worker is busy with them (two batches started), tenant B submits one. B's
message reaches the worker as soon as it has room in its window (the fair queue hands it out before A's older
messages), and the worker's next batch is led by B (the tenant with the least GPU work). So at most one batch is
formed between B's submit and B's own: the one taken as the worker made room. All of A's jobs still finish. ``-s``
prints the dwell times (queued -> started) per tenant; docs/worker.md quotes them.
"""

from __future__ import annotations

import json
import signal
import statistics
import time
from datetime import datetime
from typing import Any

from cli.client import SdqClient
from tests.integration.conftest import RunningService, service_fixture

WORKER_ENV = {
    "SDQ_MAX_BATCH_IMAGES": "4",
    "SDQ_MAX_BATCH_WAIT_MS": "300",
    "SDQ_RECEIVE_WAIT_S": "1",
    "SDQ_VISIBILITY_TIMEOUT_S": "30",
    "SDQ_HEARTBEAT_S": "5",
    "SDQ_PROGRESS_INTERVAL_S": "1",
}
SHAPE = {"width": 256, "height": 256, "num_inference_steps": 4}
BACKLOG = 40

service = service_fixture("sdq-fair", {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "1000"})


def wait_for(client: SdqClient, ids: list[str], done: set[str], timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        views = [client.get(i) for i in ids]
        if all(v["status"] in done for v in views):
            return views
        time.sleep(0.3)
    raise AssertionError(f"timed out: {[client.get(i)['status'] for i in ids]}")


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def started_at(view: dict[str, Any]) -> float:
    """When the job was claimed (turned RUNNING), as epoch seconds."""
    return epoch(view["created_at"]) + float(view["timings"]["queued_s"])


def batches(service: RunningService) -> list[list[str]]:
    """The job ids of each batch the worker ran, from its ``batch`` log lines, in order."""
    found = []
    for log in sorted(service.state_dir.glob("worker-*.log")):
        for raw in log.read_text(errors="replace").splitlines():
            if raw.startswith("{") and json.loads(raw).get("message") == "batch":
                found.append(json.loads(raw)["job_ids"])
    return found


def dwell(views: list[dict[str, Any]]) -> str:
    waits = sorted(float(v["timings"]["queued_s"]) for v in views)
    return f"n={len(waits)} min={waits[0]:.1f} median={statistics.median(waits):.1f} max={waits[-1]:.1f} s"


def test_a_tenant_behind_a_40_job_backlog_starts_in_the_next_batch(service: RunningService) -> None:
    a = service.new_tenant("fair-a")
    b = service.new_tenant("fair-b")
    worker = service.start_worker(env=WORKER_ENV)
    # The model loads and the shape is warmed up before the backlog forms.
    warm = wait_for(a, [a.submit({"prompt": "warm-up", **SHAPE})["id"]], {"SUCCEEDED"}, timeout_s=240)

    # A's backlog, queued whole while the (idle) worker is paused; then B's job, once the worker is busy with A.
    worker.send_signal(signal.SIGSTOP)
    try:
        backlog = [a.submit({"prompt": f"a fox {i}", **SHAPE})["id"] for i in range(BACKLOG)]
    finally:
        worker.send_signal(signal.SIGCONT)
    wait_for(a, backlog[:8], {"RUNNING", "POSTPROCESSING", "SUCCEEDED"}, timeout_s=120)
    lone = b.submit({"prompt": "a lone owl", **SHAPE})["id"]

    b_view = wait_for(b, [lone], {"SUCCEEDED"}, timeout_s=120)[0]
    a_views = wait_for(a, backlog, {"SUCCEEDED"}, timeout_s=240)  # all of A's jobs still finish
    assert worker.poll() is None, "the worker died"
    print(f"\ndwell (queued -> started): A {dwell(a_views)}; B {dwell([b_view])}")

    runs = batches(service)
    started = {v["id"]: started_at(v) for v in [*warm, *a_views, b_view]}
    [own] = [i for i, ids in enumerate(runs) if lone in ids]
    submitted = epoch(b_view["created_at"])
    # Batches formed (claimed) after B's submit and before B's own batch.
    between = [ids for ids in runs[:own] if min(started[i] for i in ids) > submitted]
    a_after = sum(1 for i in backlog if started[i] > started[lone])
    print(f"batches formed between B's submit and B's batch: {len(between)}; A's jobs started after B: {a_after}")
    story = [(round(min(started[i] for i in ids) - submitted, 2), lone in ids) for ids in runs]
    assert len(between) <= 1, f"batches by claim time after B's submit (B's marked): {story}"
    assert a_after > 0, "B's job came last: it never went ahead of A's backlog"
