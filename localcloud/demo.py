"""`sdq demo`: the whole pipeline on one machine, checked end to end, with a table a newcomer can read.

Starts the local cloud, the API and a worker (tiny model), a webhook receiver that verifies signatures, then
submits a mix of jobs (two shapes, a 2-image job, a cancelled job, an invalid request, callbacks), waits,
saves the images and prints one row per job. The exit code says whether everything was as expected.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cli.client import ApiError, Endpoint, SdqClient
from localcloud.receiver import ScriptedReceiver
from localcloud.service import LocalService, LocalServiceConfig, start_local_service
from shared.contracts import TERMINAL
from shared.tinymodel import TINY_MODEL_NOTE


@dataclass
class DemoJob:
    name: str
    request: dict[str, Any]
    expect: str
    cancel: bool = False
    job_id: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def demo_jobs(callback_url: str) -> list[DemoJob]:
    small = {"width": 256, "height": 256, "num_inference_steps": 4}
    wide = {"width": 320, "height": 256, "num_inference_steps": 4}
    return [
        DemoJob("fox", {"prompt": "a red fox in the snow", **small, "callback_url": callback_url}, "SUCCEEDED"),
        DemoJob(
            "owl x2",
            {"prompt": "an owl at night", **small, "num_images": 2, "callback_url": callback_url},
            "SUCCEEDED",
        ),
        DemoJob(
            "lighthouse",
            {"prompt": "a lighthouse", **wide, "output_format": "webp", "callback_url": callback_url},
            "SUCCEEDED",
        ),
        DemoJob("cat (no callback)", {"prompt": "a cat", **wide, "output_format": "jpeg"}, "SUCCEEDED"),
        DemoJob(
            "cancelled",
            {
                "prompt": "never mind",
                "width": 512,
                "height": 512,
                "num_inference_steps": 50,
                "callback_url": callback_url,
            },
            "CANCELLED",
            cancel=True,
        ),
        DemoJob("invalid (width 513)", {"prompt": "a fox", "width": 513}, "REJECTED 422"),
    ]


def _batches(log_path: Path) -> dict[str, int]:
    """job id -> the worker's batch number, read from its JSON batch log lines."""
    found: dict[str, int] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("message") == "batch":
            for job_id in record.get("job_ids", []):
                found[job_id] = int(record["batch"])
    return found


def _postprocess_seconds(service: LocalService, job_id: str, attempt: int) -> float | None:
    import boto3

    sfn = boto3.client(
        "stepfunctions",
        endpoint_url=service.resources.endpoint_url,
        region_name=service.resources.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - the local cloud accepts any key
    )
    arn = service.resources.state_machine_arn.replace(":stateMachine:", ":execution:") + f":{job_id}-{attempt}"
    try:
        events = sfn.get_execution_history(executionArn=arn, maxResults=200)["events"]
    except sfn.exceptions.ExecutionDoesNotExist:
        return None
    entered = {e["stateEnteredEventDetails"]["name"]: e["timestamp"] for e in events if "stateEnteredEventDetails" in e}
    if "Postprocess" in entered and "MarkSucceeded" in entered:
        return round((entered["MarkSucceeded"] - entered["Postprocess"]).total_seconds(), 2)
    return None


