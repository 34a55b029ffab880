"""The worker bench's issue-24 probes: inductor settings and cudnn.benchmark set for the levers' run only, their
parsing, and the stock torch.compile baseline (CUDA only: skipped on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch._inductor.config as inductor_config

from benchmarks.worker_bench import apply_probes, build_parser, parse_inductor_settings, run_worker_bench
from workflows.generation.acceleration import AccelerationOptions


def test_inductor_settings_parse_as_python_literals() -> None:
    parsed = parse_inductor_settings(["coordinate_descent_tuning=True", "freezing = 1", "name=some text"])
    assert parsed == {"coordinate_descent_tuning": True, "freezing": 1, "name": "some text"}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_inductor_settings(["freezing"])


def test_the_probes_set_inductor_config_and_cudnn_benchmark() -> None:
    before = (inductor_config.coordinate_descent_tuning, torch.backends.cudnn.benchmark)
    try:
        applied = apply_probes({"coordinate_descent_tuning": True}, True)
        assert applied == {"inductor": {"coordinate_descent_tuning": True}, "cudnn_benchmark": True}
        assert inductor_config.coordinate_descent_tuning is True
        assert torch.backends.cudnn.benchmark is True
    finally:
        inductor_config.coordinate_descent_tuning, torch.backends.cudnn.benchmark = before


def test_the_flags_reach_the_bench() -> None:
    args = build_parser().parse_args(
        ["worker", "--stock-compile", "--inductor", "freezing=True", "--no-cudnn-benchmark", "--compile"]
    )
    assert args.stock_compile
    assert args.inductor == ["freezing=True"]
    assert args.cudnn_benchmark is False


def test_a_cpu_run_records_the_probes_and_skips_the_stock_baseline(model_cache: Path, tmp_path: Path) -> None:
    before = torch.backends.cudnn.benchmark
    try:
        report = run_worker_bench(
            "tiny",
            [1],
            2,
            256,
            256,
            tmp_path,
            device="cpu",
            repeats=1,
            cache_root=model_cache,
            acceleration=AccelerationOptions(buckets=(1,)),
            eager_rows=False,
            stock_compile=True,
            cudnn_benchmark=True,
        )
    finally:
        torch.backends.cudnn.benchmark = before
    assert report["probes"] == {"inductor": {}, "cudnn_benchmark": True}
    assert "stock_compile" not in report
