"""`sdq demo`, the newcomer's end-to-end check, passes and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_sdq_demo_passes(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", "--out", str(tmp_path / "images")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=580,
        env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "SDQ_STATE_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert "demo passed" in result.stdout
    table = [line for line in result.stdout.splitlines() if line.startswith("│")]
    batches = {line.split("│")[1].strip(): line.split("│")[3].strip() for line in table}
    # Compatible jobs ran together: the two 256x256 jobs in one batch, the two 320x256 ones in another.
    assert batches["fox"] == batches["owl x2"] != "-"
    assert batches["lighthouse"] == batches["cat (no callback)"] != batches["fox"]
    assert len(list((tmp_path / "images").glob("*"))) == 5
