"""``sdq cost``: the monthly bill of the AWS stack for an image volume, beside always-on GPU servers.

Wired into ``cli/main.py`` with ``add_cost_parser(sub)``; the model itself is :mod:`cli.costmodel`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cli.coldstart import StartPath, load_template_times, measured_first_image_s, start_paths
from cli.costmodel import (
    BENCHMARK_REPORT,
    DEFAULT_PRICES,
    GPUS,
    REPO,
    CostError,
    Estimate,
    Throughput,
    Usage,
    break_even_images,
    estimate,
    gpu_throughput,
    gpu_type,
    merge_prices,
    merge_usage,
    parse_overrides,
)

DEFAULT_GPU = "g5.xlarge"  # the template's GpuInstanceType default


def _usd(value: float) -> str:
    return f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:,.4f}"


def _price(value: float) -> str:
    return f"{value:.10f}".rstrip("0").rstrip(".") if value < 0.001 else f"{value:g}"


def _qty(value: float) -> str:
    if value == 0:
        return "0"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:,.2f}"
    return f"{value:.4g}"


def estimate_table(est: Estimate) -> Table:
    """Every line of the stack's bill, then the always-on alternative."""
    table = Table(
        title=f"sdq on AWS: {est.images_per_month:,.0f} images/month on {est.gpu.instance} (us-east-1, USD)",
        show_footer=False,
    )
    table.add_column("group")
    table.add_column("item")
    table.add_column("quantity", justify="right")
    table.add_column("unit")
    table.add_column("unit price", justify="right")
    table.add_column("per month", justify="right")
    for line in est.lines:
        table.add_row(line.group, line.item, _qty(line.quantity), line.unit, _price(line.unit_price), _usd(line.cost))
    table.add_section()
    table.add_row("[bold]sdq stack[/]", "total", "", "", "", f"[bold]{_usd(est.total)}[/]")
    per_k = est.total / est.images_per_month * 1000 if est.images_per_month else 0.0
    table.add_row("", "per 1,000 images", "", "", "", _usd(per_k))
    table.add_section()
    for line in est.always_on:
        table.add_row(line.group, line.item, _qty(line.quantity), line.unit, _price(line.unit_price), _usd(line.cost))
    table.add_row("[bold]always-on[/]", "total", "", "", "", f"[bold]{_usd(est.always_on_total)}[/]")
    return table


