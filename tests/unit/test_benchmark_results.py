"""The results folder: its layout, and the README table generated from it (fails when the table is stale)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from benchmarks.reports import RESULTS_DIR, all_reports, card_slug, read_report, run_folder
from benchmarks.table import README, current_reports, main, render_table, with_table


def test_the_readme_table_is_what_the_generator_makes_from_the_results() -> None:
    text = README.read_text(encoding="utf-8")
    assert with_table(text, render_table(all_reports())) == text, "run: python -m benchmarks.table"
    assert main(["--check"]) == 0


def test_every_report_sits_in_the_folder_of_its_date_and_card() -> None:
    reports = all_reports()
    assert {r.kind for r in reports} == {"worker", "loop", "startup", "quality"}
    for report in reports:
        assert report.path.parent.name == f"{report.date[:10]}-{report.card}", report.path
        assert report.card in {"h100", "h200"}
    assert not list(RESULTS_DIR.parent.glob("*.json")), "reports belong in results/<date>-<card>/"


def test_cards_and_run_folders_are_named_from_the_device() -> None:
    assert card_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert card_slug("NVIDIA H200") == "h200"
    assert card_slug(None) == "cpu"
    started = datetime(2026, 11, 25, 23, 59, tzinfo=UTC)
    assert run_folder(started, "NVIDIA H200", Path("/r")) == Path("/r/2026-11-25-h200")
    assert run_folder(started, None) == RESULTS_DIR / "2026-11-25-cpu"


def _report(folder: Path, name: str, date: str, arch: str = "sd15", device: str = "NVIDIA H200") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    card = {"name": device, "short": device.split()[-1]}
    path.write_text(json.dumps({"kind": "worker", "arch": arch, "date": date, "device": card}))
    return path


def test_current_means_the_newest_report_per_benchmark_model_and_card(tmp_path: Path) -> None:
    old = _report(tmp_path / "2026-11-29-h200", "worker-sd15-h200-a.json", "2026-11-29T10:00:00+00:00")
    new = _report(tmp_path / "2026-12-05-h200", "worker-sd15-h200-b.json", "2026-12-05T10:00:00+00:00")
    h100 = _report(tmp_path / "2026-11-25-h100", "w.json", "2026-11-25T10:00:00+00:00", device="NVIDIA H100")
    sdxl = _report(tmp_path / "2026-11-29-h200", "x.json", "2026-11-29T11:00:00+00:00", arch="sdxl")
    (tmp_path / "2026-11-29-h200" / "other.json").write_text("[1, 2]")  # not a report: left out
    reports = all_reports(tmp_path)
    assert [r.path for r in reports] == [h100, old, sdxl, new]
    assert {r.path for r in current_reports(reports)} == {new, h100, sdxl}
    assert read_report(tmp_path / "2026-11-29-h200" / "other.json") is None


def test_the_table_needs_both_markers() -> None:
    with pytest.raises(ValueError, match="markers"):
        with_table("# no markers here\n", "| table |")


def _probe(
    folder: Path, name: str, started: str, reuse: int, rows: list[tuple[float, float, float]], **extra: object
) -> None:
    """A CFG-truncation probe's report: ``rows`` of (share, img/s, PSNR dB)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"arch": "sd15", "width": 512, "height": 512, "steps": 30, "scheduler": "euler", "batch_size": 16}
    data = {
        "kind": "cfgtrunc-probe",
        "started": started,
        "device": {"name": "NVIDIA H100 80GB HBM3", "short": "H100"},
        "config": {**config, "feature_reuse": reuse},
        "rows": [
            {"cfg_truncation": s, "images_per_s": ips, "vs_eager_exact": {"psnr_db": db, "worst_image_psnr_db": db}}
            for s, ips, db in rows
        ],
        **extra,
    }
    (folder / name).write_text(json.dumps(data))


def test_a_quality_trading_figure_is_the_fastest_row_of_its_call_that_keeps_40_db(tmp_path: Path) -> None:
    day = tmp_path / "2026-12-06-h100"
    plain = {"plain_diffusers": {"images_per_s": 0.9, "batch_size": 1}}
    _probe(day, "exact.json", "2026-12-06T23:20:00+00:00", 0, [(0, 6.6, 59.0), (0.5, 8.6, 52.0)], **plain)
    _probe(day, "reuse.json", "2026-12-06T23:22:00+00:00", 3, [(0.5, 12.4, 42.7), (0.7, 13.8, 41.1), (0.9, 15.0, 38.0)])
    _probe(day, "stock.json", "2026-12-06T23:25:00+00:00", 0, [], stock_compile={"results": [{"images_per_s": 6.2}]})
    # An earlier call's faster row (same day, folder, model and card) is not this call's figure.
    _probe(day, "earlier.json", "2026-12-06T20:00:00+00:00", 5, [(0.5, 14.2, 40.5)])
    table = render_table(all_reports(tmp_path), relative_to=tmp_path)
    (row,) = [line for line in table.splitlines() if line.startswith("| quality-trading")]
    assert "13.80 img/s at batch 16, PSNR 41.1 dB" in row
    assert "exact levers 6.60 img/s" in row
    assert "stock torch.compile 6.20 img/s" in row
    assert "plain diffusers 0.90 img/s" in row
    assert "feature_reuse 3, cfg_truncation 0.7" in row
    assert "(2026-12-06-h100/reuse.json)" in row


def test_a_start_from_aot_packages_has_its_own_row_and_leaves_the_compiled_start_current(tmp_path: Path) -> None:
    folder = tmp_path / "2026-12-07-h100"
    compiled = _report(folder, "startup-a.json", "2026-12-07T10:00:00+00:00", device="NVIDIA H100")
    aot = _report(folder, "startup-b.json", "2026-12-07T11:00:00+00:00", device="NVIDIA H100")
    for path, applied in ((compiled, ["compile", "precompile"]), (aot, ["aot_packages"])):
        data = json.loads(path.read_text()) | {"kind": "startup", "cache_state": "warm"}
        path.write_text(json.dumps(data | {"acceleration": {"applied": applied}}))
    assert {r.path for r in current_reports(all_reports(tmp_path))} == {compiled, aot}
