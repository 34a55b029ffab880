"""The ``sdq`` command: run the service locally, talk to its API, run the worker and the benchmarks."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any, get_args

import httpx
import pydantic
from pydantic import BaseModel, TypeAdapter
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from sdq_client import (
    MAX_WAIT_S,
    ApiError,
    Client,
    ConfigurationError,
    InvalidArgument,
    InvalidRequest,
    JobStatus,
    JobView,
    RateLimited,
    UnexpectedAnswer,
    WaitTimeout,
    new_idempotency_key,
)
from sdq_client import __version__ as client_version
from sdq_client.errors import invalid_request
from sdq_client.models import OutputFormat, Priority, Scheduler, WebhookEventName

from cli.admin import add_admin_parser
from cli.client import LOCAL_STATE_FILE, read_local_state, resolve_endpoint, state_dir
from cli.cost import add_cost_parser
from cli.leverflags import add_acceleration_arguments
from shared.shapesmodel import SHAPES_MODEL, SHAPES_MODEL_NOTE, shapes_caption
from shared.tinymodel import TINY_MODEL_NOTE

# The model `sdq up` serves when given none: the built-in one whose pictures show what the prompt asks for.
LOCAL_DEFAULT_MODEL = SHAPES_MODEL

console = Console(stderr=True)
out = Console()


# -- local service -------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from localcloud.service import LocalServiceConfig, start_local_service, wait_forever

    models = list(dict.fromkeys(args.model or [LOCAL_DEFAULT_MODEL]))
    state = state_dir() / LOCAL_STATE_FILE
    previous_key = (read_local_state() or {}).get("api_key")  # a file that cannot be read: a usage error, kept
    config = LocalServiceConfig(
        host="127.0.0.1",
        api_port=args.port,
        # A fixed cloud port (API port + 1 by default) lets a separately started `sdq worker` reconnect
        # when `sdq up` is restarted: the restarted stack keeps its names (see name_local_resources).
        cloud_port=args.cloud_port if args.cloud_port is not None else (args.port + 1 if args.port else 0),
        with_worker=not args.no_worker,
        model=models[0],
        extra_models=tuple(models[1:]),
        api_key=previous_key,
    )
    if args.api_processes is not None:
        config.api_processes = args.api_processes
    config.authorizer_cache_s = args.authorizer_cache_seconds
    # Ctrl-C, and SIGTERM (kill, a process manager) too, stop the stack and its worker. SIGINT is reset to Python's
    # handler because a shell starts background jobs with it ignored, which Python would keep.
    # A first signal during start-up is held until the stack is up (raising inside the start would leave half
    # of it running, a worker process among them), then stops it; a second one stops at once.
    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if held:
            raise KeyboardInterrupt
        held.append(signum)
        console.print("stopping once started ...")

    signal.signal(signal.SIGINT, hold)
    signal.signal(signal.SIGTERM, hold)
    worker = " and a worker" if config.with_worker else " (no worker)"
    console.print(f"[bold]sdq[/] starting the local cloud (moto), the API{worker} ...")
    service = start_local_service(config)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if held:
            raise KeyboardInterrupt
        out.print(f"API        {service.api_url}   (docs: {service.api_url}/docs)")
        out.print(f"playground {service.api_url}/playground/")
        out.print(f"API key    {service.api_key}   (saved in {state})")
        out.print(f"AWS        {service.resources.endpoint_url}   (local cloud, region {service.resources.region})")
        served = f"model{'s' if len(models) > 1 else ''} {', '.join(models)}"
        out.print(f"worker     {served if service.worker else 'not started (--no-worker)'}")
        if "tiny" in models:
            out.print(f"note       {TINY_MODEL_NOTE}")
        if SHAPES_MODEL in models:
            out.print(f"note       {SHAPES_MODEL_NOTE}")
        prompt = shapes_caption("red", "circle", "blue") if models[0] == SHAPES_MODEL else "a red fox"
        out.print(f'try        sdq submit "{prompt}" --wait')
        out.print("Ctrl-C (or SIGTERM) stops everything.")
        wait_forever(service)
    except KeyboardInterrupt:
        console.print("stopping ...")
    finally:
        service.stop()
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_demo(args: argparse.Namespace) -> int:
    from localcloud.demo import run_demo

    return run_demo(Path(args.out), timeout_s=args.timeout)


def cmd_soak(args: argparse.Namespace) -> int:
    from localcloud.soak import run_soak

    report = run_soak(jobs=args.jobs, kill_every_s=args.kill_worker_every, rate_per_s=args.rate, timeout_s=args.timeout)
    return 0 if report.ok else 1


# -- API client commands -------------------------------------------------------------------------
#
# Exit codes (docs/cli.md): 0 done (with --wait: the job SUCCEEDED); 1 the job finished FAILED or CANCELLED;
# 2 a usage error (bad flags, no endpoint); 3 the API could not be reached; 4 the API refused the request (4xx);
# 5 the API failed (5xx); 6 the wait ran out with the job unfinished; 7 the job SUCCEEDED but its images could not
# be saved; 130 interrupted.
EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_API_FAILED, EXIT_TIMEOUT = (
    0,
    1,
    2,
    3,
    4,
    5,
    6,
)
EXIT_NOT_SAVED = 7
EXIT_INTERRUPTED = 130
# How long `submit --wait` lets the API hold its first answer while a progress bar is shown: the bar shows the
# job's state from the first second on (a longer hold leaves it at its first state until the answer comes).
PROGRESS_HOLD_S = 1
# Seconds one request to the API may take (one asking the API to hold its answer, `Prefer: wait`, that much longer):
# an API that takes a request and never answers fails a command within 45 s, the client's 3 retries included.
# --http-timeout, or SDQ_HTTP_TIMEOUT, changes it.
DEFAULT_HTTP_TIMEOUT_S = 10.0


def _http_timeout(args: argparse.Namespace) -> float:
    given = args.http_timeout if args.http_timeout is not None else os.environ.get("SDQ_HTTP_TIMEOUT")
    if given is None:
        return DEFAULT_HTTP_TIMEOUT_S
    try:
        seconds = float(given)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"--http-timeout (or SDQ_HTTP_TIMEOUT) takes seconds above 0, not {given!r}")
    return seconds


def _client(args: argparse.Namespace) -> Client:
    endpoint = resolve_endpoint(args.api_url, args.api_key)
    return Client(endpoint.url, endpoint.api_key, timeout=_http_timeout(args))


def _emit(args: argparse.Namespace, body: BaseModel | dict[str, Any]) -> None:
    """A body on stdout: one line of JSON with --json, else indented."""
    data = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
    if args.json:
        print(json.dumps(data, separators=(",", ":")))
    else:
        out.print_json(json.dumps(data))


def _save_outputs(client: Client, job: JobView, folder: Path) -> Iterator[Path]:
    """Each image of the job, saved under ``folder`` (made if missing), as it is saved."""
    folder.mkdir(parents=True, exist_ok=True)
    for output in job.outputs:
        ext = output.content_type.split("/")[-1].replace("jpeg", "jpg")
        path = folder / f"{job.id}-{output.index}.{ext}"
        path.write_bytes(client.download(output.url))
        yield path


def _finished(args: argparse.Namespace, client: Client, job: JobView) -> int:
    """Print a finished job, then save its images, and the exit code that means. The job is printed first: an image
    that cannot be saved (a bad --out, a failed download) is reported after it, on stderr, with an exit code of
    its own."""
    _emit(args, job)
    if job.status != JobStatus.SUCCEEDED:
        return EXIT_JOB_FAILED
    try:
        for path in _save_outputs(client, job, Path(args.out)):
            console.print(f"saved {path}", soft_wrap=True, highlight=False)
    except (OSError, httpx.HTTPError) as exc:
        console.print(f"[red]not saved[/]: the job SUCCEEDED, but its images could not be saved under {args.out}:"
                      f" {type(exc).__name__}: {escape(str(exc))}", soft_wrap=True, highlight=False)  # fmt: skip
        until = f" (its URLs last until {job.outputs_expire_at:%Y-%m-%d %H:%M} UTC)" if job.outputs_expire_at else ""
        console.print(f"  `sdq wait {job.id} --out FOLDER` saves them again{until}", soft_wrap=True, highlight=False)
        return EXIT_NOT_SAVED
    return EXIT_OK


class ProgressBar:
    """Status and steps of a job on stderr (off with --json, or when stderr is not a terminal)."""

    def __init__(self, show: bool) -> None:
        columns = (
            TextColumn("[bold]{task.fields[status]:<14}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
            TimeElapsedColumn(),
        )
        self._bar = Progress(*columns, console=console, disable=not show, transient=False)
        self._task = self._bar.add_task("job", total=1, status="submitting")

    def __enter__(self) -> ProgressBar:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(None, None, None)

    def update(self, job: JobView) -> None:
        total = max(job.progress.total, 1)
        done = total if job.status in {JobStatus.POSTPROCESSING, JobStatus.SUCCEEDED} else job.progress.step
        self._bar.update(self._task, total=total, completed=done, status=str(job.status))


def _request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {"prompt": args.prompt}
    optional = {
        "negative_prompt": args.negative_prompt,
        "width": args.width,
        "height": args.height,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "seed": args.seed,
        "num_images": args.images,
        "scheduler": args.scheduler,
        "output_format": args.format,
        "quality": args.quality,
        "model": args.model,
        "callback_url": args.callback_url,
        "priority": args.priority,
        "webhook_events": args.webhook_event,
        "cache": False if args.no_cache else None,
    }
    request.update({k: v for k, v in optional.items() if v is not None})
    _check_choices(request)
    if args.metadata:
        pairs = [item.partition("=") for item in args.metadata]
        if any(not sep for _, sep, _ in pairs):
            raise UsageError("--metadata takes KEY=VALUE")
        request["metadata"] = {k: v for k, _, v in pairs}
    return request


# The request fields whose flags take one of a fixed set of values (each value of a list): the client's Literal and
# enum types, listed in --help.
CHOICES: dict[str, Any] = {
    "scheduler": Scheduler,
    "output_format": OutputFormat,
    "priority": Priority,
    "webhook_events": WebhookEventName,
}


def _choices(field: str) -> str:
    allowed = CHOICES[field]
    values = (
        [m.value for m in allowed] if isinstance(allowed, type) and issubclass(allowed, Enum) else get_args(allowed)
    )
    return "{" + ",".join(values) + "}"


def _check_choices(request: dict[str, Any]) -> None:
    """A flag value outside its choices is a refused field, as the API would refuse it: InvalidRequest (exit 4, and
    the 422 body on stdout with --json), not a usage error."""
    errors: list[dict[str, Any]] = []
    for field, allowed in CHOICES.items():
        if field in request:
            value = request[field]
            try:
                kind: Any = list[allowed] if isinstance(value, list) else allowed  # type: ignore[valid-type]
                TypeAdapter(kind).validate_python(value)
            except pydantic.ValidationError as exc:
                errors += [{**e, "loc": (field, *e["loc"])} for e in exc.errors()]
    if errors:
        raise invalid_request(errors)


def cmd_submit(args: argparse.Namespace) -> int:
    request = _request_from_args(args)
    # The client would make a key of its own; made here, it can be named if no answer comes (main()).
    args.idempotency_key = args.idempotency_key or new_idempotency_key()
    with _client(args) as client:
        if not args.wait:
            job = client.submit(request, idempotency_key=args.idempotency_key)
            if job.model_note and not args.json:
                console.print(f"[yellow]note[/] {job.model_note}")
            if args.json:
                _emit(args, job)
            else:
                out.print(job.id)
            return EXIT_OK
        # Submit with `Prefer: wait`: a job that finishes within it costs one request; a longer one is polled,
        # at the pace the API's Retry-After asks, with the progress bar following each answer (so a shown bar
        # asks for a shorter hold: it moves sooner).
        show = not args.json and console.is_terminal
        seen: list[JobView] = []

        def update(job: JobView) -> None:
            seen[:] = [job]
            bar.update(job)

        try:
            with ProgressBar(show=show) as bar:
                job = client.run(
                    request,
                    timeout=args.timeout,
                    idempotency_key=args.idempotency_key,
                    on_update=update,
                    hold=PROGRESS_HOLD_S if show else MAX_WAIT_S,
                )
        except KeyboardInterrupt:
            return _interrupted(args, seen[0] if seen else None)
        if job.model_note and not args.json:
            console.print(f"[yellow]note[/] {job.model_note}")
        return _finished(args, client, job)


def _interrupted(args: argparse.Namespace, job: JobView | None) -> int:
    """Ctrl-C while waiting: the job goes on without us, so say which one it is and how to follow or cancel it."""
    if job is None:
        console.print(
            "[yellow]interrupted[/] before the API answered: the job may have been made. The same command with"
            f" --idempotency-key {args.idempotency_key} answers with it (or makes it, once).",
            soft_wrap=True,
        )
    else:
        console.print(
            f"[yellow]interrupted[/]: job {job.id} ({job.status} when last seen) goes on without this command.\n"
            f"  follow it: sdq wait {job.id}\n  cancel it: sdq cancel {job.id}",
            soft_wrap=True,
            highlight=False,
        )
    return EXIT_INTERRUPTED


def cmd_wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.wait(args.job_id, timeout=args.timeout)
        return _finished(args, client, job)


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _emit(args, client.get(args.job_id))
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel(args.job_id)
    if args.json:
        _emit(args, job)
    else:
        out.print(f"{job.id} {job.status}")
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.list(status=args.status, limit=args.limit, cursor=args.cursor)
    if args.json:
        _emit(args, page)
        return EXIT_OK
    rows = [
        [
            job.id,
            str(job.status),
            job.created_at.isoformat()[:19],
            f"{job.request.width}x{job.request.height}",
            str(job.request.num_inference_steps),
            str(job.request.num_images),
            job.request.prompt,
        ]
        for job in page.jobs
    ]
    header = ["id", "status", "created", "size", "steps", "images", "prompt"]
    if out.is_terminal:
        out.print(_jobs_table(header, rows, out.width))
    else:
        # Piped: the table's columns, tab-separated, each value whole on one line (none cut at 80 columns).
        for row in [header, *rows]:
            print("\t".join(" ".join(value.split()) for value in row))
    if page.next_cursor:
        # One line, never wrapped, so that it can be copied or cut from a pipe: after a terminal's table, or on
        # stderr when piped (stdout holds only the tab-separated lines).
        # The same listing's options: a cursor continues only the listing (status filter) that gave it.
        same = "".join(
            f" --{name} {value}" for name, value in (("status", args.status), ("limit", args.limit)) if value
        )
        (out if out.is_terminal else console).print(
            f"more: sdq jobs{same} --cursor {page.next_cursor}", soft_wrap=True, markup=False, highlight=False
        )
    return EXIT_OK


# `sdq jobs` on a terminal: the prompt is cut to this many characters, and gets at least JOBS_PROMPT_MIN_WIDTH columns;
# where the others leave it fewer, these columns are left out, the first first (`sdq status ID` has them all).
JOBS_PROMPT_CHARS = 40
JOBS_PROMPT_MIN_WIDTH = 20
JOBS_OPTIONAL_COLUMNS = ("images", "steps", "created")


def _jobs_table(header: list[str], rows: list[list[str]], width: int) -> Table:
    """The jobs as a table ``width`` columns wide at most: every value but the prompt whole and on one line (an id is
    copied whole; a status or size cut short says nothing), the prompt taking the squeeze, wrapped."""
    widths = {name: max([len(name), *(len(row[i]) for row in rows)]) for i, name in enumerate(header[:-1])}
    shown = list(widths)

    def needed() -> int:  # each column's padding and rule: 3 columns, and the table's right edge
        return sum(widths[name] for name in shown) + 3 * (len(shown) + 1) + 1 + JOBS_PROMPT_MIN_WIDTH

    for name in JOBS_OPTIONAL_COLUMNS:
        if needed() <= width:
            break
        shown.remove(name)
    table = Table(*shown, "prompt")
    for column in table.columns[:-1]:
        column.no_wrap = True
        column.min_width = widths[str(column.header)]
    index = {name: i for i, name in enumerate(header)}
    for row in rows:
        table.add_row(*(row[index[name]] for name in shown), row[-1][:JOBS_PROMPT_CHARS])
    return table


def cmd_models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        listing = client.models()
    if args.json:
        _emit(args, listing)
        return EXIT_OK
    header = ["model", "default", "architecture", "size", "steps", "guidance", "schedulers", "loras", "note"]
    rows = [
        [
            model.id,
            "yes" if model.default else "",
            str(model.architecture),
            f"{model.default_width}x{model.default_height}",
            str(model.default_num_inference_steps),
            f"{model.default_guidance_scale:g}",
            ",".join(map(str, model.schedulers)),
            ",".join(model.loras),
            model.note or "",
        ]
        for model in listing.models
    ]
    if out.is_terminal:
        table = Table(*header)
        for row in rows:
            table.add_row(*row)
        out.print(table)
    else:  # piped: tab-separated lines, every value whole, as `sdq jobs` prints them
        for row in [header, *rows]:
            print("\t".join(" ".join(value.split()) for value in row))
    return EXIT_OK


class UsageError(Exception):
    """A command line the command cannot run (exit code 2, like argparse's own)."""


def _refusal(args: argparse.Namespace, exc: ApiError) -> int:
    """An API refusal on stderr (and as JSON on stdout with --json); no traceback."""
    if getattr(args, "json", False):
        print(json.dumps({"status": exc.status, "body": exc.body}, separators=(",", ":")))
    # A 5xx is the API failing, not refusing: nothing about the request was wrong.
    console.print(f"[red]{'server error' if exc.status >= 500 else 'refused'}[/] {escape(str(exc))}", highlight=False)
    if isinstance(exc, InvalidRequest):
        for field in exc.fields:
            console.print(f"  {field.field or '(body)'}: {field.msg}", highlight=False)
    if isinstance(exc, RateLimited) and exc.retry_after is not None:
        console.print(f"  retry after {exc.retry_after:g} s")
    return EXIT_API_FAILED if exc.status >= 500 else EXIT_REFUSED


def _no_answer(args: argparse.Namespace, exc: httpx.TransportError) -> int:
    """No answer from the API, after the client's retries. Only a connection that was never made proves the
    request did not arrive; a submit names its Idempotency-Key, with which repeating it makes no second job."""
    try:
        url: object = exc.request.url
    except RuntimeError:  # an error raised without its request
        url = "the API"
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        console.print(f"[red]cannot reach {url}[/]: {type(exc).__name__}. Is `sdq up` running (or SDQ_API_URL right)?")
    else:
        console.print(f"[red]no answer from {url}[/]: {type(exc).__name__} (the request may have arrived)")
    _unknown_submit(args)
    return EXIT_UNREACHABLE


def _unknown_submit(args: argparse.Namespace) -> None:
    """A submit that got no answer: the Idempotency-Key with which repeating it makes no second job."""
    if getattr(args, "command", None) == "submit":
        console.print(
            "  whether the job was made is unknown: run the same command again with"
            f" --idempotency-key {args.idempotency_key} to make it at most once (or get the one made)",
            soft_wrap=True,
        )


# -- worker and benchmarks -------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    from shared.settings import get_settings
    from workflows.generation.acceleration.startup import before_worker_imports

    before_worker_imports(get_settings())  # as the container's command does
    from handlers.worker import main as worker_main

    return worker_main(args.model or (), fleet=args.fleet)


def cmd_bench_worker(args: argparse.Namespace) -> int:
    from benchmarks.worker_bench import format_bench_table, run_worker_bench
    from cli.leverflags import acceleration_from_args

    result = run_worker_bench(
        arch=args.arch,
        batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
        steps=args.steps,
        width=args.width,
        height=args.height,
        out_dir=Path(args.out) if args.out else None,
        device=args.device,
        repeats=args.repeats,
        scheduler=args.scheduler,
        precision=args.precision,
        acceleration=acceleration_from_args(args),
        eager_rows=not args.no_eager_rows,
        profile=args.profile,
    )
    print(format_bench_table(result))
    print(f"written: {result.get('path')}")
    return 0


def cmd_bench_loop(args: argparse.Namespace) -> int:
    from benchmarks.loop_bench import LoopBenchConfig, format_loop_report, run_loop_bench

    worker_env = dict(item.split("=", 1) for item in args.worker_env)
    if args.compile:
        worker_env["SDQ_COMPILE"] = "1"
    result = run_loop_bench(
        LoopBenchConfig(
            model=args.model,
            jobs=args.jobs,
            max_batch_images=args.batch,
            width=args.width,
            height=args.height,
            steps=args.steps,
            worker_env=worker_env,
            timeout_s=args.timeout,
            out_dir=Path(args.out) if args.out else None,
        )
    )
    print(format_loop_report(result))
    print(f"written: {result['path']}")
    return 0 if result["statuses"] == {"SUCCEEDED": args.jobs} else 1


# -- parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdq",
        description="Queue-based Stable Diffusion service.",
        epilog="Exit codes: 0 done, 1 job FAILED or CANCELLED, 2 usage error, 3 API unreachable, 4 API refused the"
        " request, 5 API error, 6 wait timed out, 7 job SUCCEEDED but its images not saved, 130 interrupted"
        " (docs/cli.md).",
    )
    parser.add_argument("--version", action="version", version=f"sdq {_version()} (sdq-client {client_version})")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole service locally until Ctrl-C")
    up.add_argument("--port", type=int, default=8000, help="API port on 127.0.0.1 (default 8000)")
    up.add_argument(
        "--cloud-port", type=int, help="local cloud port (default: API port + 1; a free one when --port is 0)"
    )
    up.add_argument(
        "--model",
        action="append",
        help="a model for the local worker, repeated for several on it; the first is the default (default:"
        f" {LOCAL_DEFAULT_MODEL}, the built-in model that draws what it is told; tiny, random weights, is faster)",
    )
    up.add_argument("--no-worker", action="store_true", help="control plane only")
    up.add_argument(
        "--api-processes",
        type=int,
        help="API processes, each answering one request at a time like one Lambda environment; a `Prefer: wait`"
        " holds one for its wait (default: one per core, 2 to 4)",
    )
    up.add_argument(
        "--authorizer-cache-seconds",
        type=int,
        help="how long the local gateway reuses the authorizer's answer per API key, as the template's"
        " AuthorizerCacheSeconds does on AWS (default: the template's, 60)",
    )
    up.set_defaults(func=cmd_up)

    demo = sub.add_parser("demo", help="run the whole pipeline locally with a mix of jobs and check the results")
    demo.add_argument("--out", default="out/demo", help="folder for the images (default: out/demo)")
    demo.add_argument("--timeout", type=float, default=600.0)
    demo.set_defaults(func=cmd_demo)

    soak = sub.add_parser("soak", help="steady load with worker kills on loopback, then check every invariant")
    soak.add_argument("--jobs", type=int, default=100)
    soak.add_argument("--kill-worker-every", type=float, default=30.0, metavar="SECONDS")
    soak.add_argument("--rate", type=float, default=2.0, help="jobs submitted per second")
    soak.add_argument("--timeout", type=float, default=900.0)
    soak.set_defaults(func=cmd_soak)

    def api_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--api-url", help="default: $SDQ_API_URL or .sdq/local.json from `sdq up`")
        p.add_argument("--api-key", help="default: $SDQ_API_KEY or .sdq/local.json from `sdq up`")
        p.add_argument("--json", action="store_true", help="print the API's JSON on stdout, one line, nothing else")
        p.add_argument(
            "--http-timeout",
            metavar="SECONDS",
            help="how long one request to the API may take before it is tried again or given up (default:"
            f" $SDQ_HTTP_TIMEOUT or {DEFAULT_HTTP_TIMEOUT_S:g}; a request asking the API to hold its answer that much"
            " longer)",
        )

    submit = sub.add_parser("submit", help="submit a generation job")
    submit.add_argument("prompt")
    submit.add_argument("--negative-prompt")
    submit.add_argument("--width", type=int)
    submit.add_argument("--height", type=int)
    submit.add_argument("--steps", type=int)
    submit.add_argument("--guidance", type=float)
    submit.add_argument("--seed", type=int)
    submit.add_argument("--images", type=int)
    # Not argparse's choices (a usage error, exit 2): a value outside them is a refused field (exit 4; with --json,
    # the 422 line on stdout), as it is when the API refuses it. So for --webhook-event and --priority below.
    submit.add_argument("--scheduler", metavar=_choices("scheduler"))
    submit.add_argument("--format", metavar=_choices("output_format"))
    submit.add_argument("--quality", type=int)
    submit.add_argument("--model")
    submit.add_argument("--callback-url")
    submit.add_argument(
        "--webhook-event",
        action="append",
        metavar=_choices("webhook_events"),
        help="a webhook to send to --callback-url, repeated for several (default: completed)",
    )
    submit.add_argument(
        "--priority",
        metavar=_choices("priority"),
        help="the job's share of the GPU and place in your queue, at most your plan's (default: normal)",
    )
    submit.add_argument(
        "--no-cache", action="store_true", help="generate afresh: the result cache does not answer (with --seed)"
    )
    submit.add_argument("--metadata", action="append", metavar="KEY=VALUE")
    submit.add_argument("--idempotency-key")
    submit.add_argument(
        "--wait", action="store_true", help="wait for the job (Prefer: wait, then polls), then save its images"
    )
    submit.add_argument("--out", default="out", help="folder for images with --wait (default: out)")
    submit.add_argument("--timeout", type=float, default=600.0, help="seconds to wait with --wait")
    api_args(submit)
    submit.set_defaults(func=cmd_submit)

    wait = sub.add_parser("wait", help="wait until a job has finished (Prefer: wait), then save its images")
    wait.add_argument("job_id")
    wait.add_argument("--out", default="out", help="folder for the images (default: out)")
    wait.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (default: 600)")
    api_args(wait)
    wait.set_defaults(func=cmd_wait)

    status = sub.add_parser("status", help="show a job (JSON)")
    status.add_argument("job_id")
    api_args(status)
    status.set_defaults(func=cmd_status)

    cancel = sub.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id")
    api_args(cancel)
    cancel.set_defaults(func=cmd_cancel)

    jobs = sub.add_parser("jobs", help="list your jobs, newest first")
    jobs.add_argument("--status", choices=[s.value for s in JobStatus])
    jobs.add_argument("--limit", type=int)
    jobs.add_argument("--cursor")
    api_args(jobs)
    jobs.set_defaults(func=cmd_jobs)

    models = sub.add_parser("models", help="the models you may name, with their default size, steps and LoRAs")
    api_args(models)
    models.set_defaults(func=cmd_models)

    worker = sub.add_parser("worker", help="run a GPU worker (loads its models once, drains the queue)")
    worker_models = worker.add_mutually_exclusive_group()
    worker_models.add_argument(
        "--model", action="append", help="a model to load, repeated for several (default: $SDQ_FLEET's or $SDQ_MODEL)"
    )
    worker_models.add_argument("--fleet", help="load every model the model registry assigns this fleet")
    worker.set_defaults(func=cmd_worker)

    bench = sub.add_parser("bench", help="benchmarks (numbers go to JSON under benchmarks/results/)")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    bw = bench_sub.add_parser("worker", help="pipeline throughput per batch size vs plain diffusers")
    bw.add_argument("--arch", default="tiny", choices=["tiny", "sd15", "sdxl"])
    bw.add_argument("--batch-sizes", default="1,4,8,16")
    bw.add_argument("--steps", type=int, default=30)
    bw.add_argument("--width", type=int, default=512)
    bw.add_argument("--height", type=int, default=512)
    bw.add_argument("--repeats", type=int, default=2)
    bw.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    bw.add_argument("--out", help="report folder (default: benchmarks/results/<date>-<card>/)")
    bw.add_argument("--scheduler", default="euler")
    bw.add_argument("--no-eager-rows", action="store_true", help="with levers: skip the eager rows")
    bw.add_argument("--profile", action="store_true", help="GPU kernel-time breakdown (CUDA)")
    add_acceleration_arguments(bw)
    bw.set_defaults(func=cmd_bench_worker)

    bl = bench_sub.add_parser("loop", help="GPU duty cycle of the real worker loop draining a full local queue")
    bl.add_argument("--model", default="tiny", help="tiny (default), sd15, sdxl, a hub id or a folder")
    bl.add_argument("--jobs", type=int, default=32, help="jobs queued before the worker starts (1 image each)")
    bl.add_argument("--batch", type=int, default=8, help="the worker's batch limit (SDQ_MAX_BATCH_IMAGES)")
    bl.add_argument("--steps", type=int, default=30)
    bl.add_argument("--width", type=int, default=512)
    bl.add_argument("--height", type=int, default=512)
    bl.add_argument("--compile", action="store_true", help="the worker with SDQ_COMPILE=1 (CUDA)")
    bl.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE", help="extra worker settings")
    bl.add_argument("--timeout", type=float, default=900.0)
    bl.add_argument("--out", help="report folder (default: benchmarks/results/<date>-<card>/)")
    bl.set_defaults(func=cmd_bench_loop)

    add_cost_parser(sub)
    add_admin_parser(sub)

    return parser


