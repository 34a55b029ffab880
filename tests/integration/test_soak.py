"""The small soak CI runs: 100 jobs at a steady rate on loopback, the worker SIGKILLed at least twice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_soak_with_worker_kills_keeps_every_invariant(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "soak", "--jobs", "100", "--kill-worker-every", "15", "--rate", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=850,
        env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "SDQ_STATE_DIR": str(tmp_path)},
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert summary["ok"]
    assert summary["jobs"] == 100
    assert summary["kills"] >= 2
    assert "all invariants hold" in result.stdout
