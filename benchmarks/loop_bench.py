"""The worker-loop benchmark behind ``sdq bench loop``: GPU duty cycle of the real worker under a full queue.

Nothing is replaced: the local cloud (moto server, real ASL execution, in-process Lambdas) runs in this process
and the API in processes of its own; ``jobs`` requests are submitted through the HTTP API before the worker
starts, so the queue is saturated from the first receive, and then one worker process (the service's worker
with CPU time per thread in its batch log, ``benchmarks/loop_worker.py``) drains it: long-poll,
batch, claim, one pipeline call per batch, PNG encoding, S3 uploads, Step Functions starts and message
deletes, as in production.

The figures come from the worker's own batch log lines (``started_at``/``ended_at`` of each pipeline call,
epoch seconds): the duty cycle is the time inside pipeline calls divided by the wall time from the first
call's start to the last call's end, so model loading and compile warm-up before the first batch do not count,
and everything between calls (batch forming, claims, logging) does. Where NVML is importable (the GPU
machines), the GPU's own utilisation counter is sampled over the same window as a cross-check. The batch lines
also carry the worker's CPU time per thread group, from which the report gives CPU seconds per batch: the GPU
thread's, and that of the worker's other Python threads, which compete with it for the GIL.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import platform
import signal
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.reports import file_slug, run_folder
from benchmarks.stack import bench_stack_config
from cli.client import Endpoint, SdqClient
from localcloud.service import start_local_service
from shared.contracts import TERMINAL

logger = logging.getLogger("benchmarks.loop_bench")

_PROMPTS = (
    "a lighthouse on a cliff at dusk, oil painting",
    "a red fox in fresh snow, telephoto photograph",
    "isometric city block, clean vector illustration",
    "a bowl of ramen on a wooden table, studio light",
)


@dataclass
class LoopBenchConfig:
    model: str = "tiny"
    jobs: int = 32
    max_batch_images: int = 8
    width: int = 512
    height: int = 512
    steps: int = 30
    worker_env: dict[str, str] = field(default_factory=dict)  # e.g. SDQ_COMPILE=1
    timeout_s: float = 900.0
    out_dir: Path | None = None  # default: benchmarks/results/<date>-<card>/


def run_loop_bench(config: LoopBenchConfig) -> dict[str, Any]:
    """Run the whole service locally, fill the queue, drain it with one worker process; return the report."""
    started = datetime.now(UTC)
    workdir = Path(tempfile.mkdtemp(prefix="sdq-loopbench-"))
    worker_log_path = workdir / "worker.log"
    caps = str(max(1000, config.jobs * 2))
    service_config = bench_stack_config(workdir, caps=caps, with_worker=False, model=config.model)
    with worker_log_path.open("wb") as worker_log:
        service_config.worker_log = worker_log
        service = start_local_service(service_config)
        try:
            client = SdqClient(Endpoint(service.api_url, service.api_key))
            ids = _submit_all(client, config)
            logger.info("%d jobs queued; starting the worker", len(ids))
            worker = service.start_worker(
                module="benchmarks.loop_worker",
                env={
                    "SDQ_MAX_BATCH_IMAGES": str(config.max_batch_images),
                    "PYTHONUNBUFFERED": "1",
                    **config.worker_env,
                },
            )
            sampler = _GpuSampler()
            sampler.start()
            try:
                finished = _wait_terminal(client, ids, config.timeout_s, worker)
            finally:
                sampler.stop()
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
                    worker.wait(timeout=120)
        finally:
            service.stop()
    events = _log_events(worker_log_path)
    result = summarise(events, finished, sampler.samples)
    result.update(
        {
            "kind": "worker-loop",
            "date": started.isoformat(timespec="seconds"),
            "model": config.model,
            "shape": {"width": config.width, "height": config.height, "steps": config.steps},
            "jobs": config.jobs,
            "max_batch_images": config.max_batch_images,
            "worker_env": config.worker_env,
            "host": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "replaced": "nothing: real worker process, real local cloud (moto) and API on this machine",
        }
    )
    out_dir = config.out_dir or run_folder(started, result.get("gpu_name"))
    out_dir.mkdir(parents=True, exist_ok=True)
    device = file_slug(str(result.get("gpu_name") or "cpu"))
    path = out_dir / f"loop-{file_slug(config.model)}-{device}-{started.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    result["path"] = str(path)
    return result


def summarise(
    events: list[dict[str, Any]], statuses: dict[str, str], gpu_samples: list[tuple[float, float]]
) -> dict[str, Any]:
    """The report's figures from the worker's log events, the jobs' final statuses and NVML samples."""
    batches = sorted((e for e in events if e.get("message") == "batch"), key=lambda e: float(e["started_at"]))
    by_status: dict[str, int] = {}
    for status in statuses.values():
        by_status[status] = by_status.get(status, 0) + 1
    out: dict[str, Any] = {"statuses": by_status, "batches": len(batches)}
    started = next((e for e in events if e.get("message") == "batch limit"), {})
    out["gpu_name"] = started.get("gpu")
    out["encode_processes"] = started.get("encode_processes")
    out["model_note"] = started.get("note")  # the loaded model's own note (noise models say so)
    if not batches:
        return out
    first, last = float(batches[0]["started_at"]), float(batches[-1]["ended_at"])
    window = max(last - first, 1e-9)
    inside = sum(float(b["seconds"]) for b in batches)
    images = sum(int(b["images"]) for b in batches)
    gaps = [float(b["started_at"]) - float(a["ended_at"]) for a, b in itertools.pairwise(batches)]
    claims = [float(b.get("claim_s", 0.0)) for b in batches]
    out.update(
        {
            "images": images,
            "window_s": round(window, 3),
            "pipeline_s": round(inside, 3),
            "duty_cycle": round(inside / window, 4),
            "images_per_s_loop": round(images / window, 3),
            "images_per_s_pipeline": round(images / inside, 3) if inside else None,
            "batch_sizes": sorted({int(b["images"]) for b in batches}),
            "gap_s": _spread(gaps),
            "claim_s": _spread(claims),
            "batch_s": _spread([float(b["seconds"]) for b in batches]),
        }
    )
    # Steady state: full batches after the first (which pays warm-up), per pipeline call.
    full = max(int(b["images"]) for b in batches)
    steady = [b for b in batches[1:] if int(b["images"]) == full]
    if steady:
        steady_s = statistics.fmean(float(b["seconds"]) for b in steady)
        out["steady_state"] = {
            "batches": len(steady),
            "images": full,
            "seconds_per_batch": round(steady_s, 4),
            "images_per_s": round(full / steady_s, 3),
        }
    cpu = thread_cpu_per_batch(batches)
    if cpu:
        out["thread_cpu_per_batch_s"] = cpu
    inside_window = [u for t, u in gpu_samples if first <= t <= last]
    if inside_window:
        out["nvml_gpu_utilisation"] = {
            "mean_percent": round(statistics.fmean(inside_window), 1),
            "samples": len(inside_window),
            "note": "NVML 'utilization.gpu': share of time at least one kernel ran, sampled every 0.1 s",
        }
    return out


