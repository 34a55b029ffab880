"""How the local stack answers submissions: ``python -m benchmarks.local_submit``.

Starts the local service (``start_local_service``, as ``sdq up`` does) once without a worker and once with a worker
generating with the tiny model; in each phase N clients submit to 127.0.0.1 for a bounded time, then 4 threads
measure the raw DynamoDB put_item + SQS send_message pair against the same local cloud (a table and queue of their
own), so that the ratio compares like with like. The AWS calls one submit makes are counted in this process, by
operation, around a direct call of the API handler. Each phase records the machine's load average (other work on a
shared machine shows there) and the cores each part of the stack kept busy while the submits ran (CPU seconds per
second: the local cloud's process, the Step Functions process, the API processes, the worker). Writes a JSON report
to ``benchmarks/results/<date>-cpu/`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.client import BaseClient

from benchmarks.reports import run_folder
from benchmarks.stack import bench_stack_config
from localcloud.api import proxy_event
from localcloud.service import LocalService, start_local_service

LOOSE_LIMITS = "100000"  # the rate limit and unfinished cap stay out of the way: accepted submits are measured
BODY = {"prompt": "a red fox in the snow", "model": "tiny", "width": 256, "height": 256, "num_inference_steps": 2}


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def latency_summary(latencies_s: list[float], duration_s: float) -> dict[str, float]:
    return {
        "count": len(latencies_s),
        "per_s": round(len(latencies_s) / duration_s, 2) if duration_s > 0 else 0.0,
        "p50_ms": round(percentile(latencies_s, 0.50) * 1000, 1),
        "p90_ms": round(percentile(latencies_s, 0.90) * 1000, 1),
        "p99_ms": round(percentile(latencies_s, 0.99) * 1000, 1),
        "max_ms": round(max(latencies_s, default=0.0) * 1000, 1),
    }


def run_threads(
    count: int, duration_s: float, make: Callable[[int], Callable[[], bool]]
) -> tuple[list[float], int, list[tuple[float, float]]]:
    """``count`` threads each repeat their call until ``duration_s`` passes; latencies of calls that returned True,
    how many returned False, and the five slowest calls as (seconds into the run, latency)."""
    latencies: list[float] = []
    timeline: list[tuple[float, float]] = []
    failures = 0
    lock = threading.Lock()
    start = threading.Barrier(count + 1)

    def loop(index: int) -> None:
        nonlocal failures
        call = make(index)
        mine: list[float] = []
        when: list[tuple[float, float]] = []
        bad = 0
        start.wait()
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            began = time.perf_counter()
            ok = call()
            took = time.perf_counter() - began
            if ok:
                mine.append(took)
                when.append((round(began - origin, 2), round(took * 1000, 1)))
            else:
                bad += 1
        with lock:
            latencies.extend(mine)
            timeline.extend(when)
            failures += bad

    origin = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    start.wait()
    for thread in threads:
        thread.join()
    return latencies, failures, sorted(timeline, key=lambda t: -t[1])[:5]


def submit_load(api_url: str, keys: list[str], duration_s: float) -> dict[str, Any]:
    """One client thread per key (a tenant each), submitting for ``duration_s``."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def make(index: int) -> Callable[[], bool]:
        http = httpx.Client(base_url=api_url, headers={"x-api-key": keys[index]}, timeout=30)

        def call() -> bool:
            status = http.post("/v1/jobs", json=BODY).status_code
            with lock:
                statuses[status] += 1
            return status == 202

        return call

    latencies, refused, slowest = run_threads(len(keys), duration_s, make)
    summary = latency_summary(latencies, duration_s)
    return {**summary, "refused": refused, "statuses": dict(statuses), "slowest_at_s_ms": slowest}


def local_client(cloud: tuple[str, str], name: str) -> Any:
    """A boto3 client of the local cloud at ``(endpoint_url, region)``."""
    return boto3.session.Session().client(
        name,  # type: ignore[call-overload]
        endpoint_url=cloud[0],
        region_name=cloud[1],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - the local cloud accepts any key
    )


def raw_pairs(cloud: tuple[str, str], threads: int, duration_s: float) -> dict[str, Any]:
    """DynamoDB put_item + SQS send_message pairs, each thread with its own clients, into a table and queue of the
    benchmark's own (the service's table and queue stay as the submits left them)."""
    setup_ddb, setup_sqs = local_client(cloud, "dynamodb"), local_client(cloud, "sqs")
    table = f"sdq-bench-raw-{uuid.uuid4().hex[:8]}"
    setup_ddb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    queue_url = setup_sqs.create_queue(QueueName=table)["QueueUrl"]
    payload = json.dumps(BODY)

    def make(_: int) -> Callable[[], bool]:
        ddb, sqs = local_client(cloud, "dynamodb"), local_client(cloud, "sqs")

        def call() -> bool:
            key = uuid.uuid4().hex
            ddb.put_item(TableName=table, Item={"pk": {"S": key}, "request": {"S": payload}})
            sqs.send_message(QueueUrl=queue_url, MessageBody=payload)
            return True

        return call

    latencies, _, slowest = run_threads(threads, duration_s, make)
    return {**latency_summary(latencies, duration_s), "slowest_at_s_ms": slowest}


