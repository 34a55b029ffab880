"""GPU utilisation and memory as worker metrics: EMF lines through Powertools, like the batch metrics (namespace
``sdq``, dimension ``service=worker``), sampled on a thread of their own so idle time shows as well as batches.

Read from torch.cuda: memory from the driver (``mem_get_info``: every process on the device, not only this
one's allocator), utilisation from NVML (``torch.cuda.utilization``, which needs the ``nvidia-ml-py`` package;
without it only memory is emitted). Nothing is sampled or emitted on CPU.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from shared.observability import emit_metrics

logger = Logger(service="sdq-worker")

UTILIZATION_METRIC = "GpuUtilization"
MEMORY_METRIC = "GpuMemoryUsed"
SAMPLE_INTERVAL_S = 15.0


@dataclass(frozen=True)
class GpuSample:
    """One reading: percent of time a kernel ran (None without NVML) and percent of device memory in use."""

    utilization_pct: float | None
    memory_used_pct: float


def read_gpu(device_index: int = 0) -> GpuSample | None:
    """The device's utilisation and memory now, or None when there is no CUDA device (CPU runs)."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(device_index)
    utilization: float | None
    try:
        utilization = float(torch.cuda.utilization(device_index))
    except (ModuleNotFoundError, ImportError, RuntimeError):
        utilization = None  # no NVML bindings in the image: memory alone
    return GpuSample(utilization, 100.0 * (total - free) / total if total else 0.0)


def emit(sample: GpuSample) -> None:
    """One EMF line with the sample's metrics."""
    metrics = EphemeralMetrics(namespace="sdq", service="worker")
    if sample.utilization_pct is not None:
        metrics.add_metric(name=UTILIZATION_METRIC, unit=MetricUnit.Percent, value=sample.utilization_pct)
    metrics.add_metric(name=MEMORY_METRIC, unit=MetricUnit.Percent, value=round(sample.memory_used_pct, 2))
    emit_metrics(metrics)


class GpuMetrics:
    """Samples every ``interval_s`` on a daemon thread until :meth:`stop`; a failed reading is logged and skipped."""

    def __init__(
        self, read: Callable[[], GpuSample | None] = read_gpu, *, interval_s: float = SAMPLE_INTERVAL_S
    ) -> None:
        self._read = read
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sdq-gpu-metrics", daemon=True)

    def sample_once(self) -> bool:
        """Read and emit one sample; False when there is nothing to read (no GPU)."""
        try:
            sample = self._read()
        except RuntimeError as exc:  # a CUDA error is the batch's to report; this reading is only skipped
            logger.warning("GPU metrics not read", error=f"{type(exc).__name__}: {exc}")
            return True
        if sample is None:
            return False
        emit(sample)
        return True

    def start(self) -> GpuMetrics:
        """Start sampling if there is a GPU to sample (the first reading says); on CPU no thread is started."""
        if self.sample_once():
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._interval_s)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self.sample_once()
