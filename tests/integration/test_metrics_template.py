"""The template's job alarms and dashboard read the metrics the code emits, under the names, dimensions and units
it emits them with (workflows/jobmetrics.py, workflows/generation/gpumetrics.py); the runbook's metrics table
names every metric the code and the template emit."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest

from localcloud.provision import load_sam_template
from tests.integration.test_template import dashboard_text
from workflows import jobmetrics
from workflows.generation import gpumetrics

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    return dict(load_sam_template(TEMPLATE)["Resources"])


def ref(value: Any) -> str:
    return str(value["Ref"]) if isinstance(value, dict) and "Ref" in value else str(value)


def finished_metric(status: str) -> dict[str, Any]:
    return {
        "Namespace": jobmetrics.NAMESPACE,
        "MetricName": jobmetrics.FINISHED_METRIC,
        "Dimensions": [{"Name": "service", "Value": jobmetrics.SERVICE}, {"Name": "status", "Value": status}],
    }


def test_job_error_rate_is_failed_over_finished_in_five_minutes(resources: dict[str, Any]) -> None:
    props = resources["JobErrorRateAlarm"]["Properties"]
    queries = {q["Id"]: q for q in props["Metrics"]}
    for query_id, status in (("failed", "FAILED"), ("succeeded", "SUCCEEDED")):
        stat = queries[query_id]["MetricStat"]
        assert stat["Metric"] == finished_metric(status)
        assert (stat["Stat"], stat["Period"]) == ("Sum", 300)
    [returned] = [q for q in props["Metrics"] if q["ReturnData"]]
    assert returned["Id"] == "error_rate"
    # The expression itself: a percentage of failures among SUCCEEDED + FAILED, quiet below 3 failures.
    assert "100 * FILL(failed, 0) / (FILL(failed, 0) + FILL(succeeded, 0))" in returned["Expression"]
    assert "FILL(failed, 0) >= 3" in returned["Expression"]
    assert ref(props["Threshold"]) == "JobErrorRatePercent"
    assert props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert [ref(a) for a in props["AlarmActions"]] == ["AlarmTopic"]


def test_end_to_end_latency_alarm_is_the_p95_of_succeeded_jobs(resources: dict[str, Any]) -> None:
    props = resources["JobLatencyAlarm"]["Properties"]
    assert (props["Namespace"], props["MetricName"]) == (jobmetrics.NAMESPACE, jobmetrics.LATENCY_METRIC)
    assert props["Dimensions"] == finished_metric("SUCCEEDED")["Dimensions"]
    assert props["ExtendedStatistic"] == "p95"
    assert "Statistic" not in props
    assert ref(props["Threshold"]) == "JobLatencyAlarmSeconds"
    assert [ref(a) for a in props["AlarmActions"]] == ["AlarmTopic"]


def dashboard(resources: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(re.sub(r"\$\{[^}]+\}", "x", dashboard_text(resources))))


def widget_metrics(board: dict[str, Any], title_part: str) -> list[list[Any]]:
    [widget] = [w for w in board["widgets"] if title_part in w["properties"]["title"].lower()]
    return list(widget["properties"]["metrics"])


def test_dashboard_shows_gpu_utilisation_and_memory_as_the_worker_emits_them(resources: dict[str, Any]) -> None:
    lines = widget_metrics(dashboard(resources), "gpu utilisation and memory")
    shown = {tuple(line[:4]) for line in lines if isinstance(line[0], str)}
    assert shown == {
        ("sdq", gpumetrics.UTILIZATION_METRIC, "service", "worker"),
        ("sdq", gpumetrics.MEMORY_METRIC, "service", "worker"),
    }


def test_dashboard_shows_finished_jobs_error_rate_latency_and_the_new_alarms(resources: dict[str, Any]) -> None:
    board = dashboard(resources)
    finished = widget_metrics(board, "jobs finished")
    statuses = {line[5] for line in finished if isinstance(line[0], str)}
    assert statuses == {"SUCCEEDED", "FAILED", "CANCELLED"}
    assert any("expression" in line[0] for line in finished if isinstance(line[0], dict))
    latency = widget_metrics(board, "end-to-end latency")
    assert {line[1] for line in latency} == {jobmetrics.LATENCY_METRIC}
    assert any(line[-1]["stat"] == "p95" and line[5] == "SUCCEEDED" for line in latency)
    text = dashboard_text(resources)
    for alarm in ("JobErrorRateAlarm", "JobLatencyAlarm"):
        assert f"${{{alarm}.Arn}}" in text, alarm


def metric_name(node: ast.Call, constants: dict[str, str], where: str) -> str:
    """The name an ``add_metric`` call emits: a string, or a module constant holding one."""
    [value] = [k.value for k in node.keywords if k.arg == "name"] or node.args[:1]
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return value.value
    assert isinstance(value, ast.Name), f"{where}: a metric name this test cannot read"
    assert value.id in constants, f"{where}: {value.id} is not a module constant"
    return constants[value.id]


def emitted_by_code() -> set[str]:
    """Every metric name an ``add_metric`` call in the deployed code (handlers, shared, workflows) emits."""
    names = set()
    for path in sorted(p for folder in ("handlers", "shared", "workflows") for p in (REPO / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        constants = {
            target.id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            if isinstance(node.value.value, str)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_metric":
                names.add(metric_name(node, constants, f"{path.relative_to(REPO)}:{node.lineno}"))
    return names


def made_by_metric_filters(resources: dict[str, Any]) -> set[str]:
    return {
        transformation["MetricName"]
        for resource in resources.values()
        if resource["Type"] == "AWS::Logs::MetricFilter"
        for transformation in resource["Properties"]["MetricTransformations"]
        if transformation["MetricNamespace"] == "sdq"
    }


def documented() -> set[str]:
    """The metrics of docs/operations.md's "Metrics" table (its first column)."""
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {name for cell in rows for name in re.findall(r"`(\w+)`", cell)}


def test_the_runbook_names_every_metric_the_code_and_the_template_emit(resources: dict[str, Any]) -> None:
    emitted = emitted_by_code() | made_by_metric_filters(resources)
    assert {"JobsFinished", "GpuUtilization", "CompileArtefactsFailed", "WebhookDelivered"} <= emitted  # found
    assert documented() == emitted
