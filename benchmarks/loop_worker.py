"""The worker process of ``sdq bench loop``: the service's worker, with CPU time per thread in each batch log line.

The production worker logs no thread accounting; the benchmark injects it here (see :mod:`benchmarks.threadcpu`).
"""

from __future__ import annotations

import sys

from benchmarks.threadcpu import cpu_seconds_by_thread_group
from handlers.worker import main

if __name__ == "__main__":
    sys.exit(main(batch_log_fields=lambda: {"thread_cpu_s": cpu_seconds_by_thread_group()}))
