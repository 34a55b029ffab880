"""The worker benchmark, smoke-run on CPU with the tiny model (what CI runs)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from workflows.bench import count_flops_per_image, flop_counter, format_bench_table, run_worker_bench
from workflows.generation.pipeline import BatchShape, PipelineRunner

pytestmark = pytest.mark.slow


def test_bench_smoke_on_cpu_writes_the_report(tmp_path: Path) -> None:
    started = time.monotonic()
    report = run_worker_bench(
        "tiny",
        [1, 2],
        steps=2,
        width=256,
        height=256,
        out_dir=tmp_path / "benchmarks",
        device="cpu",
        repeats=1,
        cache_root=tmp_path / "models",
    )
    assert time.monotonic() - started < 60

    path = Path(report["path"])
    assert path.parent == tmp_path / "benchmarks"
    assert path.name.startswith("worker-tiny-cpu-")
    assert path.suffix == ".json"
    on_disk = json.loads(path.read_text())
    assert on_disk == {k: v for k, v in report.items() if k != "path"}

    assert on_disk["arch"] == "tiny"
    assert on_disk["device"]["type"] == "cpu"
    assert on_disk["device"]["name"]
    assert on_disk["precision"] == "fp32"
    assert on_disk["versions"]["torch"] == torch.__version__
    assert {"diffusers", "transformers", "python"} <= set(on_disk["versions"])
    assert on_disk["date"]
    assert on_disk["config"] == {
        "width": 256,
        "height": 256,
        "steps": 2,
        "guidance_scale": 7.5,
        "scheduler": "euler",
        "repeats": 1,
        "batch_sizes": [1, 2],
    }
    assert on_disk["flops_per_image"] > 0
    assert on_disk["matmul"]["flops_per_s"] > 0
    assert on_disk["matmul"]["dtype"] == "fp32"
    assert [row["batch_size"] for row in on_disk["results"]] == [1, 2]
    for row in [*on_disk["results"], on_disk["baseline"]]:
        assert row["seconds_per_batch"] > 0
        assert row["images_per_s"] == pytest.approx(row["batch_size"] / row["seconds_per_batch"])
        assert 0 < row["share_of_bound"] < 1
    assert on_disk["results"][0]["peak_memory_bytes"] is None  # no GPU
    assert on_disk["speedup_vs_baseline"] == pytest.approx(
        on_disk["best"]["images_per_s"] / on_disk["baseline"]["images_per_s"]
    )
    assert "noise" in on_disk["model_note"]

    table = format_bench_table(on_disk)
    assert "| batch | s / batch | images / s | share of bound |" in table
    assert "| 1 (plain diffusers) |" in table
    assert table.count("\n| ") == 5  # header, rule, two sizes, baseline


def test_flops_per_image_grow_with_steps(tmp_path: Path) -> None:
    runner = PipelineRunner.load("tiny", device="cpu", cache_root=tmp_path)
    one = count_flops_per_image(runner, BatchShape(256, 256, 1, 7.5, "euler"))
    two = count_flops_per_image(runner, BatchShape(256, 256, 2, 7.5, "euler"))
    assert 0 < two - one < one  # one more UNet call over the CFG pair; text encoder and VAE are counted once


def test_the_flop_counter_counts_attention_on_cpu() -> None:
    q = torch.randn(2, 4, 64, 16)
    with flop_counter() as counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    # Two (64x16 @ 16x64) and (64x64 @ 64x16) matmuls per head and batch entry.
    assert counter.get_total_flops() == 2 * 4 * (2 * 64 * 64 * 16) * 2


def test_invalid_arguments_fail_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        run_worker_bench("tiny", [], 2, 256, 256, tmp_path, device="cpu")
    with pytest.raises(ValueError, match="positive"):
        run_worker_bench("tiny", [0], 2, 256, 256, tmp_path, device="cpu")
    assert not list(tmp_path.iterdir())
