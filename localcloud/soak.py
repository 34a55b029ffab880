"""`sdq soak`: submit jobs at a steady rate while the worker is killed and restarted, then check invariants.

Loopback only and bounded: N jobs, a fixed rate, a deadline. Invariants checked at the end:
- every job reached exactly one terminal state, and it is SUCCEEDED;
- each job has its outputs, and each output's bytes match its recorded sha256;
- one state machine execution per job (executions = jobs), none failed;
- the dead-letter queue is empty and the jobs queue drained;
- one logical webhook per job with a callback (duplicate deliveries share the webhook-id), all verified.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from rich.console import Console
from rich.table import Table

from cli.client import Endpoint, SdqClient
from localcloud.receiver import ScriptedReceiver
from localcloud.service import LocalService, LocalServiceConfig, start_local_service
from shared.contracts import TERMINAL

SHAPES = [(256, 256), (320, 256), (256, 320)]


@dataclass
class SoakReport:
    jobs: int
    kills: int
    seconds: float
    succeeded: int = 0
    other_terminal: dict[str, int] = field(default_factory=dict)
    not_terminal: int = 0
    outputs_checked: int = 0
    hash_mismatches: int = 0
    executions: int = 0
    failed_executions: int = 0
    jobs_with_extra_executions: int = 0
    dlq_messages: int = 0
    queue_messages: int = 0
    webhook_jobs: int = 0
    webhook_jobs_delivered: int = 0
    webhook_deliveries: int = 0
    webhook_unverified: int = 0
    max_attempt: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _aws(service: LocalService, name: str) -> Any:
    return boto3.client(
        name,  # type: ignore[call-overload]
        endpoint_url=service.resources.endpoint_url,
        region_name=service.resources.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - the local cloud accepts any key
    )


def run_soak(
    *,
    jobs: int,
    kill_every_s: float,
    rate_per_s: float = 2.0,
    timeout_s: float = 900.0,
    seed: int = 7,
    console: Console | None = None,
) -> SoakReport:
    """Run the soak and return its report (``report.ok`` tells whether every invariant held)."""
    console = console or Console(width=120)
    rng = random.Random(seed)
    log = Path(tempfile.mkstemp(prefix="sdq-soak-worker-", suffix=".log")[1]).open("wb")  # noqa: SIM115 - closed in finally
    config = LocalServiceConfig(
        api_port=0,
        write_state=False,
        worker_log=log,
        extra_env={
            "SDQ_VISIBILITY_TIMEOUT_S": "8",
            "SDQ_HEARTBEAT_S": "2",
            "SDQ_RECEIVE_WAIT_S": "1",
            "SDQ_MAX_BATCH_WAIT_MS": "300",
            "SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": str(jobs + 10),
            "SDQ_RATE_LIMIT_PER_WINDOW": str(jobs + 10),
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "POWERTOOLS_METRICS_DISABLED": "true",
        },
        # The worker's one-line-per-batch log is what says which batch each job ran in.
        worker_env={"POWERTOOLS_LOG_LEVEL": "INFO"},
    )
    started = time.monotonic()
    service = start_local_service(config)
    receiver = ScriptedReceiver()
    kills = 0
    try:
        client = SdqClient(Endpoint(service.api_url, service.api_key))
        receiver.secret = client.webhook_secret()
        receiver.start()
        ids: list[str] = []
        with_callback: set[str] = set()
        next_kill = time.monotonic() + kill_every_s
        deadline = time.monotonic() + timeout_s
        interval = 1.0 / rate_per_s
        submitted_at = time.monotonic()

        def maybe_kill() -> None:
            nonlocal next_kill, kills
            if time.monotonic() < next_kill or service.worker is None:
                return
            service.worker.send_signal(signal.SIGKILL)
            service.worker.wait(timeout=30)
            kills += 1
            service.worker = service.start_worker()
            next_kill = time.monotonic() + kill_every_s

        for i in range(jobs):
            width, height = rng.choice(SHAPES)
            request: dict[str, Any] = {
                "prompt": f"soak {i}",
                "width": width,
                "height": height,
                "num_inference_steps": 2,
                "num_images": rng.choice([1, 1, 1, 2]),
            }
            if rng.random() < 0.5:
                request["callback_url"] = receiver.url
            job_id = client.submit(request)["id"]
            ids.append(job_id)
            if "callback_url" in request:
                with_callback.add(job_id)
            maybe_kill()
            submitted_at += interval
            time.sleep(max(0.0, submitted_at - time.monotonic()))
        console.print(f"submitted {jobs} jobs; {kills} worker kills so far; waiting for the rest ...")
        pending = set(ids)
        final: dict[str, dict[str, Any]] = {}
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                job = client.get(job_id)
                if job["status"] in TERMINAL:
                    final[job_id] = job
                    pending.discard(job_id)
            if kills < max(1, jobs // 50) and pending:
                maybe_kill()
            time.sleep(0.5)
        settle = time.monotonic() + 30
        while time.monotonic() < settle and any(not receiver.by_job(j) for j in with_callback if j in final):
            time.sleep(0.5)

        report = SoakReport(jobs=jobs, kills=kills, seconds=round(time.monotonic() - started, 1))
        report.not_terminal = len(pending)
        for job_id, job in final.items():
            report.max_attempt = max(report.max_attempt, int(job["attempt"]))
            if job["status"] == "SUCCEEDED":
                report.succeeded += 1
            else:
                report.other_terminal[job["status"]] = report.other_terminal.get(job["status"], 0) + 1
            for output in job["outputs"]:
                report.outputs_checked += 1
                if hashlib.sha256(client.download(output["url"])).hexdigest() != output["sha256"]:
                    report.hash_mismatches += 1
            if job["status"] == "SUCCEEDED" and len(job["outputs"]) != job["request"]["num_images"]:
                report.problems.append(
                    f"{job_id}: {len(job['outputs'])} outputs, wanted {job['request']['num_images']}"
                )
        sfn = _aws(service, "stepfunctions")
        executions: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"stateMachineArn": service.resources.state_machine_arn}
        while True:
            page = sfn.list_executions(**kwargs)
            executions += page["executions"]
            if not page.get("nextToken"):
                break
            kwargs["nextToken"] = page["nextToken"]
        report.executions = len(executions)
        report.failed_executions = sum(1 for e in executions if e["status"] in {"FAILED", "TIMED_OUT", "ABORTED"})
        per_job: dict[str, int] = {}
        for e in executions:
            per_job[e["name"].rsplit("-", 1)[0]] = per_job.get(e["name"].rsplit("-", 1)[0], 0) + 1
        report.jobs_with_extra_executions = sum(1 for n in per_job.values() if n > 1)
        sqs = _aws(service, "sqs")
        for url, attr in ((service.resources.dlq_url, "dlq_messages"), (service.resources.queue_url, "queue_messages")):
            attrs = sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
            )["Attributes"]
            setattr(report, attr, sum(int(v) for v in attrs.values()))
        report.webhook_jobs = len(with_callback)
        for job_id in with_callback:
            deliveries = receiver.by_job(job_id)
            report.webhook_deliveries += len(deliveries)
            report.webhook_unverified += sum(1 for d in deliveries if not d.verified)
            if len({d.webhook_id for d in deliveries}) == 1 and any(d.answered == 200 for d in deliveries):
                report.webhook_jobs_delivered += 1
        _judge(report)
        _print(report, console)
        return report
    finally:
        receiver.stop()
        service.stop()
        log.close()


def _judge(r: SoakReport) -> None:
    checks = [
        (r.not_terminal == 0, f"{r.not_terminal} jobs never reached a terminal state"),
        (r.succeeded == r.jobs, f"{r.jobs - r.succeeded} jobs did not succeed: {r.other_terminal}"),
        (r.hash_mismatches == 0, f"{r.hash_mismatches} outputs do not match their sha256"),
        (r.executions == r.jobs, f"{r.executions} executions for {r.jobs} jobs"),
        (r.failed_executions == 0, f"{r.failed_executions} executions failed"),
        (r.jobs_with_extra_executions == 0, f"{r.jobs_with_extra_executions} jobs ran more than one execution"),
        (r.dlq_messages == 0, f"{r.dlq_messages} messages in the DLQ"),
        (r.queue_messages == 0, f"{r.queue_messages} messages left in the queue"),
        (r.webhook_jobs_delivered == r.webhook_jobs, f"{r.webhook_jobs - r.webhook_jobs_delivered} webhooks missing"),
        (r.webhook_unverified == 0, f"{r.webhook_unverified} webhook deliveries failed verification"),
    ]
    r.problems += [message for ok, message in checks if not ok]


def _print(r: SoakReport, console: Console) -> None:
    table = Table("figure", "value", title=f"sdq soak: {r.jobs} jobs, {r.kills} worker kills, {r.seconds} s")
    for name, value in [
        ("jobs SUCCEEDED", f"{r.succeeded} / {r.jobs}"),
        ("outputs checked against sha256", f"{r.outputs_checked} ({r.hash_mismatches} mismatches)"),
        ("state machine executions", f"{r.executions} ({r.failed_executions} failed)"),
        ("jobs re-run after a kill (attempt > 1)", "yes" if r.max_attempt > 1 else "no"),
        ("DLQ / queue messages left", f"{r.dlq_messages} / {r.queue_messages}"),
        ("webhooks: jobs delivered", f"{r.webhook_jobs_delivered} / {r.webhook_jobs}"),
        ("webhooks: deliveries (retries incl.)", f"{r.webhook_deliveries} ({r.webhook_unverified} unverified)"),
    ]:
        table.add_row(name, value)
    console.print(table)
    for problem in r.problems:
        console.print(f"[red]problem[/] {problem}")
    console.print("[green]all invariants hold[/]" if r.ok else "[red]invariants violated[/]")
    console.print(json.dumps({"jobs": r.jobs, "kills": r.kills, "seconds": r.seconds, "ok": r.ok}))
