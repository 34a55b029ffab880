"""How fast the result cache answers, beside the miss path: ``python -m benchmarks.cache_bench``.

Starts the local stack with a tiny-model worker (as ``sdq up`` does), then:

- misses: jobs with distinct seeds, one at a time, from ``POST /v1/jobs`` until ``GET`` says SUCCEEDED (queue,
  worker, state machine);
- the source: one job with a fixed seed, waited for;
- hits: the same request again, a few hundred times, from one client and then from several at once; a hit is
  SUCCEEDED in the submit's own answer, so its time to SUCCEEDED is the submit's round trip (checked on each one);
- hits with a callback: the same, each also starting its ``job.succeeded`` notice execution (the receiver counts
  the webhooks that arrive).

Writes a JSON report to ``benchmarks/results/<date>-cpu/`` with the machine, its load average before and after (the
machine may be shared) and the date, and prints a table. Not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.local_submit import LOOSE_LIMITS, latency_summary
from benchmarks.reports import run_folder
from benchmarks.stack import bench_stack_config
from localcloud.receiver import ScriptedReceiver
from localcloud.service import LocalService, start_local_service

BODY = {"prompt": "a red fox in the snow", "model": "tiny", "width": 256, "height": 256, "num_inference_steps": 2}
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def load() -> dict[str, Any]:
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "uptime": uptime}


def until_finished(http: httpx.Client, job_id: str, timeout_s: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.02)
    raise RuntimeError(f"job {job_id} did not finish in {timeout_s} s")


def misses(http: httpx.Client, count: int, first_seed: int) -> dict[str, Any]:
    latencies = []
    gpu_s = []
    began = time.monotonic()
    for i in range(count):
        t0 = time.monotonic()
        job = http.post("/v1/jobs", json=BODY | {"seed": first_seed + i}).json()
        done = until_finished(http, job["id"])
        latencies.append(time.monotonic() - t0)
        if done["status"] != "SUCCEEDED" or done["cache"]["hit"]:
            raise RuntimeError(f"a miss did not generate: {done['status']} {done['cache']}")
        gpu_s.append(done["usage"]["gpu_s"])
    summary = latency_summary(latencies, time.monotonic() - began)
    return summary | {"gpu_s_mean": round(sum(gpu_s) / len(gpu_s), 4)}


def hits(api_url: str, key: str, body: dict[str, Any], count: int, threads: int) -> dict[str, Any]:
    """``count`` hits split over ``threads`` clients; each must be SUCCEEDED in its own answer."""
    latencies: list[float] = []
    wrong: list[str] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        with httpx.Client(base_url=api_url, headers={"x-api-key": key}, timeout=30) as http:
            for _ in range(n):
                t0 = time.monotonic()
                job = http.post("/v1/jobs", json=body).json()
                took = time.monotonic() - t0
                with lock:
                    latencies.append(took)
                    if job["status"] != "SUCCEEDED" or not job["cache"]["hit"] or job["usage"]["gpu_s"] != 0:
                        wrong.append(job["id"])

    began = time.monotonic()
    workers = [threading.Thread(target=run, args=(count // threads,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if wrong:
        raise RuntimeError(f"{len(wrong)} submits were no hit, e.g. {wrong[0]}")
    return latency_summary(latencies, time.monotonic() - began) | {"threads": threads}


def run(service: LocalService, args: argparse.Namespace) -> dict[str, Any]:
    with httpx.Client(base_url=service.api_url, headers={"x-api-key": service.api_key}, timeout=60) as http:
        until_finished(http, http.post("/v1/jobs", json=BODY).json()["id"])  # the worker's model is loaded
        miss = misses(http, args.misses, first_seed=1000)
        source = until_finished(http, http.post("/v1/jobs", json=BODY | {"seed": 7}).json()["id"])
    result: dict[str, Any] = {"misses": miss, "source_job": source["id"], "hits": []}
    for threads in args.threads:
        result["hits"].append(hits(service.api_url, service.api_key, BODY | {"seed": 7}, args.hits, threads))
    receiver = ScriptedReceiver().start()
    try:
        with httpx.Client(base_url=service.api_url, headers={"x-api-key": service.api_key}, timeout=60) as http:
            receiver.secret = http.get("/v1/webhook-secret").json()["secret"]
            body = BODY | {"seed": 8, "callback_url": receiver.url}
            until_finished(http, http.post("/v1/jobs", json=body).json()["id"])
        callback = hits(service.api_url, service.api_key, body, args.callback_hits, 1)
        deadline = time.monotonic() + 120
        while len(receiver.deliveries) < args.callback_hits + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        callback["webhooks_received"] = len(receiver.deliveries) - 1  # the source's own is the first
        callback["webhooks_verified"] = sum(1 for d in receiver.deliveries if d.verified) - 1
    finally:
        receiver.stop()
    result["hits_with_callback"] = callback
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache_bench", description=__doc__)
    parser.add_argument("--hits", type=int, default=300, help="hits per phase")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4], help="clients of each hit phase")
    parser.add_argument("--callback-hits", type=int, default=100)
    parser.add_argument("--misses", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="folder of the report (default results/<date>-cpu/)")
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    workdir = Path(tempfile.mkdtemp(prefix="sdq-cachebench-"))
    before = load()
    with (workdir / "worker.log").open("wb") as log:
        service = start_local_service(bench_stack_config(workdir, caps=LOOSE_LIMITS, with_worker=True, worker_log=log))
        try:
            result = run(service, args)
        finally:
            service.stop()
    report = {
        "kind": "result-cache",
        "date": started.isoformat(),
        "machine": machine(),
        "load_before": before,
        "load_after": load(),
        "target": "a hit reaches SUCCEEDED in <= 150 ms at p99",
        **result,
    }
    folder = args.out or run_folder(started, None)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"result-cache-{started:%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"{'path':<28} {'count':>5} {'per s':>6} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    rows = [("miss (submit to SUCCEEDED)", result["misses"])]
    rows += [(f"hit, {h['threads']} client(s)", h) for h in result["hits"]]
    rows += [("hit with callback", result["hits_with_callback"])]
    for name, s in rows:
        print(
            f"{name:<28} {s['count']:>5} {s['per_s']:>6} {s['p50_ms']:>7} {s['p90_ms']:>7} {s['p99_ms']:>7} "
            f"{s['max_ms']:>7}"
        )
    print(f"load average before {before['loadavg']}, after {report['load_after']['loadavg']}; report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
