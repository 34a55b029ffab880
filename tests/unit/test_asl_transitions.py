"""The state machine's direct writes to the jobs table follow the job's transition rules and item layout.

statemachine.asl.json records terminal states with its own ``dynamodb:updateItem`` tasks, beside
``JobsRepository.transition``; each is read here and held to what ``shared.contracts`` and ``shared.jobs`` say,
so the two writers of a job's status cannot drift apart.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.contracts import TRANSITIONS, WORKFLOW_SOURCES, JobStatus, allowed_sources
from shared.jobs import JOB_ATTRIBUTES, REMOVED_WHEN_FINISHED, job_pk, tenant_status

REPO = Path(__file__).resolve().parents[2]
ASL = json.loads((REPO / "statemachine.asl.json").read_text())
JOBS_TABLE = "${JobsTableName}"
# Words of DynamoDB's expression grammar, told apart from attribute names.
GRAMMAR = {"AND", "OR", "NOT", "IN", "BETWEEN", "attribute_exists", "attribute_not_exists", "attribute_type"}
GRAMMAR |= {"begins_with", "contains", "size", "if_not_exists", "list_append"}


@dataclass(frozen=True)
class Write:
    """One updateItem task, its expressions read with attribute names resolved."""

    state: str
    params: dict[str, Any]
    sets: dict[str, str]  # attribute name -> the value expression it is set to
    removes: frozenset[str]
    condition: str

    def value(self, placeholder: str) -> dict[str, Any]:
        return dict(self.params["ExpressionAttributeValues"][placeholder])

    def status_of(self, placeholder: str) -> JobStatus:
        return JobStatus(self.value(placeholder)["S"])

    def statuses_compared(self) -> set[JobStatus]:
        """Every status the condition accepts the job in (``status = :x`` and ``status IN (:x, :y)``)."""
        placeholders = re.findall(r"\bstatus\s*=\s*(:\w+)", self.condition)
        for listed in re.findall(r"\bstatus\s+IN\s*\(([^)]*)\)", self.condition):
            placeholders += [p.strip() for p in listed.split(",")]
        return {self.status_of(p) for p in placeholders}

    def attributes(self) -> set[str]:
        """Every attribute name the write sets, removes or tests."""
        tested = set(re.findall(r"(?<![:\w#])([A-Za-z_]\w*)", self.condition)) - GRAMMAR
        return set(self.sets) | set(self.removes) | tested


def _resolve(expression: str, names: dict[str, str]) -> str:
    return re.sub(r"#\w+", lambda m: names[m.group(0)], expression)


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [*parts, current.strip()] if current.strip() else parts


def _read(state: str, params: dict[str, Any]) -> Write:
    names = params.get("ExpressionAttributeNames", {})
    update = _resolve(params["UpdateExpression"], names)
    clauses = dict(
        zip(*[iter(re.split(r"\b(SET|REMOVE|ADD|DELETE)\b", update)[1:])] * 2, strict=True)  # (keyword, body) pairs
    )
    assert set(clauses) <= {"SET", "REMOVE"}, (state, update)
    sets = {}
    for item in _split_top_level(clauses.get("SET", "")):
        name, value = (side.strip() for side in item.split("=", 1))
        sets[name] = value
    removes = frozenset(_split_top_level(clauses.get("REMOVE", "")))
    return Write(state, params, sets, removes, _resolve(params.get("ConditionExpression", ""), names))


def jobs_table_writes(asl: dict[str, Any]) -> list[Write]:
    writes = []
    for name, state in asl["States"].items():
        resource = state.get("Resource", "")
        if state["Type"] != "Task" or not resource.startswith("arn:aws:states:::dynamodb:"):
            continue
        assert state["Parameters"]["TableName"] == JOBS_TABLE, name
        # Only updateItem is read here; another kind of write would need its own check.
        assert resource == "arn:aws:states:::dynamodb:updateItem", name
        writes.append(_read(name, state["Parameters"]))
    return writes


WRITES = jobs_table_writes(ASL)
STATUS_WRITES = [w for w in WRITES if "status" in w.sets]
OTHER_WRITES = [w for w in WRITES if "status" not in w.sets]


def test_the_state_machine_writes_the_terminal_states_of_the_workflow() -> None:
    assert {w.status_of(w.sets["status"]) for w in STATUS_WRITES} == set(WORKFLOW_SOURCES)
    assert {w.state for w in OTHER_WRITES} == {"WebhookFailed"}


def test_the_workflows_sources_are_legal_ones() -> None:
    for target, sources in WORKFLOW_SOURCES.items():
        assert sources, target
        assert sources <= allowed_sources(target), target


@pytest.mark.parametrize("write", WRITES, ids=lambda w: w.state)
def test_a_write_names_its_job_item_and_only_attributes_of_the_layout(write: Write) -> None:
    assert write.params["Key"] == {"pk": {"S.$": f"States.Format('{job_pk('{}')}', $.job_id)"}}
    assert write.attributes() <= JOB_ATTRIBUTES, write.attributes() - JOB_ATTRIBUTES
    assert write.condition, "every write to a job is conditional"


@pytest.mark.parametrize("write", STATUS_WRITES, ids=lambda w: w.state)
def test_a_status_write_moves_only_from_the_workflows_sources(write: Write) -> None:
    target = write.status_of(write.sets["status"])
    assert write.statuses_compared() - {target} == WORKFLOW_SOURCES[target]
    if target in write.statuses_compared():
        # The target itself only as the task's own earlier write, whose answer was lost: the same finished_at
        # (the state's EnteredTime, which a retry keeps) tells it apart from another writer's.
        own = re.findall(r"\(status = (:\w+) AND finished_at = (:\w+)\)", write.condition)
        assert own == [(write.sets["status"], write.sets["finished_at"])]
        assert write.value(write.sets["finished_at"]) == {"S.$": "$$.State.EnteredTime"}
        assert len(re.findall(r"\bstatus\b", write.condition)) == 2


@pytest.mark.parametrize("write", STATUS_WRITES, ids=lambda w: w.state)
def test_a_status_write_keeps_the_items_indexes_as_the_repository_does(write: Write) -> None:
    target = write.status_of(write.sets["status"])
    ts = write.value(write.sets["tenant_status"])
    assert ts == {"S.$": f"States.Format('{tenant_status('{}', target)}', $.tenant)"}
    if target.terminal:
        assert not TRANSITIONS[target]
        assert write.removes == set(REMOVED_WHEN_FINISHED)
        assert "finished_at" in write.sets
    else:
        assert not write.removes


@pytest.mark.parametrize("write", OTHER_WRITES, ids=lambda w: w.state)
def test_other_writes_leave_the_status_and_its_indexes_alone(write: Write) -> None:
    touched = set(write.sets) | set(write.removes)
    assert not touched & {"status", "tenant_status", "finished_at", *REMOVED_WHEN_FINISHED}


def test_the_check_catches_a_terminal_write_that_leaves_the_unqueued_mark() -> None:
    # A copy of the ASL with MarkSucceeded's removal as it was before issue 19: the checks above refuse it.
    drifted = json.loads(json.dumps(ASL))
    params = drifted["States"]["MarkSucceeded"]["Parameters"]
    params["UpdateExpression"] = re.sub(r" REMOVE .*$", " REMOVE active_tenant", params["UpdateExpression"])
    [write] = [w for w in jobs_table_writes(drifted) if w.state == "MarkSucceeded"]
    with pytest.raises(AssertionError):
        test_a_status_write_keeps_the_items_indexes_as_the_repository_does(write)
