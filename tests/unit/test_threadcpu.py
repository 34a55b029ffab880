"""CPU time per worker thread group (what the worker logs with each batch) and the loop bench's per-batch figure
built from those running totals."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.loop_bench import thread_cpu_per_batch
from benchmarks.threadcpu import cpu_seconds_by_thread_group, thread_group


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


def _stat_line(tid: int, comm: str, utime: int, stime: int) -> str:
    # Linux's /proc/<pid>/task/<tid>/stat: pid (comm) state ppid ... utime is field 14, stime field 15.
    rest = ["S", "1", "1", "1", "0", "-1", "4194560", "100", "0", "0", "0", str(utime), str(stime)] + ["0"] * 39
    return f"{tid} ({comm}) " + " ".join(rest) + "\n"


def test_a_task_folder_is_parsed_by_field_position_even_with_odd_command_names(tmp_path: Path) -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    # Thread ids no live Python thread has: both count as native threads.
    for tid, comm, utime, stime in [(999_001, "cuda) (evt 1", 2 * ticks, ticks), (999_002, "torch", ticks, 0)]:
        (tmp_path / str(tid)).mkdir()
        (tmp_path / str(tid) / "stat").write_text(_stat_line(tid, comm, utime, stime))
    report = cpu_seconds_by_thread_group(str(tmp_path))
    assert report["native"] == 4.0


def test_an_unreadable_or_malformed_task_folder_gives_an_empty_report_not_an_error(tmp_path: Path) -> None:
    assert cpu_seconds_by_thread_group(str(tmp_path / "absent")) == {}
    (tmp_path / "123").mkdir()
    (tmp_path / "123" / "stat").write_text("")
    assert cpu_seconds_by_thread_group(str(tmp_path)) == {}
    (tmp_path / "123" / "stat").write_text("123 (short) S 1 1\n")
    assert cpu_seconds_by_thread_group(str(tmp_path)) == {}


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
    # A group whose thread ended in between shrinks: clamped at zero, not reported negative.
    shrunk = [{"thread_cpu_s": {"native": 3.0}}, {"thread_cpu_s": {"native": 2.0}}]
    assert thread_cpu_per_batch(shrunk)["native"] == 0.0
    assert thread_cpu_per_batch([{}, {}]) == {}
