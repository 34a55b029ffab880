"""CPU time per worker thread group (what the worker logs with each batch) and the loop bench's per-batch figure
built from those running totals."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from workflows.generation.threadcpu import cpu_seconds_by_thread_group, thread_group
from workflows.loopbench import thread_cpu_per_batch


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_pool_threads_are_grouped_under_their_prefix() -> None:
    assert thread_group("sdq-table_12") == "sdq-table"
    assert thread_group("sdq-receive") == "sdq-receive"
    assert thread_group("MainThread") == "MainThread"


def test_a_busy_pool_and_a_busy_thread_show_their_own_cpu_time() -> None:
    before = cpu_seconds_by_thread_group()
    release = threading.Event()
    with ThreadPoolExecutor(2, thread_name_prefix="sdq-test-pool") as pool:
        list(pool.map(_burn, [0.3, 0.3]))
        idle = threading.Thread(target=release.wait, name="sdq-test-idle")
        idle.start()
        try:
            after = cpu_seconds_by_thread_group()
        finally:
            release.set()
            idle.join()
    # Both pool threads' 0.3 s, counted at the kernel's clock-tick resolution (10 ms on Linux).
    assert 0.5 <= after["sdq-test-pool"] < 1.5
    assert after["sdq-test-idle"] < 0.05
    assert "sdq-test-pool" not in before
    # The process total covers every thread, including those of earlier tests that have ended.
    assert after["process"] >= after["sdq-test-pool"] + after["MainThread"] - 0.05


def test_the_loop_bench_reports_cpu_per_batch_from_the_first_to_the_last_batch_line() -> None:
    batches = [
        {"thread_cpu_s": {"MainThread": 10.0, "sdq-table": 1.0, "native": 2.0, "process": 13.0}},
        {"thread_cpu_s": {"MainThread": 12.0, "sdq-table": 1.2, "sdq-finish": 0.1, "native": 2.0, "process": 15.3}},
        {"thread_cpu_s": {"MainThread": 14.0, "sdq-table": 1.4, "sdq-finish": 0.3, "native": 2.2, "process": 17.9}},
    ]
    per_batch = thread_cpu_per_batch(batches)
    assert per_batch["MainThread"] == 2.0
    assert per_batch["sdq-table"] == 0.2
    assert per_batch["sdq-finish"] == 0.15  # a group that started after the first batch counts from zero
    assert per_batch["native"] == 0.1
    assert per_batch["other_python_threads"] == 0.35  # table + finish, not the GPU thread or native threads
    assert thread_cpu_per_batch(batches[:1]) == {}
    assert thread_cpu_per_batch([{}, {}]) == {}
