"""The cost model's arithmetic, checked line by line from its inputs with overridden (round) prices."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cli.coldstart import (
    ARTEFACTS_REPORT,
    STARTUP_REPORT,
    load_template_times,
    measured_artefacts_mb,
    measured_first_image_s,
    start_paths,
    template_times,
)
from cli.cost import DEFAULT_GPU, add_cost_parser
from cli.costmodel import (
    BENCHMARK_REPORT,
    DEFAULT_PRICES,
    GPUS,
    HAPPY_PATH_STATES,
    CostError,
    Throughput,
    Usage,
    benchmark_images_per_s,
    break_even_images,
    estimate,
    gpu_throughput,
    gpu_type,
    merge_prices,
    merge_usage,
    newest_benchmark,
    parse_overrides,
)
from localcloud.provision import load_sam_template
from shared.pricing import gpu_price

REPO = Path(__file__).resolve().parents[2]
KB_PER_GB = 1024 * 1024

# Every price distinct and round, so a line priced with the wrong key shows up.
PRICES = {key: float(i + 2) for i, key in enumerate(sorted(DEFAULT_PRICES))}
USAGE = Usage(
    images_per_job=2.0,
    batch_size=8,
    worker_efficiency=0.5,
    scale_ups_per_month=10.0,
    overhead_minutes_per_scale_up=30.0,
    polls_per_job=4.0,
    callback_share=0.5,
    api_memory_mb=1024,
    postprocess_memory_mb=2048,
    notify_memory_mb=512,
    api_ms=100.0,
    postprocess_ms_base=200.0,
    postprocess_ms_per_image=400.0,
    notify_ms=500.0,
    sqs_requests_per_job=4.0,
    sqs_idle_polls_per_worker_hour=100.0,
    dynamodb_item_kb=1.5,
    dynamodb_writes_per_job=7.0,
    dynamodb_transaction_writes_per_job=1.0,
    dynamodb_gsi_write_factor=2.0,
    dynamodb_read_units_per_request=1.0,
    dynamodb_read_units_per_job=3.0,
    image_kb=512.0,
    thumbnail_kb=16.0,
    downloads_per_image=2.0,
    retention_days=15.0,
    log_kb_per_job=8.0,
    worker_disk_gib=100.0,
    worker_image_gb=5.0,
    custom_metrics=8.0,
    container_insights_metrics=12.0,
    alarm_metrics=10.0,
    dashboards=1.0,
)


def _cost(est: Any, price_key: str, item_contains: str = "") -> tuple[float, float]:
    """(quantity, cost) of the one line priced with ``price_key`` (and naming ``item_contains``)."""
    matches = [line for line in est.lines if line.price_key == price_key and item_contains in line.item]
    assert len(matches) == 1, (price_key, item_contains, [line.item for line in matches])
    return matches[0].quantity, matches[0].cost


def test_every_line_is_its_usage_times_its_price() -> None:
    images, ips = 200_000.0, 2.0
    gpu = gpu_type("g5.xlarge")
    est = estimate(images, gpu, Throughput(ips, "test"), USAGE, PRICES)
    u, p = USAGE, PRICES
    jobs = images / u.images_per_job
    api_requests = jobs * (1 + u.polls_per_job)

    busy_h = images / (ips * u.worker_efficiency * gpu.gpus) / 3600
    instance_h = busy_h + u.scale_ups_per_month * u.overhead_minutes_per_scale_up / 60
    expected: dict[tuple[str, str], float] = {
        ("ec2.g5.xlarge.hour", "instance-hours"): instance_h,
        ("ebs.gp3.gb_month", ""): u.worker_disk_gib * instance_h / 730,
        ("ecr.storage.gb_month", ""): u.worker_image_gb,
        ("apigateway.rest.requests.million", ""): api_requests / 1e6,
        # postprocess twice a job: Postprocess, and CountSucceeded emitting its finished-job metrics
        ("lambda.requests.million", ""): (api_requests + 2 * jobs + jobs * u.callback_share) / 1e6,
        ("lambda.x86.gb_second", ""): (
            api_requests * 0.1 * 1.0
            + jobs * (0.2 + 0.4 * u.images_per_job) * 2.0
            + jobs * u.callback_share * 0.5 * 0.5
            + jobs * u.count_ms / 1000 * 2.0
        ),
        ("stepfunctions.standard.transitions.thousand", ""): jobs * (7 + 2 * u.callback_share) / 1e3,
        ("sqs.standard.requests.million", ""): (jobs * 4 + instance_h * gpu.gpus * 100) / 1e6,
        ("dynamodb.ondemand.write_units.million", ""): jobs * (7 + 1) * math.ceil(1.5) * (1 + 2) / 1e6,
        ("dynamodb.ondemand.read_units.million", ""): (api_requests * 1 + jobs * 3) / 1e6,
        ("dynamodb.storage.gb_month", ""): jobs * (15 / 30) * 1.5 * 3 / KB_PER_GB,
        ("dynamodb.pitr.gb_month", ""): jobs * (15 / 30) * 1.5 * 3 / KB_PER_GB,
        ("s3.standard.gb_month", ""): images * (15 / 30) * (512 + 16) / KB_PER_GB,
        ("s3.put.thousand", ""): images * 3 / 1e3,
        ("s3.get.thousand", ""): images * (1 + 2) / 1e3,
        ("transfer.out.internet.gb", ""): images * 2 * 512 / KB_PER_GB,
        ("cloudwatch.logs.ingest.gb", ""): jobs * 8 / KB_PER_GB,
        ("cloudwatch.metric.month", ""): 8 + 12,
        ("cloudwatch.alarm_metric.month", ""): 10,
        ("cloudwatch.dashboard.month", ""): 1,
        ("xray.traces.million", ""): (api_requests + jobs) / 1e6,
    }
    assert len(est.lines) == len(expected)
    for (key, item), quantity in expected.items():
        got_quantity, got_cost = _cost(est, key, item)
        assert got_quantity == pytest.approx(quantity, rel=1e-12), key
        assert got_cost == pytest.approx(quantity * p[key], rel=1e-12), key
    assert est.total == pytest.approx(sum(q * p[k] for (k, _), q in expected.items()), rel=1e-12)
    assert est.instance_hours == pytest.approx(instance_h)
    assert est.by_group()["Step Functions"] == pytest.approx(jobs * 8 / 1e3 * p[key_of("stepfunctions")])


def key_of(prefix: str) -> str:
    (key,) = [k for k in PRICES if k.startswith(prefix)]
    return key


def test_always_on_is_enough_servers_for_the_volume_all_month() -> None:
    gpu, ips = gpu_type("g6.xlarge"), 1.0
    capacity = ips * USAGE.worker_efficiency * 3600 * 730
    for images, servers in [(0.0, 1), (capacity, 1), (capacity + 1, 2), (5 * capacity - 1, 5)]:
        est = estimate(images, gpu, Throughput(ips, "test"), USAGE, PRICES)
        assert est.servers_needed == servers
        assert est.server_capacity_images == pytest.approx(capacity)
        expected = (
            servers * 730 * PRICES["ec2.g6.xlarge.hour"]
            + servers * USAGE.worker_disk_gib * PRICES["ebs.gp3.gb_month"]
            + images * USAGE.downloads_per_image * USAGE.image_kb / KB_PER_GB * PRICES["transfer.out.internet.gb"]
        )
        assert est.always_on_total == pytest.approx(expected, rel=1e-12)


def test_multi_gpu_instances_divide_the_hours() -> None:
    one = estimate(1e6, gpu_type("g5.xlarge"), Throughput(3.0, "t"), USAGE, PRICES)
    eight = estimate(1e6, gpu_type("p5.48xlarge"), Throughput(3.0, "t"), USAGE, PRICES)
    overhead = USAGE.scale_ups_per_month * USAGE.overhead_minutes_per_scale_up / 60
    assert GPUS["p5.48xlarge"].gpus == 8
    assert (eight.instance_hours - overhead) == pytest.approx((one.instance_hours - overhead) / 8)


def test_break_even_is_where_the_two_bills_meet() -> None:
    gpu, throughput = gpu_type("g5.xlarge"), Throughput(1.0, "t")
    prices = dict(DEFAULT_PRICES)
    crossing = break_even_images(gpu, throughput, Usage(), prices)
    assert crossing is not None
    at = estimate(crossing, gpu, throughput, Usage(), prices)
    assert at.servers_needed == 1
    assert at.total == pytest.approx(at.always_on_total, rel=1e-9)
    below = estimate(crossing * 0.9, gpu, throughput, Usage(), prices)
    assert below.total < below.always_on_total
    # A GPU hour priced at nothing: the always-on server is never dearer than the stack's fixed costs.
    free_gpu = {**prices, "ec2.g5.xlarge.hour": 0.0, "ebs.gp3.gb_month": 0.0}
    assert break_even_images(gpu, throughput, Usage(), free_gpu) == 0.0


# -- inputs ---------------------------------------------------------------------------------------------------


def _bench(directory: Path, name: str, rates: dict[int, float]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    results = [{"batch_size": b, "images_per_s": r} for b, r in rates.items()]
    path.write_text(json.dumps({"config": {"width": 512, "height": 512, "steps": 30}, "results": results}))
    return path


def test_throughput_comes_from_the_newest_h100_benchmark_at_the_batch_size(tmp_path: Path) -> None:
    _bench(tmp_path, "worker-sd15-h100-20260101-000000.json", {1: 1.0, 8: 2.0})
    newest = _bench(tmp_path, "worker-sd15-h100-20260201-000000.json", {1: 1.5, 4: 3.0, 8: 4.0, 16: 4.5})
    _bench(tmp_path, "worker-sdxl-h100-20260301-000000.json", {1: 0.1})
    assert newest_benchmark(tmp_path) == newest

    h100 = gpu_throughput(gpu_type("p5.48xlarge"), 8, tmp_path)
    assert h100.images_per_s == 4.0
    assert newest.name in h100.source
    g5 = gpu_throughput(gpu_type("g5.xlarge"), 6, tmp_path)  # largest measured batch <= 6 is 4
    assert g5.images_per_s == pytest.approx(3.0 * GPUS["g5.xlarge"].relative_to_h100)
    assert "A10G" in g5.source

    report = json.loads(newest.read_text())
    assert benchmark_images_per_s(report, 100) == (4.5, 16)
    assert benchmark_images_per_s(report, 0) == (1.5, 1)  # below every measured size: the smallest


def test_a_benchmark_of_the_speed_levers_is_costed_at_the_default_eager_worker(tmp_path: Path) -> None:
    """The template deploys the eager worker (SDQ_COMPILE off): a compiled run's own figures would understate the
    GPU hours; its same-run eager figures are what the deployed worker does."""
    path = _bench(tmp_path, "worker-sd15-h100-20260101-000000.json", {1: 4.0, 8: 6.5})
    report = json.loads(path.read_text())
    report["eager_results"] = [{"batch_size": 1, "images_per_s": 0.7}, {"batch_size": 8, "images_per_s": 4.4}]
    path.write_text(json.dumps(report))
    assert gpu_throughput(gpu_type("p5.48xlarge"), 8, tmp_path).images_per_s == 4.4


def test_missing_benchmark_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CostError, match="sdq bench worker"):
        newest_benchmark(tmp_path)


def test_the_repository_benchmark_is_readable() -> None:
    path = BENCHMARK_REPORT
    report = json.loads(path.read_text())
    assert report["device"]["short"] == "H100"
    assert gpu_throughput(gpu_type("p5.48xlarge"), Usage().batch_size).images_per_s > 0


def test_the_pinned_benchmark_is_the_newest_h100_report_of_its_run_and_a_file_is_costed_as_given() -> None:
    """The pin names what the folder glob used to pick, so the cost figures did not move with the files."""
    assert newest_benchmark(BENCHMARK_REPORT.parent) == BENCHMARK_REPORT
    assert BENCHMARK_REPORT.is_relative_to(REPO / "benchmarks" / "results")
    pinned = gpu_throughput(gpu_type("p5.48xlarge"), Usage().batch_size)
    assert gpu_throughput(gpu_type("p5.48xlarge"), Usage().batch_size, BENCHMARK_REPORT) == pinned
    assert BENCHMARK_REPORT.name in pinned.source


def test_overrides_are_checked() -> None:
    assert parse_overrides(["a=1", " b = 2.5 "]) == {"a": "1", "b": "2.5"}
    with pytest.raises(CostError, match="KEY=VALUE"):
        parse_overrides(["novalue"])
    prices = merge_prices({"ec2.g5.xlarge.hour": "0.5"})
    assert prices["ec2.g5.xlarge.hour"] == 0.5
    assert {k: v for k, v in prices.items() if k != "ec2.g5.xlarge.hour"} == {
        k: v for k, v in DEFAULT_PRICES.items() if k != "ec2.g5.xlarge.hour"
    }
    with pytest.raises(CostError, match="unknown price"):
        merge_prices({"ec2.g5.xlarge.hours": "1"})
    with pytest.raises(CostError, match="not a number"):
        merge_prices({"ec2.g5.xlarge.hour": "cheap"})
    with pytest.raises(CostError, match=">= 0"):
        merge_prices({"ec2.g5.xlarge.hour": "-1"})
    usage = merge_usage({"batch_size": "4", "polls_per_job": "0.5"})
    assert usage.batch_size == 4
    assert isinstance(usage.batch_size, int)
    assert usage.polls_per_job == 0.5
    with pytest.raises(CostError, match="unknown assumption"):
        merge_usage({"polls": "1"})
    with pytest.raises(CostError, match="unknown GPU"):
        gpu_type("g9.huge")


def test_every_gpu_has_an_hourly_price() -> None:
    for instance in GPUS:
        assert f"ec2.{instance}.hour" in DEFAULT_PRICES


# -- the model matches the stack ------------------------------------------------------------------------------


def test_defaults_match_the_template() -> None:
    template = load_sam_template(REPO / "template.yaml")
    resources, params = template["Resources"], template["Parameters"]
    memory = {
        k: r["Properties"].get("MemorySize", template["Globals"]["Function"]["MemorySize"])
        for k, r in resources.items()
        if r["Type"] == "AWS::Serverless::Function"
    }
    usage = Usage()
    assert memory["ApiFunction"] == usage.api_memory_mb
    assert memory["PostprocessFunction"] == usage.postprocess_memory_mb
    assert memory["NotifyFunction"] == usage.notify_memory_mb
    assert params["MaxBatchImages"]["Default"] == usage.batch_size
    assert params["RetentionDays"]["Default"] == usage.retention_days
    assert params["WorkerDiskGiB"]["Default"] == usage.worker_disk_gib
    assert params["GpuInstanceType"]["Default"] == DEFAULT_GPU
    assert set(GPUS) <= set(params["GpuInstanceType"]["AllowedValues"])
    assert resources["Dashboard"]["Type"] == "AWS::CloudWatch::Dashboard"
    assert usage.dashboards == 1

    # Alarm metrics: each alarm's metrics, plus the two alarms target tracking creates (same metrics as its query).
    alarm_metrics = 0
    for resource in resources.values():
        if resource.get("Condition") == "HasSecondFleet":
            continue  # no second fleet by default (SecondFleet empty)
        if resource["Type"] == "AWS::CloudWatch::Alarm":
            queries = resource["Properties"].get("Metrics")
            alarm_metrics += len([q for q in queries if "MetricStat" in q]) if queries else 1
        if resource["Type"] == "AWS::ApplicationAutoScaling::ScalingPolicy":
            config = resource["Properties"].get("TargetTrackingScalingPolicyConfiguration")
            if config:
                stats = [q for q in config["CustomizedMetricSpecification"]["Metrics"] if "MetricStat" in q]
                alarm_metrics += 2 * len(stats)
    assert usage.alarm_metrics == alarm_metrics


def test_happy_path_states_are_the_asl_path_of_a_successful_job_with_a_callback() -> None:
    asl = json.loads((REPO / "statemachine.asl.json").read_text())
    states = asl["States"]
    visited, name = [], asl["StartAt"]
    job = {"has_callback": True, "postprocess.failure": None}
    while True:
        visited.append(name)
        state = states[name]
        if state["Type"] in ("Succeed", "Fail"):
            break
        if state["Type"] == "Choice":
            name = next((c["Next"] for c in state["Choices"] if _matches(c, job)), state["Default"])
        else:
            name = state["Next"]
    assert tuple(visited) == HAPPY_PATH_STATES


def _matches(rule: dict[str, Any], job: dict[str, Any]) -> bool:
    if "And" in rule:
        return all(_matches(r, job) for r in rule["And"])
    key = rule["Variable"].removeprefix("$.")
    if "IsPresent" in rule:
        return (key in job) == rule["IsPresent"]
    if "BooleanEquals" in rule:
        return job.get(key) == rule["BooleanEquals"]
    if "IsNull" in rule:
        return (job.get(key) is None) == rule["IsNull"]
    raise AssertionError(f"unhandled Choice rule {rule}")


# -- the command ----------------------------------------------------------------------------------------------


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sdq")
    add_cost_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cost_command_prints_the_comparison(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _bench(tmp_path, "worker-sd15-h100-20260101-000000.json", {8: 4.0})
    code = _run(
        [
            "cost",
            "--images-per-month",
            "100000",
            "--gpu",
            "g5.xlarge",
            "--gpu",
            "g6e.xlarge",
            "--price",
            "ec2.g5.xlarge.hour=2",
            "--benchmarks",
            str(tmp_path),
            "--show-assumptions",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "100,000 images/month on g5.xlarge" in out
    assert "100,000 images/month on g6e.xlarge" in out
    assert "sdq stack" in out
    assert "Always-on" in out
    assert "Summary per GPU type" in out
    assert "overridden" in out
    expected = estimate(
        100_000,
        gpu_type("g5.xlarge"),
        Throughput(4.0 * GPUS["g5.xlarge"].relative_to_h100, "t"),
        Usage(),
        {**DEFAULT_PRICES, "ec2.g5.xlarge.hour": 2.0},
    )
    assert f"${expected.total:,.2f}" in out
    assert f"${expected.always_on_total:,.2f}" in out


def test_cost_command_rejects_unknown_prices(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["cost", "--images-per-month", "10", "--price", "gpu=1"]) == 2
    assert "unknown price" in capsys.readouterr().err


def test_result_cache_hits_cost_no_gpu_postprocess_or_storage_and_only_their_notice() -> None:
    gpu = gpu_type("g5.xlarge")
    rate = Throughput(1.0, "test")
    cold = estimate(100_000, gpu, rate, USAGE, PRICES)
    warm = estimate(100_000, gpu, rate, merge_usage({"cache_hit_rate": 0.25}, USAGE), PRICES)
    jobs, hits = 50_000.0, 12_500.0
    busy_hours = lambda est: est.instance_hours - 10 * 30 / 60  # noqa: E731 (minus the start overhead)
    assert busy_hours(warm) == pytest.approx(busy_hours(cold) * 0.75)
    # Transitions: generated jobs as before; a hit with a callback runs Route, Notify, WebhookRetryDue, Done.
    per_job = len(HAPPY_PATH_STATES) - 2 + 2 * USAGE.callback_share
    assert _cost(warm, "stepfunctions.standard.transitions.thousand")[0] == pytest.approx(
        ((jobs - hits) * per_job + hits * 0.5 * 4) / 1e3
    )
    assert _cost(warm, "s3.standard.gb_month")[0] == pytest.approx(_cost(cold, "s3.standard.gb_month")[0] * 0.75)
    # Every image is still downloaded by its client, and every request still reaches the API.
    assert _cost(warm, "transfer.out.internet.gb") == _cost(cold, "transfer.out.internet.gb")
    assert _cost(warm, "apigateway.rest.requests.million") == _cost(cold, "apigateway.rest.requests.million")
    assert warm.total < cold.total
    assert any("result cache: 25%" in note for note in warm.notes)
    with pytest.raises(CostError, match="cache_hit_rate"):
        estimate(100_000, gpu, rate, merge_usage({"cache_hit_rate": 1.5}, USAGE), PRICES)


def test_the_cost_tool_and_the_service_price_from_one_table() -> None:
    from shared import pricing

    assert DEFAULT_PRICES is pricing.DEFAULT_PRICES
    assert pricing.gpu_price("g5.xlarge").usd_per_hour == DEFAULT_PRICES["ec2.g5.xlarge.hour"]
    for instance in GPUS:
        assert pricing.gpu_price(instance).cost(3600) == DEFAULT_PRICES[f"ec2.{instance}.hour"]


# -- Spot, the warm pool and the start from zero --------------------------------------------------------------


def test_spot_hours_are_priced_at_the_spot_key_and_the_rest_on_demand() -> None:
    gpu, ips = gpu_type("g5.xlarge"), 2.0
    plain = estimate(100_000, gpu, Throughput(ips, "t"), USAGE, PRICES)
    mixed = estimate(100_000, gpu, Throughput(ips, "t"), replace(USAGE, spot_share=0.25), PRICES)
    on_demand_h, _ = _cost(mixed, "ec2.g5.xlarge.hour", "instance-hours")
    spot_h, spot_cost = _cost(mixed, "ec2.g5.xlarge.spot.hour", "Spot")
    assert spot_h == pytest.approx(0.25 * plain.instance_hours)
    assert on_demand_h == pytest.approx(0.75 * plain.instance_hours)
    assert spot_cost == pytest.approx(spot_h * PRICES["ec2.g5.xlarge.spot.hour"])
    gpu_bill = mixed.by_group()["GPU workers"] - plain.by_group()["GPU workers"]
    assert gpu_bill == pytest.approx(spot_h * (PRICES["ec2.g5.xlarge.spot.hour"] - PRICES["ec2.g5.xlarge.hour"]))
    with pytest.raises(CostError, match="spot_share"):
        estimate(1, gpu, Throughput(ips, "t"), replace(USAGE, spot_share=1.5), PRICES)


def test_every_gpu_has_an_assumed_spot_price_below_on_demand() -> None:
    for instance in GPUS:
        assert 0 < DEFAULT_PRICES[f"ec2.{instance}.spot.hour"] < DEFAULT_PRICES[f"ec2.{instance}.hour"]
    with pytest.raises(ValueError, match=r"known: g4dn\.xlarge, g5\.2xlarge, g5\.xlarge") as excinfo:
        gpu_price("g9.huge")
    assert "spot" not in str(excinfo.value)


def test_a_warm_pool_costs_its_volumes_and_saves_start_time_per_scale_up() -> None:
    gpu, ips, saving_s = gpu_type("g6.xlarge"), 1.0, 300.0
    without = estimate(50_000, gpu, Throughput(ips, "t"), USAGE, PRICES, saving_s)
    pooled = estimate(50_000, gpu, Throughput(ips, "t"), replace(USAGE, warm_pool_instances=2), PRICES, saving_s)
    saved_h = USAGE.scale_ups_per_month * saving_s / 3600
    assert without.instance_hours - pooled.instance_hours == pytest.approx(saved_h)
    volumes, cost = _cost(pooled, "ebs.gp3.gb_month", "warm pool")
    assert volumes == pytest.approx(2 * USAGE.worker_disk_gib)
    assert cost == pytest.approx(volumes * PRICES["ebs.gp3.gb_month"])


def test_the_start_from_zero_is_modelled_step_by_step_from_the_template_and_the_measurement() -> None:
    template = load_sam_template(REPO / "template.yaml")
    times = template_times(template)
    alarm = template["Resources"]["WorkerScaleFromZeroAlarm"]["Properties"]
    assert times.scale_alarm_s == 60 * alarm["EvaluationPeriods"]
    first = measured_first_image_s()
    report = json.loads(STARTUP_REPORT.read_text())
    assert first[0] == report["process_start_to_first_image_s"]
    assert report["device"]["short"] == "H100"
    assert "H100" in first[1]
    cold, warm, always_on = start_paths(Usage(), times, first)
    for path in (cold, warm, always_on):
        assert path.seconds == pytest.approx(sum(step.seconds for step in path.steps))
        assert all(step.source for step in path.steps)
    assert always_on.seconds < warm.seconds < cold.seconds
    pull = next(s for s in cold.steps if "image" in s.name)
    assert pull.seconds == pytest.approx(Usage().worker_image_gb * 1024 / Usage().image_pull_mb_s)
    fetched = measured_artefacts_mb()[0] / Usage().s3_download_mb_s
    # The warm pool skips the pull and the boot; a pool of instances that never ran still fetches the weights and
    # the compile artefacts.
    assert cold.seconds - warm.seconds == pytest.approx(
        pull.seconds
        + Usage().instance_launch_s
        - Usage().instance_restart_s
        + Usage().model_gb * 1024 / 200.0
        + fetched
    )
    fresh = start_paths(replace(Usage(), warm_pool_reused=False), times, first)[1]
    assert fresh.seconds - warm.seconds == pytest.approx(
        (Usage().model_gb * 1024 + measured_artefacts_mb()[0]) / Usage().s3_download_mb_s
    )


def test_a_new_instance_fetches_the_compile_artefacts_from_s3_at_the_bucket_throughput() -> None:
    report = json.loads(ARTEFACTS_REPORT.read_text())
    saved_mb = report["acceleration"]["mega_cache_saved_bytes"] / 2**20
    assert report["device"]["short"] == "H100"
    assert report["acceleration"]["options"]["compile"] is True
    megabytes, source = measured_artefacts_mb()
    # Per compiled batch size of the run, for each of the five default buckets, twice (the precompiled forwards).
    assert megabytes == pytest.approx(2 * saved_mb / len(report["config"]["batch_sizes"]) * 5)
    assert ARTEFACTS_REPORT.name in source
    assert "assumed" in source
    times = template_times(load_sam_template(REPO / "template.yaml"))
    slow = replace(Usage(), s3_download_mb_s=50.0)
    cold = start_paths(slow, times, (15.0, "t"), (400.0, "src"))[0]
    [step] = [s for s in cold.steps if "compile artefacts" in s.name]
    assert step.seconds == pytest.approx(400.0 / 50.0)  # 8 s, where the first instance compiles for minutes
    assert "src" in step.source
    assert "s3_download_mb_s 50" in step.source
    # After the weights (the levers need the model), before the process's own start measurement.
    names = [s.name for s in cold.steps]
    assert names.index(step.name) == names.index("weights from the stack's bucket to the instance's volume") + 1
    assert names.index(step.name) + 1 == names.index("worker process start to the first image")


def test_cost_command_prints_the_start_from_zero_beside_always_on(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["cost", "--images-per-month", "1000", "--assume", "instance_launch_s=200"]) == 0
    out = capsys.readouterr().out
    times = load_template_times()
    cold, warm, always_on = start_paths(merge_usage({"instance_launch_s": "200"}), times, measured_first_image_s())
    assert "From the first queued job to its image" in out
    for path in (cold, warm, always_on):
        assert path.name.split(" (")[0] in out
    assert f"{cold.seconds:.0f}" in out
    assert f"{warm.seconds:.0f}" in out