def run_demo(out_dir: Path, *, timeout_s: float = 600, console: Console | None = None) -> int:
    console = console or Console(width=150)
    out_dir.mkdir(parents=True, exist_ok=True)
    worker_log_path = Path(tempfile.mkstemp(prefix="sdq-demo-worker-", suffix=".log")[1])
    worker_log = worker_log_path.open("wb")
    config = LocalServiceConfig(
        api_port=0,
        write_state=False,
        worker_log=worker_log,
        extra_env={
            "SDQ_MAX_BATCH_WAIT_MS": "2000",
            "SDQ_RECEIVE_WAIT_S": "1",
            "SDQ_PROGRESS_INTERVAL_S": "0.3",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "POWERTOOLS_METRICS_DISABLED": "true",
        },
        # The worker's one-line-per-batch log is what says which batch each job ran in.
        worker_env={"POWERTOOLS_LOG_LEVEL": "INFO"},
    )
    console.print(f"[bold]sdq demo[/]: starting the local cloud, the API and a worker ({TINY_MODEL_NOTE})")
    service = start_local_service(config)
    receiver = ScriptedReceiver()
    try:
        client = SdqClient(Endpoint(service.api_url, service.api_key))
        receiver.secret = client.webhook_secret()
        receiver.start()
        jobs = demo_jobs(receiver.url)
        for job in jobs:
            try:
                job.job_id = client.submit(job.request)["id"]
            except ApiError as exc:
                job.result = {"status": f"REJECTED {exc.status}", "error": exc.body}
                continue
            if job.cancel:
                job.result = client.cancel(job.job_id)
        console.print(f"submitted {sum(1 for j in jobs if j.job_id)} jobs; waiting for the worker ...")
        deadline = time.monotonic() + timeout_s
        pending = [j for j in jobs if j.job_id]
        while pending and time.monotonic() < deadline:
            for job in list(pending):
                assert job.job_id is not None
                job.result = client.get(job.job_id)
                if job.result["status"] in TERMINAL:
                    pending.remove(job)
            time.sleep(0.5)
        # Webhooks follow the terminal write; give the last ones a moment.
        settle = time.monotonic() + 20
        while time.monotonic() < settle and not all(
            receiver.by_job(j.job_id) for j in jobs if j.job_id and "callback_url" in j.request
        ):
            time.sleep(0.3)
        worker_log.flush()
        batches = _batches(worker_log_path)
        table = Table("job", "status", "batch", "queued s", "generate+handoff s", "postprocess s", "images", "webhook")
        for job in jobs:
            status = job.result.get("status", "?")
            if status != job.expect:
                job.problems.append(f"expected {job.expect}, got {status}")
            webhook = "-"
            if job.job_id:
                timings = job.result.get("timings", {})
                deliveries = receiver.by_job(job.job_id)
                if "callback_url" in job.request:
                    ok = bool(deliveries) and deliveries[-1].verified and deliveries[-1].answered == 200
                    webhook = f"{deliveries[-1].json()['type']} verified" if ok else "missing/unverified"
                    if not ok:
                        job.problems.append("webhook not delivered or not verified")
                saved = []
                for output in job.result.get("outputs", []):
                    ext = output["content_type"].split("/")[-1]
                    path = out_dir / f"{job.job_id}-{output['index']}.{ext}"
                    path.write_bytes(client.download(output["url"]))
                    saved.append(path.name)
                expected_images = job.request.get("num_images", 1) if job.expect == "SUCCEEDED" else 0
                if len(saved) != expected_images:
                    job.problems.append(f"expected {expected_images} images, got {len(saved)}")
                run_s = timings.get("run_s")
                table.add_row(
                    job.name,
                    status,
                    str(batches.get(job.job_id, "-")),
                    str(timings.get("queued_s") or "-"),
                    str(run_s if run_s is not None else "-"),
                    str(_postprocess_seconds(service, job.job_id, job.result.get("attempt", 1)) or "-"),
                    str(len(saved)),
                    webhook,
                )
            else:
                table.add_row(job.name, status, "-", "-", "-", "-", "0", webhook)
        console.print(table)
        console.print(f"images saved under {out_dir} ({TINY_MODEL_NOTE})")
        problems = [f"{j.name}: {p}" for j in jobs for p in j.problems]
        for problem in problems:
            console.print(f"[red]problem[/] {problem}")
        if not problems:
            console.print("[green]demo passed[/]: every job ended as expected and every webhook verified")
        return 1 if problems else 0
    finally:
        receiver.stop()
        service.stop()
        worker_log.close()