# Thread groups that are not the worker's own Python threads besides the GPU thread (MainThread runs the loop).
_NOT_COMPETING = {"MainThread", "native", "process"}


def thread_cpu_per_batch(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """CPU seconds per batch by worker thread group, between the first and the last batch's log lines.

    Each batch line carries the worker's running totals (``thread_cpu_s``); the difference covers every batch
    after the first and what ran between them. ``other_python_threads`` sums the groups that compete with the
    GPU thread (``MainThread``) for the GIL: the AWS threads, and the finishers' PNG encoding when it runs in
    threads (helper processes are not counted), not torch's native threads. A group's total counts live threads
    only, so one whose thread ended in between can shrink; it is clamped at zero.
    """
    if len(batches) < 2 or not batches[0].get("thread_cpu_s") or not batches[-1].get("thread_cpu_s"):
        return {}
    before, after = batches[0]["thread_cpu_s"], batches[-1]["thread_cpu_s"]
    n = len(batches) - 1
    per_batch = {g: round(max(0.0, float(after[g]) - float(before.get(g, 0.0))) / n, 4) for g in sorted(after)}
    per_batch["other_python_threads"] = round(sum(v for g, v in per_batch.items() if g not in _NOT_COMPETING), 4)
    return per_batch


def format_loop_report(result: dict[str, Any]) -> str:
    lines = [
        f"worker loop, model {result['model']} ({result.get('gpu_name') or 'cpu'}), {result['jobs']} jobs, "
        f"batch limit {result['max_batch_images']}: {result['statuses']}",
    ]
    if result.get("model_note"):
        lines.append(f"note: {result['model_note']}")
    if "duty_cycle" in result:
        lines.append(
            f"duty cycle {result['duty_cycle'] * 100:.1f}% over {result['window_s']} s "
            f"({result['batches']} batches of {result['batch_sizes']} images); "
            f"{result['images_per_s_loop']} img/s through the loop, {result['images_per_s_pipeline']} inside calls"
        )
        lines.append(f"between calls: {result['gap_s']}; claims: {result['claim_s']}")
        if "steady_state" in result:
            st = result["steady_state"]
            lines.append(
                f"steady state ({st['batches']} full batches after the first): {st['seconds_per_batch']} s per "
                f"batch of {st['images']}, {st['images_per_s']} img/s"
            )
    if "thread_cpu_per_batch_s" in result:
        cpu = result["thread_cpu_per_batch_s"]
        lines.append(
            f"CPU per batch: GPU thread {cpu.get('MainThread', 0.0)} s, the worker's other Python threads "
            f"{cpu['other_python_threads']} s (they compete for the GIL), native threads {cpu.get('native', 0.0)} s; "
            f"by group: {cpu}"
        )
    if "nvml_gpu_utilisation" in result:
        lines.append(f"NVML GPU utilisation over the window: {result['nvml_gpu_utilisation']['mean_percent']}%")
    return "\n".join(lines)


def _submit_all(client: SdqClient, config: LoopBenchConfig) -> list[str]:
    def submit(i: int) -> str:
        body = {
            "prompt": f"{_PROMPTS[i % len(_PROMPTS)]}, variation {i}",
            "width": config.width,
            "height": config.height,
            "num_inference_steps": config.steps,
            "seed": 1000 + i,
        }
        return str(client.submit(body)["id"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(submit, range(config.jobs)))


def _wait_terminal(client: SdqClient, ids: list[str], timeout_s: float, worker: Any) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    status = dict.fromkeys(ids, "QUEUED")
    with ThreadPoolExecutor(8) as pool:
        while True:
            open_ids = [i for i, s in status.items() if s not in TERMINAL]
            if not open_ids:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(open_ids)} of {len(ids)} jobs unfinished after {timeout_s} s")
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with code {worker.returncode}; see its log")
            for job_id, job in zip(open_ids, pool.map(client.get, open_ids), strict=True):
                status[job_id] = str(job["status"])
            time.sleep(1.0)


def _log_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for raw in path.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            try:
                events.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
    return events


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "mean": round(statistics.fmean(values), 4),
        "max": round(max(values), 4),
        "min": round(min(values), 4),
    }


class _GpuSampler:
    """Samples NVML's GPU utilisation every 0.1 s on a thread; does nothing where NVML is not available."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML library, no driver or no GPU: the cross-check is simply absent
            return

        def loop() -> None:
            while not self._stop.wait(0.1):
                rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
                self.samples.append((time.time(), float(rates.gpu)))

        self._thread = threading.Thread(target=loop, name="sdq-nvml", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