def new_tenant_key(service: LocalService, name: str) -> str:
    from shared.apikeys import ApiKeyStore

    cloud = (service.resources.endpoint_url, service.resources.region)
    store = ApiKeyStore(local_client(cloud, "dynamodb"), service.resources.table_name)
    return store.create(f"{name}-{uuid.uuid4().hex[:6]}").plaintext


@contextmanager
def counting_calls() -> Iterator[Counter[str]]:
    """Counts the AWS operations boto3 clients make on this thread (other threads' calls are not counted)."""
    counts: Counter[str] = Counter()
    original = getattr(BaseClient, "_make_api_call")  # noqa: B009 - private to botocore, absent from its stubs
    me = threading.get_ident()

    def counted(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        if threading.get_ident() == me:
            counts[f"{client.meta.service_model.service_name}.{operation}"] += 1
        return original(client, operation, params)

    setattr(BaseClient, "_make_api_call", counted)  # noqa: B010
    try:
        yield counts
    finally:
        setattr(BaseClient, "_make_api_call", original)  # noqa: B010


def calls_per_submit(service: LocalService, samples: int = 5) -> dict[str, dict[str, float]]:
    """The AWS operations one submit makes, by operation: the API handler called here, in this process, with the
    service's environment (the handler is the same code whichever process serves HTTP), behind the gateway's
    authorizer with its cache as the local API runs it. ``authorizer``: what the authorizer makes for a key it has
    not seen within ``AuthorizerCacheSeconds`` (once per key and period, not per submit)."""
    from handlers import api, authorizer
    from localcloud.gateway import GatewayRules, LocalGateway
    from localcloud.service import TEMPLATE
    from shared.settings import get_settings

    os.environ.update(service.env)
    get_settings.cache_clear()
    api.services.cache_clear()
    authorizer.deps.cache_clear()
    key = new_tenant_key(service, "bench-count")

    def event(idempotency_key: str | None) -> dict[str, Any]:
        headers = {"x-api-key": key, "content-type": "application/json"}
        if idempotency_key is not None:
            headers["idempotency-key"] = idempotency_key
        return proxy_event("POST", "/v1/jobs", headers=headers, body=json.dumps(BODY))

    from localcloud.api import LocalLambdaContext

    gateway = LocalGateway(GatewayRules.from_template(TEMPLATE), authorizer.lambda_handler, LocalLambdaContext)

    def call(request: dict[str, Any]) -> dict[str, Any]:
        refusal = gateway.admit(request)
        return refusal if refusal is not None else api.lambda_handler(request, LocalLambdaContext())

    found: dict[str, dict[str, float]] = {}
    with counting_calls() as counts:
        gateway.admit(event(None))  # the key's first call: the authorizer runs (then its answer is cached)
    found["authorizer"] = {**dict(sorted(counts.items())), "total": sum(counts.values())}
    for name, idem in (("plain", lambda: None), ("idempotency_key", lambda: uuid.uuid4().hex)):
        call(event(idem()))  # warm: clients built, not counted
        with counting_calls() as counts:
            for _ in range(samples):
                answer = call(event(idem()))
                if answer["statusCode"] != 202:
                    raise RuntimeError(f"count submit answered {answer['statusCode']}: {answer['body']}")
        found[name] = {op: n / samples for op, n in sorted(counts.items())}
        found[name]["total"] = sum(counts.values()) / samples
    return found


def wait_for_first_job(service: LocalService, timeout_s: float = 120.0) -> float:
    """Submit one job and wait until the worker finishes it (so generation is under way); seconds it took."""
    began = time.monotonic()
    with httpx.Client(base_url=service.api_url, headers={"x-api-key": service.api_key}, timeout=30) as http:
        job_id = http.post("/v1/jobs", json=BODY).json()["id"]
        while time.monotonic() - began < timeout_s:
            if http.get(f"/v1/jobs/{job_id}").json()["status"] in {"SUCCEEDED", "FAILED", "CANCELLED"}:
                return time.monotonic() - began
            time.sleep(0.2)
    raise RuntimeError("the worker did not finish a job in time")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used, from /proc; 0 where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stack_processes() -> dict[str, list[int]]:
    """This process's children by role: the Step Functions process, the API processes, the worker."""
    roles = {"executionsprocess": "step_functions", "apiprocess": "api", "handlers.worker": "worker"}
    found: dict[str, list[int]] = {"local_cloud": [os.getpid()]}
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            role = next((r for key, r in roles.items() if key in cmdline), None)
            if role is not None:
                found.setdefault(role, []).append(int(child))
    return found


def cpu_by_role(processes: dict[str, list[int]]) -> dict[str, float]:
    return {role: sum(_cpu_s(pid) for pid in pids) for role, pids in processes.items()}


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (``uptime``): other work on a shared machine shows here."""
    return [round(x, 2) for x in os.getloadavg()]


def run_phase(
    name: str, *, with_worker: bool, clients: int, duration_s: float, workdir: Path, api_processes: int | None = None
) -> dict[str, Any]:
    log = (workdir / f"{name}-worker.log").open("wb")
    config = bench_stack_config(workdir, caps=LOOSE_LIMITS, with_worker=with_worker, worker_log=log)
    if api_processes is not None:
        config.api_processes = api_processes
    began = time.monotonic()
    service = start_local_service(config)
    try:
        started_s = time.monotonic() - began
        first_job_s = wait_for_first_job(service) if with_worker else None
        calls = calls_per_submit(service)
        keys = [new_tenant_key(service, f"bench-{i}") for i in range(clients)]
        cloud = (service.resources.endpoint_url, service.resources.region)
        processes = stack_processes()
        loads = {"before": load_average()}
        # The load comes from a process of its own, as a user's clients would, not from the local cloud's.
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as load:
            load.submit(load_average).result()  # the load process is up before the clock starts
            cpu_before = cpu_by_role(processes)
            submits = load.submit(submit_load, service.api_url, keys, duration_s).result()
            cpu_after = cpu_by_role(processes)
            loads["after_submits"] = load_average()
            raw = load.submit(raw_pairs, cloud, 4, duration_s).result()
            loads["after_raw_pairs"] = load_average()
        submit_cpu = {role: round((cpu_after[role] - cpu_before[role]) / duration_s, 3) for role in cpu_after}
        worker_alive = service.worker.poll() is None if service.worker is not None else None
    finally:
        service.stop()
        log.close()
    ratio = submits["per_s"] / raw["per_s"] if raw["per_s"] else 0.0
    return {
        "phase": name,
        "with_worker": with_worker,
        "api_processes": config.api_processes,
        "start_s": round(started_s, 2),
        "first_job_s": round(first_job_s, 2) if first_job_s is not None else None,
        "worker_alive_after": worker_alive,
        "submits": submits,
        "raw_pairs": raw,
        "ratio": round(ratio, 3),
        "calls_per_submit": calls,
        "load_average": loads,
        "cores_busy_during_submits": submit_cpu,
    }


def run_phase_process(
    phase: str, clients: int, duration_s: float, workdir: Path, api_processes: int | None
) -> dict[str, Any]:
    """One phase in a process of its own: the in-process Lambdas cache the clients of the first local cloud they
    meet, so a second stack in one process would send them to a stopped one."""
    out = workdir / f"{phase}.json"
    command = [sys.executable, "-m", "benchmarks.local_submit", "--phases", phase, "--clients", str(clients)]
    command += ["--duration", str(duration_s), "--phase-json", str(out)]
    if api_processes is not None:
        command += ["--api-processes", str(api_processes)]
    with (workdir / f"{phase}.log").open("wb") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"phase {phase} failed ({code}); see {workdir / (phase + '.log')}")
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.local_submit", description=__doc__)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per measurement")
    parser.add_argument("--phases", default="no-worker,worker", help="comma-separated: no-worker, worker")
    parser.add_argument("--label", default="", help="a word for the report's file name (e.g. baseline)")
    parser.add_argument("--out", type=Path, default=None, help="folder of the report (default results/<date>-cpu/)")
    parser.add_argument("--api-processes", type=int, default=None, help="API processes (default: by cores)")
    parser.add_argument("--phase-json", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    workdir = Path(tempfile.mkdtemp(prefix="sdq-localsubmit-"))
    if args.phase_json is not None:
        phase = run_phase(
            args.phases,
            with_worker=(args.phases == "worker"),
            clients=args.clients,
            duration_s=args.duration,
            workdir=workdir,
            api_processes=args.api_processes,
        )
        args.phase_json.write_text(json.dumps(phase), encoding="utf-8")
        return 0
    phases = [
        run_phase_process(p, args.clients, args.duration, workdir, args.api_processes) for p in args.phases.split(",")
    ]
    report = {
        "kind": "local-submit",
        "date": started.isoformat(),
        "label": args.label,
        "clients": args.clients,
        "duration_s": args.duration,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "phases": phases,
    }
    folder = args.out or run_folder(started, None)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = f"-{args.label}" if args.label else ""
    path = folder / f"local-submit{suffix}-{started:%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"{'phase':<10} {'submits/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'raw/s':>6} {'raw p99':>7} {'ratio':>5}  calls")
    for p in phases:
        s, r = p["submits"], p["raw_pairs"]
        calls = p["calls_per_submit"]
        print(
            f"{p['phase']:<10} {s['per_s']:>9} {s['p50_ms']:>7} {s['p99_ms']:>7} {r['per_s']:>6} {r['p99_ms']:>7} "
            f"{p['ratio']:>5}  {calls['plain']['total']:g} (with key {calls['idempotency_key']['total']:g})"
        )
        print(f"{'':<10} load average {p['load_average']}; cores busy during submits {p['cores_busy_during_submits']}")
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