def summary_table(estimates: list[Estimate], break_evens: list[float | None]) -> Table:
    table = Table(title="Summary per GPU type (USD per month)")
    for name, justify in [
        ("GPU", "left"),
        ("images/s/instance", "right"),
        ("instance-hours", "right"),
        ("sdq stack", "right"),
        ("of which GPU", "right"),
        ("always-on", "right"),
        ("servers", "right"),
        ("always-on cheaper above", "right"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for est, crossing in zip(estimates, break_evens, strict=True):
        rate = est.throughput.images_per_s * est.usage.worker_efficiency * est.gpu.gpus
        table.add_row(
            f"{est.gpu.instance} ({est.gpu.gpus}x {est.gpu.gpu})",
            f"{rate:.2f}",
            f"{est.instance_hours:,.1f}",
            _usd(est.total),
            _usd(est.by_group().get("GPU workers", 0.0)),
            _usd(est.always_on_total),
            str(est.servers_needed),
            f"{crossing:,.0f} images" if crossing is not None else "never (within one server)",
        )
    return table


def start_table(paths: list[StartPath]) -> Table:
    """From the first queued job to its image, step by step, for each way a worker can be there."""
    table = Table(title="From the first queued job to its image (seconds; sources beside each step)")
    table.add_column("path")
    table.add_column("step")
    table.add_column("s", justify="right")
    table.add_column("source")
    for path in paths:
        for i, step in enumerate(path.steps):
            table.add_row(path.name if i == 0 else "", step.name, f"{step.seconds:.1f}", step.source)
        table.add_row("", f"[bold]total[/] (standing cost: {path.standing_cost})", f"[bold]{path.seconds:.0f}[/]", "")
        table.add_section()
    return table


def prices_table(prices: dict[str, float]) -> Table:
    table = Table(title="Unit prices assumed (us-east-1 on-demand list prices; override with --price KEY=VALUE)")
    table.add_column("key")
    table.add_column("USD", justify="right")
    table.add_column("")
    for key in sorted(prices):
        changed = "overridden" if prices[key] != DEFAULT_PRICES[key] else ""
        table.add_row(key, _price(prices[key]), changed)
    return table


def usage_table(usage: Usage) -> Table:
    table = Table(title="Usage assumptions (override with --assume NAME=VALUE)")
    table.add_column("name")
    table.add_column("value", justify="right")
    for name, value in vars(usage).items():
        table.add_row(name, f"{value:g}")
    return table


def cmd_cost(args: argparse.Namespace) -> int:
    # Wide enough for the tables when the output is a file or a pipe (rich assumes 80 columns there).
    console = Console(width=None if sys.stdout.isatty() else 150)
    err = Console(stderr=True)
    try:
        prices = merge_prices(parse_overrides(args.price))
        usage = merge_usage(parse_overrides(args.assume))
        paths = start_paths(usage, load_template_times(), measured_first_image_s())
        saving_s = paths[0].seconds - paths[1].seconds  # a new instance against one from the warm pool
        estimates: list[Estimate] = []
        crossings: list[float | None] = []
        for instance in args.gpu or [DEFAULT_GPU]:
            gpu = gpu_type(instance)
            if args.throughput is not None:
                throughput = Throughput(args.throughput, f"--throughput {args.throughput:g} images/s per GPU")
            else:
                benchmarks = Path(args.benchmarks) if args.benchmarks else None
                throughput = gpu_throughput(gpu, usage.batch_size, benchmarks)
            estimates.append(estimate(args.images_per_month, gpu, throughput, usage, prices, saving_s))
            crossings.append(break_even_images(gpu, throughput, usage, prices))
    except CostError as exc:
        err.print(f"[red]sdq cost:[/] {exc}")
        return 2
    for est in estimates:
        console.print(estimate_table(est))
        for note in est.notes:
            console.print(f"  {note}")
        console.print()
    console.print(summary_table(estimates, crossings))
    console.print(
        "Always-on: the GPU server(s) alone, sized for the volume, idle when there is no work; the stack bills GPU "
        "time only while there are jobs. Neither includes free tiers or savings plans; Spot only with "
        "--assume spot_share=SHARE (its price is an assumption: --price ec2.<type>.spot.hour=VALUE)."
    )
    console.print(start_table(paths))
    if args.show_assumptions:
        console.print(prices_table(prices))
        console.print(usage_table(usage))
    else:
        console.print("Unit prices and usage assumptions: sdq cost ... --show-assumptions")
    return 0


def add_cost_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the ``cost`` subcommand to the ``sdq`` parser's subcommands."""
    cost = subparsers.add_parser(
        "cost",
        help="monthly AWS cost of the stack for an image volume, beside always-on GPU servers",
        description="Estimate the monthly bill of the template.yaml stack (us-east-1 list prices, no free tiers).",
    )
    cost.add_argument("--images-per-month", type=float, required=True, metavar="N")
    cost.add_argument(
        "--gpu",
        action="append",
        choices=sorted(GPUS),
        help=f"EC2 GPU instance type; repeat to compare (default {DEFAULT_GPU})",
    )
    cost.add_argument("--price", action="append", metavar="KEY=VALUE", help="override a unit price (USD)")
    cost.add_argument("--assume", action="append", metavar="NAME=VALUE", help="override a usage assumption")
    cost.add_argument(
        "--throughput",
        type=float,
        metavar="IMAGES_PER_S",
        help="measured images/s of one GPU at the worker's batch size (replaces the benchmark and relative table)",
    )
    cost.add_argument(
        "--benchmarks",
        help="an H100 worker-sd15-*.json report, or a folder whose newest one is costed "
        f"(default: {BENCHMARK_REPORT.relative_to(REPO)})",
    )
    cost.add_argument("--show-assumptions", action="store_true", help="list every unit price and usage assumption")
    cost.set_defaults(func=cmd_cost)
    return cost
