"""The worker's GPU metrics: EMF lines in the shape the dashboard reads, and nothing at all on CPU."""

from __future__ import annotations

import json
import threading

import pytest

from workflows.generation.gpumetrics import MEMORY_METRIC, UTILIZATION_METRIC, GpuMetrics, GpuSample, read_gpu


def emf(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]


def test_on_cpu_nothing_is_read_emitted_or_started(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.fail("this test is about CPU runs: the CI and local runs use torch's CPU build")
    assert read_gpu() is None
    before = set(threading.enumerate())
    sampler = GpuMetrics().start()
    started = [t.name for t in set(threading.enumerate()) - before]
    assert "sdq-gpu-metrics" not in started  # no sampler thread running on CPU
    assert sampler._thread.ident is None  # nor one that started and ended already
    sampler.stop()
    assert emf(capsys.readouterr().out) == []


def test_a_sample_is_one_emf_line_of_the_worker_service(capsys: pytest.CaptureFixture[str]) -> None:
    sampler = GpuMetrics(lambda: GpuSample(utilization_pct=87.0, memory_used_pct=61.234), interval_s=3600)
    assert sampler.sample_once()
    [line] = emf(capsys.readouterr().out)
    [directive] = line["_aws"]["CloudWatchMetrics"]  # type: ignore[index]
    assert directive["Namespace"] == "sdq"
    assert directive["Dimensions"] == [["service"]]
    assert {m["Name"]: m["Unit"] for m in directive["Metrics"]} == {
        UTILIZATION_METRIC: "Percent",
        MEMORY_METRIC: "Percent",
    }
    assert (line["service"], line[UTILIZATION_METRIC], line[MEMORY_METRIC]) == ("worker", [87.0], [61.23])


def test_without_nvml_only_memory_is_emitted(capsys: pytest.CaptureFixture[str]) -> None:
    GpuMetrics(lambda: GpuSample(utilization_pct=None, memory_used_pct=12.5)).sample_once()
    [line] = emf(capsys.readouterr().out)
    assert MEMORY_METRIC in line
    assert UTILIZATION_METRIC not in line


def test_a_failed_reading_is_skipped_and_sampling_goes_on(capsys: pytest.CaptureFixture[str]) -> None:
    def broken() -> GpuSample:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    assert GpuMetrics(broken).sample_once()
    assert emf(capsys.readouterr().out) == []
