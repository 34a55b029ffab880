"""The worker container's health check: ``python -m workflows.generation.health`` exits 0 while the worker is
healthy, 1 when it is not (Docker's HEALTHCHECK and the ECS task definition's HealthCheck run it).

The worker's watchdog thread touches ``SDQ_HEALTH_FILE`` every second while no pipeline call is hung. A file older
than :data:`MAX_AGE_S` means the process is wedged past what its own watchdog can see (no thread of it runs), and
ECS replaces the task. No file yet is healthy: the worker is still loading its model. Imports nothing heavy (no
torch): it runs every 30 seconds beside the worker.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from shared.settings import get_settings

MAX_AGE_S = 60.0


def touch(path: Path) -> None:
    """Mark the worker alive now."""
    path.touch()


def healthy(path: Path, now: float | None = None) -> bool:
    """False only when ``path`` exists and was last touched more than ``MAX_AGE_S`` ago."""
    try:
        touched = os.path.getmtime(path)
    except FileNotFoundError:
        return True
    return (time.time() if now is None else now) - touched <= MAX_AGE_S


def main() -> int:
    health_file = get_settings().worker.health_file
    if health_file is None:
        return 0  # nothing to check: the worker keeps no health file
    if healthy(Path(health_file)):
        return 0
    print(f"sdq worker unhealthy: {health_file} not touched for over {MAX_AGE_S:.0f}s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
