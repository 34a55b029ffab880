"""The worker's stdout stays one JSON document per line while its threads emit metrics and log at once: the GPU
sampler, the batch loop and the claim threads' finished jobs write EMF lines while other threads log, some lines
longer than the pipe's buffer. A line split by another's loses its datapoints in CloudWatch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 400
CLAIM_THREADS = LOGGING_THREADS = 2  # one GPU sampler and one batch loop, as in the worker

# Run as the worker runs: stdout unbuffered into a pipe, the lock shared as its main() shares it.
WORKER = f"""
import threading
from datetime import UTC, datetime

from aws_lambda_powertools import Logger, Metrics

from shared.contracts import JobStatus
from shared.observability import share_lock_with_logging
from tests.unit.workerfakes import held
from workflows.generation.batchreport import BatchReport, log_batch
from workflows.generation.gpumetrics import GpuSample, emit
from workflows.jobmetrics import record_finished

logger = Logger(service="sdq-worker")
share_lock_with_logging()
ROUNDS = {ROUNDS}
jobs = [held() for _ in range(4)]
now = datetime.now(UTC)


def gpu_sampler():
    for _ in range(ROUNDS):
        emit(GpuSample(utilization_pct=87.0, memory_used_pct=61.0))


def batch_loop():
    metrics = Metrics(namespace="sdq", service="worker")
    for n in range(ROUNDS):
        log_batch(n + 1, jobs, BatchReport(jobs=4, images=4, seconds=1.0), metrics)


def claim_thread():
    for n in range(ROUNDS):
        record_finished(f"job-{{n}}", JobStatus.FAILED, now, now, tenant="t-1", error_code="OUT_OF_MEMORY")


def logging_thread():
    for n in range(ROUNDS):
        # Every tenth line longer than a pipe's buffer (64 KiB): written in pieces unless others wait for it.
        logger.info("progress", n=n, detail="x" * (100_000 if n % 10 == 0 else 100))


threads = [threading.Thread(target=gpu_sampler), threading.Thread(target=batch_loop)]
threads += [threading.Thread(target=claim_thread) for _ in range({CLAIM_THREADS})]
threads += [threading.Thread(target=logging_thread) for _ in range({LOGGING_THREADS})]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_every_line_is_whole_while_threads_emit_metrics_and_log_at_once() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    env.pop("POWERTOOLS_METRICS_DISABLED", None)
    env.pop("POWERTOOLS_DEV", None)
    run = subprocess.run([sys.executable, "-c", WORKER], cwd=REPO, env=env, capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    lines = run.stdout.decode().splitlines()
    broken = []
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            broken.append(line[:120])
    assert broken == [], f"{len(broken)} of {len(lines)} lines are not JSON"
    emf = [p for p in parsed if "_aws" in p]
    assert sum("GpuMemoryUsed" in p for p in emf) == ROUNDS
    assert sum("BatchImages" in p for p in emf) == ROUNDS
    assert sum(p.get("message") == "batch" for p in parsed) == ROUNDS
    assert sum("JobsFinished" in p for p in emf) == CLAIM_THREADS * ROUNDS
    assert sum(p.get("message") == "progress" for p in parsed) == LOGGING_THREADS * ROUNDS