def _version() -> str:
    try:
        return metadata.version("sdq")
    except metadata.PackageNotFoundError:
        return "unknown"


def _api_url(args: argparse.Namespace) -> str:
    try:
        return resolve_endpoint(getattr(args, "api_url", None), getattr(args, "api_key", None)).url
    except ConfigurationError:
        return "the API"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (UsageError, ConfigurationError) as exc:  # no endpoint, or one that cannot be used
        parser.error(str(exc))  # usage on stderr, exit code 2
    except InvalidArgument as exc:  # refused by the client before sending: an empty job id, a non-ASCII key
        parser.error(str(exc))
    except ApiError as exc:
        return _refusal(args, exc)
    except UnexpectedAnswer as exc:  # the request went out; what came back is not the API's answer
        console.print(f"[red]unexpected answer[/] from {_api_url(args)}: {escape(str(exc))}", highlight=False)
        console.print("  is SDQ_API_URL (or --api-url) the sdq API's URL?")
        return EXIT_API_FAILED
    except WaitTimeout as exc:
        if getattr(args, "json", False) and exc.job is not None:
            print(exc.job.model_dump_json())
        console.print(f"[red]timed out[/] {exc}", highlight=False)
        if exc.job is None:
            _unknown_submit(args)
        return EXIT_TIMEOUT
    except httpx.TransportError as exc:
        return _no_answer(args, exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_USAGE  # not reached: parser.error exits


if __name__ == "__main__":
    sys.exit(main())
