"""The watchdog and the container health check: a call with no step past the bound is given up on (its jobs let go,
the process ended with status 70); while none hangs the health file stays fresh, and a stale one fails the check."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from workflows.generation.health import MAX_AGE_S, healthy, main
from workflows.generation.watchdog import EXIT_HUNG, Watchdog


class Ended:
    def __init__(self) -> None:
        self.hangs: list[float] = []
        self.codes: list[int] = []
        self.done = threading.Event()

    def on_hang(self, stalled_s: float) -> None:
        self.hangs.append(stalled_s)

    def exit(self, code: int) -> None:
        self.codes.append(code)
        self.done.set()


def test_a_call_without_a_step_past_the_bound_lets_go_and_exits_70_and_the_health_file_stops(tmp_path: Path) -> None:
    alive, ended = tmp_path / "alive", Ended()
    dog = Watchdog(0.4, ended.on_hang, exit_process=ended.exit, alive_file=alive)
    dog.start()
    time.sleep(0.3)
    assert alive.exists()  # idle between calls: healthy
    dog.beat()  # a call starts
    for _ in range(3):  # steps keep it alive
        time.sleep(0.2)
        dog.beat()
    assert ended.codes == []
    assert ended.done.wait(5)  # then no step for longer than 0.4 s
    assert ended.codes == [EXIT_HUNG]
    assert ended.hangs[0] > 0.4
    touched = alive.stat().st_mtime
    time.sleep(0.3)
    assert alive.stat().st_mtime == touched  # no longer marked alive


def test_a_call_that_returns_is_never_taken_for_a_hang(tmp_path: Path) -> None:
    ended = Ended()
    dog = Watchdog(0.3, ended.on_hang, exit_process=ended.exit)
    dog.start()
    dog.beat()
    dog.idle()
    time.sleep(0.8)
    dog.stop()
    assert ended.codes == []


def test_the_health_check_fails_only_on_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    alive = tmp_path / "alive"
    assert healthy(alive)  # not written yet: still loading the model
    alive.touch()
    assert healthy(alive)
    stale = time.time() - MAX_AGE_S - 5
    os.utime(alive, (stale, stale))
    assert not healthy(alive)
    monkeypatch.setenv("SDQ_HEALTH_FILE", str(alive))
    assert main() == 1
    alive.touch()
    assert main() == 0
