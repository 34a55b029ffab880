"""``sdq bench loop`` on CPU with the tiny model: the duty-cycle benchmark runs the real loop end to end.

A smoke run (the figures on CPU say nothing about a GPU): it must drain the queue it filled, write its JSON and
report figures that are consistent with each other and with the worker's batch log.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SDQ_BENCH_LOOP = [sys.executable, "-m", "cli.main", "bench", "loop"]
SMALL_SHAPE = ["--width", "256", "--height", "256", "--steps", "2"]
# The GPU default (PNG encoding in spawned helper processes), forced on CPU so CI runs that path too.
ENCODE_IN_PROCESSES = ["--worker-env", "SDQ_ENCODE_PROCESSES=2"]


def test_bench_loop_drains_a_full_queue_with_the_real_worker_and_reports_its_duty_cycle(tmp_path: Path) -> None:
    run = subprocess.run(
        [*SDQ_BENCH_LOOP, "--jobs", "12", "--batch", "4", *SMALL_SHAPE, *ENCODE_IN_PROCESSES, "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    [report_path] = tmp_path.glob("loop-tiny-cpu-*.json")
    report = json.loads(report_path.read_text())
    assert report["statuses"] == {"SUCCEEDED": 12}
    assert report["images"] == 12
    # A full queue and a batch limit of 4: every call is a full batch.
    assert report["batch_sizes"] == [4]
    assert report["batches"] == 3
    assert 0 < report["pipeline_s"] <= report["window_s"]
    assert abs(report["duty_cycle"] - report["pipeline_s"] / report["window_s"]) < 0.01
    assert report["images_per_s_loop"] <= report["images_per_s_pipeline"]
    assert report["gap_s"]["min"] >= 0
    assert "noise" in report["model_note"]
    assert "duty cycle" in run.stdout
    assert report["worker_env"] == {"SDQ_ENCODE_PROCESSES": "2"}
    assert report["encode_processes"] == 2
    # CPU per batch by worker thread: the GPU thread runs the pipeline; the AWS threads claim, upload and start
    # executions meanwhile (their share is what competes with the GPU thread for the GIL).
    cpu = report["thread_cpu_per_batch_s"]
    assert cpu["MainThread"] > 0
    assert cpu["other_python_threads"] > 0
    assert cpu["sdq-table"] + cpu["sdq-finish"] <= cpu["other_python_threads"] + 1e-6  # sums of rounded values
    assert "CPU per batch" in run.stdout
