"""What a role of template.yaml lets its code do to the jobs table's items: the item calls a DynamoDB client sends,
recorded as they go out, checked against the role's grants and their ``dynamodb:LeadingKeys`` conditions (which
AWS enforces and the local cloud does not)."""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from localcloud.provision import load_sam_template

TEMPLATE = Path(__file__).resolve().parents[1] / "template.yaml"

# Each part of a transaction is authorised as the single-item action it stands for.
TRANSACT_PARTS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}


class TableCalls:
    """Every item call ``client`` sends from now on, as ``(action, partition key)``: ``dynamodb:GetItem``,
    ``JOB#01J...``."""

    def __init__(self, client: Any) -> None:
        self.calls: list[tuple[str, str]] = []
        client.meta.events.register("before-parameter-build.dynamodb", self._record)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        operation = model.name
        if operation in ("GetItem", "UpdateItem", "DeleteItem"):
            self.calls.append((f"dynamodb:{operation}", params["Key"]["pk"]["S"]))
        elif operation == "PutItem":
            self.calls.append(("dynamodb:PutItem", params["Item"]["pk"]["S"]))
        elif operation == "TransactWriteItems":
            for part in params["TransactItems"]:
                ((kind, call),) = part.items()
                key = call["Item"] if kind == "Put" else call["Key"]
                self.calls.append((f"dynamodb:{TRANSACT_PARTS[kind]}", key["pk"]["S"]))
        elif operation == "TransactGetItems":
            self.calls.extend(("dynamodb:GetItem", part["Get"]["Key"]["pk"]["S"]) for part in params["TransactItems"])
        else:
            raise AssertionError(f"{operation}: teach TableCalls which items it touches")


def _names_the_jobs_table(resource: Any) -> bool:
    return resource in ({"Fn::GetAtt": ["JobsTable", "Arn"]}, {"Fn::GetAtt": "JobsTable.Arn"})


def refused(role: str, calls: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The calls that ``role`` (a role of template.yaml) does not allow on the jobs table's items."""
    policies = load_sam_template(TEMPLATE)["Resources"][role]["Properties"]["Policies"]
    statements = [st for policy in policies for st in policy["PolicyDocument"]["Statement"] if st["Effect"] == "Allow"]

    def allowed(action: str, pk: str) -> bool:
        for st in statements:
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
            if action not in actions or not any(map(_names_the_jobs_table, resources)):
                continue
            condition = st.get("Condition")
            if condition is None:
                return True
            ((operator, keys),) = condition.items()
            assert operator == "ForAllValues:StringLike", condition
            assert set(keys) == {"dynamodb:LeadingKeys"}, condition
            if any(fnmatchcase(pk, pattern) for pattern in keys["dynamodb:LeadingKeys"]):
                return True
        return False

    return [(action, pk) for action, pk in calls if not allowed(action, pk)]
