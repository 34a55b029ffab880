"""CPU time per thread group, from Linux's per-thread accounting (``/proc/self/task/<tid>/stat``).

The worker logs these running totals with every batch. In CPython the loop's AWS threads (claims, progress
writes, uploads, Step Functions starts, deletes) compete with the GPU thread for the GIL, so their CPU time per
batch is the budget the GPU thread can lose between its kernel launches; ``sdq bench loop`` reports it per
batch beside the duty cycle. Threads are grouped by name: a ``ThreadPoolExecutor``'s ``<prefix>_<n>`` threads
count as ``<prefix>``, threads Python did not start (torch's and CUDA's) as ``native``, and ``process`` is the
whole process (``time.process_time``), so a thread that has ended counts there only. Helper processes (PNG
encoding) are not included. Elsewhere than Linux, or where ``/proc`` cannot be read, the report is empty: it
is a log field and must never fail the caller. One reading costs well under a millisecond at the worker's
thread count (raw ``os.read`` of each small stat file).
"""

from __future__ import annotations

import os
import re
import threading
import time

_TASKS = "/proc/self/task"
_POOL_THREAD = re.compile(r"(.+)_\d+")


def thread_group(name: str) -> str:
    """A thread's group: ``sdq-table_3`` -> ``sdq-table``; other names as they are."""
    match = _POOL_THREAD.fullmatch(name)
    return match.group(1) if match else name


def cpu_seconds_by_thread_group(tasks: str = _TASKS) -> dict[str, float]:
    """User + system CPU seconds so far, per thread group of this process (see the module docstring)."""
    try:
        return _read(tasks)
    except Exception:  # an unreadable or odd /proc must not cost the caller anything
        return {}


def _read(tasks: str) -> dict[str, float]:
    if not os.path.isdir(tasks):
        return {}
    ticks = os.sysconf("SC_CLK_TCK")
    groups = {t.native_id: thread_group(t.name) for t in threading.enumerate() if t.native_id is not None}
    totals: dict[str, float] = {}
    for tid in os.listdir(tasks):
        try:
            fd = os.open(f"{tasks}/{tid}/stat", os.O_RDONLY)
        except OSError:  # the thread ended meanwhile
            continue
        try:
            stat = os.read(fd, 4096)
        finally:
            os.close(fd)
        # Fields after the parenthesised command name (which may hold spaces): state is field 3, utime 14, stime 15.
        fields = stat[stat.rindex(b")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / ticks
        group = groups.get(int(tid), "native")
        totals[group] = totals.get(group, 0.0) + seconds
    totals["process"] = time.process_time()
    return {name: round(seconds, 3) for name, seconds in sorted(totals.items())}
