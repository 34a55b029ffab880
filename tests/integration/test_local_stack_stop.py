"""`sdq up` stops the whole stack, its worker included, on Ctrl-C and on SIGTERM, also when started in the
background by a shell (which starts it with SIGINT ignored): no process it started (worker, API processes, the
Step Functions process) outlives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import REPO

pytestmark = pytest.mark.slow


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


def workers(pid: int) -> set[int]:
    """The worker processes among ``pid``'s children (the API serves from child processes too)."""
    return {child for child in children(pid) if b"handlers.worker" in Path(f"/proc/{child}/cmdline").read_bytes()}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def start_up(log_path: Path, preexec: Callable[[], None] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """`sdq up` with its worker; returns the process and the worker's pid once both run."""
    tmp_path = log_path.parent
    env = {**os.environ, "SDQ_STATE_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--port", "0"],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=preexec,
    )
    log.close()  # the child has its own copy
    deadline = time.monotonic() + 120
    while not ((tmp_path / "local.json").exists() and workers(proc.pid)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(log_path.read_text()[-3000:])
        time.sleep(0.2)
    (worker,) = workers(proc.pid)
    return proc, worker


def stops_with_its_worker(proc: subprocess.Popen[bytes], worker: int, log_path: Path, signum: int) -> None:
    """Send ``signum`` to `sdq up`; it exits 0 and every process it had started ends."""
    started = children(proc.pid)  # the worker, the API processes, the Step Functions process
    assert worker in started
    assert len(started) >= 3, started
    proc.send_signal(signum)
    try:
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
        deadline = time.monotonic() + 10
        while any(alive(child) for child in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker), "the worker outlived `sdq up`"
        assert not [child for child in started if alive(child)], "a process of the stack outlived `sdq up`"
        assert "stopping" in log_path.read_text()
    finally:  # a failure leaves no process behind
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for child in started:
            if alive(child):
                os.kill(child, signal.SIGKILL)


def test_a_worker_that_dies_is_replaced_as_ecs_would_and_stops_with_the_stack(tmp_path: Path) -> None:
    log_path = tmp_path / "up.log"
    proc, worker = start_up(log_path)
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while not (workers(proc.pid) - {worker}) and time.monotonic() < deadline:
        time.sleep(0.2)
    replacements = workers(proc.pid) - {worker}
    assert len(replacements) == 1, log_path.read_text()[-3000:]
    assert "starting another worker" in log_path.read_text()
    stops_with_its_worker(proc, replacements.pop(), log_path, signal.SIGTERM)


def test_sigterm_stops_the_stack_and_its_worker(tmp_path: Path) -> None:
    up_log = tmp_path / "up.log"
    proc, worker = start_up(up_log)
    # Its generation yields the CPU to what answers clients (the cloud in `sdq up`'s process, the API processes).
    own = os.getpriority(os.PRIO_PROCESS, proc.pid)
    priorities = {child: os.getpriority(os.PRIO_PROCESS, child) for child in children(proc.pid)}
    stops_with_its_worker(proc, worker, up_log, signal.SIGTERM)
    assert priorities.pop(worker) == min(19, own + 10)
    assert set(priorities.values()) == {own}


def test_ctrl_c_stops_it_when_a_shell_started_it_in_the_background(tmp_path: Path) -> None:
    up_log = tmp_path / "up.log"
    proc, worker = start_up(up_log, preexec=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    stops_with_its_worker(proc, worker, up_log, signal.SIGINT)
