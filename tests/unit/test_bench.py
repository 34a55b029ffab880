"""The worker benchmark, smoke-run on CPU with the tiny model (what CI runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import reports
from benchmarks.worker_bench import (
    _kernel_family,
    count_flops_per_image,
    flop_counter,
    format_bench_table,
    main,
    process_age_s,
    run_worker_bench,
)
from workflows.generation.acceleration import AccelerationOptions
from workflows.generation.pipeline import BatchShape, PipelineRunner

pytestmark = pytest.mark.slow


def tiny_cpu_bench(tmp_path: Path, batch_sizes: list[int], steps: int, **options: Any) -> dict[str, Any]:
    """``run_worker_bench`` with the tiny model on CPU at 256x256, one timed call per size."""
    options.setdefault("out_dir", tmp_path)
    return run_worker_bench(
        "tiny",
        batch_sizes,
        steps=steps,
        width=256,
        height=256,
        device="cpu",
        repeats=1,
        cache_root=tmp_path / "models",
        **options,
    )


def test_bench_smoke_on_cpu_writes_the_report(tmp_path: Path) -> None:
    report = tiny_cpu_bench(tmp_path, [1, 2], steps=2, out_dir=tmp_path / "benchmarks")

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


def test_without_an_out_folder_the_report_goes_to_the_run_folder_of_its_date_and_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reports, "RESULTS_DIR", tmp_path / "results")
    report = tiny_cpu_bench(tmp_path, [1], steps=1, out_dir=None)
    assert Path(report["path"]).parent == tmp_path / "results" / f"{report['date'][:10]}-cpu"


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


def test_lever_bench_measures_eager_then_levers_on_cpu(tmp_path: Path) -> None:
    report = tiny_cpu_bench(
        tmp_path, [1, 3], steps=1, acceleration=AccelerationOptions(compile=True, buckets=(1, 2, 4))
    )
    assert [row["batch_size"] for row in report["eager_results"]] == [1, 3]
    assert [row["batch_size"] for row in report["results"]] == [1, 3]
    for row in report["results"]:
        assert len(row["first_calls_s"]) == 2
        assert 0 < row["share_of_bound"] < 1
    accel = report["acceleration"]
    assert accel["buckets"] == [1, 2, 4]
    assert "compile" in accel["skipped"]  # CPU: the GPU levers are skipped, padding still runs
    eq = report["equivalence"]
    assert eq["probe_batch_size"] == 3
    for name in ("eager_alone_vs_eager_batched", "alone_vs_batched", "alone_vs_eager_alone"):
        assert eq[name]["max"] <= 1
        assert not eq[name]["flat"]
    table = format_bench_table(report)
    assert "| batch | eager s / batch | eager images / s | levers s / batch |" in table
    assert "| 1 (plain diffusers, eager) |" in table
    assert "Seed equivalence" in table
    assert json.loads(Path(report["path"]).read_text())["equivalence"] == eq


def test_feature_reuse_is_reported_against_the_exact_path(tmp_path: Path) -> None:
    report = tiny_cpu_bench(tmp_path, [2], steps=4, acceleration=AccelerationOptions(feature_reuse=2), eager_rows=False)
    assert "feature_reuse" in report["acceleration"]["applied"]
    eq = report["equivalence"]
    # The trade, measured: the probe image differs from the exact (eager, no reuse) one, with a finite PSNR ...
    assert eq["alone_vs_eager_alone"]["max"] > 0
    assert eq["alone_vs_eager_alone"]["psnr_db"] > 0
    # ... while batching still changes nothing.
    assert eq["alone_vs_batched"]["max"] <= 1
    assert "PSNR" in format_bench_table(report)


def test_startup_bench_times_process_start_to_first_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SDQ_MODEL_CACHE", str(tmp_path / "models"))
    argv = ["startup", "--arch", "tiny", "--device", "cpu", "--steps", "1", "--width", "256", "--height", "256"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--then-batch-sizes", "2"]) == 0
    assert "written:" in capsys.readouterr().out
    (path,) = (tmp_path / "out").glob("startup-tiny-cpu-none-*.json")
    report = json.loads(path.read_text())
    assert report["kind"] == "startup"
    assert report["cache_state"] == "none"  # nothing compiled on CPU
    phases = report["phases_s"]
    assert phases["first_image"] > 0
    assert phases["load_and_levers"] > 0
    assert report["process_start_to_first_image_s"] >= phases["first_image"]
    assert set(report["first_call_by_batch_size_s"]) == {"2"}
    # Nothing compiled on CPU: every bucket is ready once the first images are done, before the size-2 call.
    ready = report["process_start_to_every_bucket_ready_s"]
    assert report["process_start_to_first_image_s"] <= ready <= report["process_start_to_every_size_s"]
    assert 0 < (process_age_s() or 0) < 24 * 3600


def test_kernel_families() -> None:
    conv = "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64"
    assert _kernel_family(conv) == "convolution"
    assert _kernel_family("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16") == "attention"
    assert _kernel_family("nvjet_sm90_hsh_128x256_64x4_2x1_v_bz_coopA_bias_TNN") == "gemm"
    assert _kernel_family("triton_red_fused_native_group_norm_silu_3") == "reduction/norm (triton)"
    assert _kernel_family("triton_poi_fused_gelu_mul_split_view_14") == "pointwise (triton)"
    assert _kernel_family("void cudnn::ops::nchwToNhwcKernel<__half>") == "layout/copy"
