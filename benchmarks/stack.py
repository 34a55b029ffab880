"""The local stack a benchmark runs on: the same as ``sdq up``, set so that only the measured path limits it."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from localcloud.service import LocalServiceConfig


def bench_stack_config(
    workdir: Path, *, caps: str, with_worker: bool, model: str = "tiny", worker_log: IO[Any] | None = None
) -> LocalServiceConfig:
    """Any free ports, state under ``workdir`` (no ``.sdq/local.json``), the tenant's rate limit and unfinished-job
    cap both at ``caps`` so they never refuse a measured submit, and no CloudWatch EMF lines (from every API call
    and batch they would bury the report)."""
    return LocalServiceConfig(
        api_port=0,
        cloud_port=0,
        with_worker=with_worker,
        model=model,
        write_state=False,
        worker_log=worker_log,
        extra_env={
            "SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": caps,
            "SDQ_RATE_LIMIT_PER_WINDOW": caps,
            "SDQ_STATE_DIR": str(workdir),
            "POWERTOOLS_METRICS_DISABLED": "true",
        },
    )
