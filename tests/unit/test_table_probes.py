"""The results table (issue 24): an A/B probe run is never the current figure, and the stock torch.compile
baseline measured in the same run is quoted beside plain diffusers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.reports import Report
from benchmarks.table import current_reports, render_table


def worker(name: str, date: str, images_per_s: float, **extra: Any) -> Report:
    data = {
        "best": {"batch_size": 16, "images_per_s": images_per_s},
        "baseline": {"batch_size": 1, "images_per_s": 1.3},
        "config": {"width": 512, "height": 512, "steps": 30, "scheduler": "euler"},
        "precision": "fp16",
        "acceleration": {"applied": ["compile", "cuda_graphs"]},
        **extra,
    }
    return Report(Path(f"/r/2026-12-06-h100/{name}.json"), "worker", "sd15", "h100", date, data)


def test_a_probe_run_is_never_the_current_figure() -> None:
    exact = worker("exact", "2026-12-06T11:49:34", 6.92, probes={"inductor": {}, "cudnn_benchmark": False})
    frozen = worker("frozen", "2026-12-06T11:56:28", 6.99, probes={"inductor": {"freezing": True}})
    cudnn = worker("cudnn", "2026-12-06T11:55:23", 6.93, probes={"inductor": {}, "cudnn_benchmark": True})
    assert current_reports([exact, cudnn, frozen]) == [exact]


def test_the_stock_compile_baseline_is_quoted_at_the_best_batch() -> None:
    stock = {"results": [{"batch_size": 1, "images_per_s": 4.07}, {"batch_size": 16, "images_per_s": 5.99}]}
    table = render_table([worker("exact", "2026-12-06T11:49:34", 6.92, stock_compile=stock)], Path("/r"))
    assert "plain diffusers 1.30 img/s at batch 1; stock torch.compile 5.99 img/s at batch 16" in table
