"""Where benchmark reports live: ``benchmarks/results/<date>-<card>/``, one folder per run date and card.

Imports nothing heavy (no torch), so the loop bench, the cost model's tests and the table generator can use it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def file_slug(text: str) -> str:
    """A lowercase, dash-separated piece of a report's file name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "model"


def card_slug(device_name: str | None) -> str:
    """``NVIDIA H100 80GB HBM3`` or ``H100`` -> ``h100``, ``NVIDIA H200`` -> ``h200``, no GPU -> ``cpu``."""
    if not device_name:
        return "cpu"
    return file_slug(device_name.replace("NVIDIA", "").strip().split(" ")[0])


def run_folder(started: datetime, device_name: str | None, root: Path | None = None) -> Path:
    """The folder a report of a run started at ``started`` on ``device_name`` goes to by default."""
    return (root or RESULTS_DIR) / f"{started:%Y-%m-%d}-{card_slug(device_name)}"


@dataclass(frozen=True)
class Report:
    """One results file, read: what it measured, on which card, when."""

    path: Path
    kind: str  # worker, loop, startup, quality (a CFG-truncation / feature-reuse probe)
    model: str
    card: str
    date: str  # ISO 8601, UTC
    data: dict[str, Any]


def read_report(path: Path) -> Report | None:
    """The report in ``path``, or None for a JSON file that is no benchmark report."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        return None
    kind = data.get("kind")
    if kind in ("worker", "startup"):
        return Report(path, kind, str(data["arch"]), card_slug(data["device"]["short"]), str(data["date"]), data)
    if kind == "cfgtrunc-probe":
        arch = str(data["config"]["arch"])
        return Report(path, "quality", arch, card_slug(data["device"]["short"]), str(data["started"]), data)
    if kind == "worker-loop":
        return Report(path, "loop", str(data["model"]), card_slug(data.get("gpu_name")), str(data["date"]), data)
    return None


def all_reports(root: Path | None = None) -> list[Report]:
    """Every report under ``root``'s run folders (default: benchmarks/results/), oldest first."""
    found = (read_report(path) for path in sorted((root or RESULTS_DIR).glob("*/*.json")))
    return sorted((r for r in found if r is not None), key=lambda r: (r.date, r.path.name))
