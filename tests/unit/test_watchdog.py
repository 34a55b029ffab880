"""The watchdog and the container health check: a call with no step past the bound is given up on (its jobs let go,
the process ended with status 70); while none hangs the health file stays fresh, and a stale one fails the check."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
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


class Clock:
    """The watchdog's clock, moved by the test: how long a call stalls is what the test says, however slowly the
    machine runs the threads."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def eventually(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def judged_twice(alive: Path, ended: Ended) -> None:
    """Wait until the watchdog has judged the clock as it is now: two touches of the health file (the second one's
    judgment began after the first touch, so after anything the test did before), or its exit."""
    for _ in range(2):
        os.utime(alive, (0, 0))
        eventually(lambda: ended.done.is_set() or alive.stat().st_mtime != 0, "a watchdog round")
        if ended.done.is_set():
            return


def test_a_call_without_a_step_past_the_bound_lets_go_and_exits_70_and_the_health_file_stops(tmp_path: Path) -> None:
    alive, ended, clock = tmp_path / "alive", Ended(), Clock()
    dog = Watchdog(0.4, ended.on_hang, clock=clock, exit_process=ended.exit, alive_file=alive)
    dog.start()
    eventually(alive.exists, "the health file written")  # idle between calls: healthy
    clock.now += 5
    judged_twice(alive, ended)
    assert ended.codes == []  # however long the worker idles
    dog.beat()  # a call starts
    for _ in range(3):  # steps keep it alive
        clock.now += 0.3
        judged_twice(alive, ended)
        assert ended.codes == []
        dog.beat()
    assert ended.codes == []
    clock.now += 0.5  # then no step for longer than 0.4 s
    assert ended.done.wait(5)
    assert ended.codes == [EXIT_HUNG]
    assert ended.hangs[0] > 0.4
    assert ended.hangs == [pytest.approx(0.5)]  # once, with the stall as the clock saw it
    touched = alive.stat().st_mtime
    time.sleep(0.3)
    assert alive.stat().st_mtime == touched  # no longer marked alive


def test_a_call_that_returns_is_never_taken_for_a_hang(tmp_path: Path) -> None:
    alive, ended, clock = tmp_path / "alive", Ended(), Clock()
    dog = Watchdog(0.3, ended.on_hang, clock=clock, exit_process=ended.exit, alive_file=alive)
    dog.start()
    eventually(alive.exists, "the health file written")
    dog.beat()
    dog.idle()
    clock.now += 10
    judged_twice(alive, ended)
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
