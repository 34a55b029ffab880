"""Contract checks of template.yaml: cfn-lint, substitutions, least-privilege IAM, data protection, the worker
service, alarms, and the local cloud's resource filter. No cloud needed: the template is read with cfn-lint's
decoder and translated with aws-sam-translator exactly as the local cloud does (localcloud/provision.py).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcloud.provision import (
    LOCAL_SKIPPED_TYPES,
    ProvisionError,
    filter_local_resources,
    load_sam_template,
    localize_template,
    translate_sam,
)
from shared.pricing import gpu_price
from shared.settings import API_TIMEOUT_S, Settings, environment_variables
from tests.cases import TWO_FLEET_REGISTRY

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
ASL = ROOT / "statemachine.asl.json"

# cfn-lint rules switched off for this template, each with the reason. Empty: every finding is fixed instead.
IGNORED_RULES: dict[str, str] = {}

# Actions allowed on Resource "*", each because the service offers nothing narrower for it.
STAR_RESOURCE_ACTIONS = {
    "xray:PutTraceSegments": "X-Ray has no resource-level permissions for writing traces",
    "xray:PutTelemetryRecords": "X-Ray has no resource-level permissions for writing telemetry",
    "xray:GetSamplingRules": "X-Ray sampling rules are account-wide",
    "xray:GetSamplingTargets": "X-Ray sampling targets are account-wide",
    "cloudwatch:PutMetricData": "CloudWatch metrics have no resource ARNs (narrow with cloudwatch:namespace)",
    "ecr:GetAuthorizationToken": "the registry login token is account-wide",
    "logs:CreateLogDelivery": "Step Functions log delivery: no resource-level permissions",
    "logs:GetLogDelivery": "Step Functions log delivery: no resource-level permissions",
    "logs:UpdateLogDelivery": "Step Functions log delivery: no resource-level permissions",
    "logs:DeleteLogDelivery": "Step Functions log delivery: no resource-level permissions",
    "logs:ListLogDeliveries": "Step Functions log delivery: no resource-level permissions",
    "logs:PutResourcePolicy": "Step Functions log delivery: no resource-level permissions",
    "logs:DescribeResourcePolicies": "Step Functions log delivery: no resource-level permissions",
    "logs:DescribeLogGroups": "Step Functions log delivery: no resource-level permissions",
}

# AWS-managed policies allowed, per role, each with the reason.
MANAGED_POLICIES = {
    "WorkerInstanceRole": {
        "AmazonEC2ContainerServiceforEC2Role": "the ECS container agent's own permissions, maintained by AWS as the "
        "agent evolves; containers cannot reach them (instance metadata hop limit 1)",
    },
    "ApiGatewayCloudWatchRole": {
        "AmazonAPIGatewayPushToCloudWatchLogs": "API Gateway's account-wide logging role, shared by every REST API "
        "in the account and region, so it cannot name this stack's log groups",
    },
}

FUNCTIONS = (
    "ApiFunction",
    "PostprocessFunction",
    "NotifyFunction",
    "DlqFunction",
    "RequeueFunction",
    "FailedExecutionFunction",
    "EventsFunction",
    "AuthorizerFunction",
)
XRAY_WRITE = {("xray:PutTraceSegments", "*"), ("xray:PutTelemetryRecords", "*")}
XRAY_DAEMON = XRAY_WRITE | {("xray:GetSamplingRules", "*"), ("xray:GetSamplingTargets", "*")}


def _logs(group: str) -> set[tuple[str, str]]:
    return {("logs:CreateLogStream", f"{group}.Arn"), ("logs:PutLogEvents", f"{group}.Arn")}


# Exactly what each role may do: (action, resource). Derived from the code each one runs:
# API: handlers/api.py -> SubmissionService (transact put, get, query indexes, conditional update, the
#   RateLimiter's counter update), ApiKeyStore.resolve (get), WebhookSecrets (get, put), JobQueue.send,
#   Orchestrator.start (cancel/redeliver notices), MediaStore.presign_get (outputs/ only).
# Postprocess: Postprocessor.run (get, transition), MediaStore get/put/delete (staging/ -> outputs/).
# Notify: Notifier.notify (get job, get/put webhook secret, record attempt), presign outputs.
# DLQ: handle_dead_letter (get, requeue a healthy job, transition, start the failed job's webhook notice) + the SQS
#   event source on the DLQ.
# Worker: WorkerQueue receive/visibility/delete, JobsRepository claim/lease/progress, staging uploads, StartExecution,
#   and the X-Ray daemon beside it.
# The job workflow as the postprocess role names it: a reference would be a cycle (the workflow invokes it).
JOB_STATE_MACHINE_PATTERN = "arn:AWS::Partition:states:AWS::Region:AWS::AccountId:stateMachine:*JobStateMachine*"
# The webhook secrets' KMS key: only the roles that sign or hand out secrets (shared/webhooksecrets.py).
SECRETS_KEY = {("kms:Encrypt", "WebhookSecretsKey.Arn"), ("kms:Decrypt", "WebhookSecretsKey.Arn")}
EXPECTED_GRANTS: dict[str, set[tuple[str, str]]] = {
    "ApiFunctionRole": _logs("ApiFunctionLogGroup")
    | XRAY_WRITE
    | SECRETS_KEY
    | {
        ("dynamodb:GetItem", "JobsTable.Arn"),
        ("dynamodb:Query", "JobsTable.Arn/index/*"),
        ("dynamodb:PutItem", "JobsTable.Arn"),
        ("dynamodb:UpdateItem", "JobsTable.Arn"),
        ("sqs:SendMessage", "JobsQueue.Arn"),
        ("sqs:SendMessage", "SecondFleetQueue.Arn"),
        ("states:StartExecution", "JobStateMachine"),
        ("s3:GetObject", "MediaBucket.Arn/outputs/*"),
        # A cancelled job's progress preview (handlers/api.py cancel_job).
        ("s3:DeleteObject", "MediaBucket.Arn/outputs/*/preview.jpg"),
        # POST /v1/uploads' presigned POSTs and reading them at submit; a job's normalised inputs
        # (workflows/preprocessing.py), deleted when the request made no job.
        ("s3:PutObject", "MediaBucket.Arn/uploads/*"),
        ("s3:GetObject", "MediaBucket.Arn/uploads/*"),
        ("s3:ListBucket", "MediaBucket.Arn"),  # a missing upload reads as NoSuchKey (below)
        ("s3:PutObject", "MediaBucket.Arn/outputs/*/input-*.png"),
        ("s3:DeleteObject", "MediaBucket.Arn/outputs/*/input-*.png"),
        # The audit log: appended to on every state-changing call, read by GET /v1/audit (shared/audit.py).
        ("dynamodb:PutItem", "AuditTable.Arn"),
        ("dynamodb:Query", "AuditTable.Arn"),
    },
    "PostprocessFunctionRole": _logs("PostprocessFunctionLogGroup")
    | XRAY_WRITE
    | {
        ("dynamodb:GetItem", "JobsTable.Arn"),
        ("dynamodb:UpdateItem", "JobsTable.Arn"),
        # SettleJoined moves a failed source's cache entry to the joined job sent to run (CACHE# items only).
        ("dynamodb:PutItem", "JobsTable.Arn"),
        ("s3:GetObject", "MediaBucket.Arn/staging/*"),
        ("s3:GetObject", "MediaBucket.Arn/outputs/*"),
        ("s3:PutObject", "MediaBucket.Arn/outputs/*"),
        ("s3:DeleteObject", "MediaBucket.Arn/staging/*"),
        ("s3:ListBucket", "MediaBucket.Arn"),
        # SettleJoined (workflows/resultcache.py): joined jobs sent to run, or their job.succeeded notices.
        ("sqs:SendMessage", "JobsQueue.Arn"),
        ("sqs:SendMessage", "SecondFleetQueue.Arn"),
        ("states:StartExecution", JOB_STATE_MACHINE_PATTERN),
    },
    # Events: handlers/events.py -> JobsRepository.get and KeyCheck's ApiKeyStore.get, presign outputs and previews.
    "AuthorizerFunctionRole": _logs("AuthorizerFunctionLogGroup")
    | XRAY_WRITE
    | {
        ("dynamodb:GetItem", "JobsTable.Arn"),
        ("dynamodb:UpdateItem", "JobsTable.Arn"),
    },
    "EventsFunctionRole": _logs("EventsFunctionLogGroup")
    | XRAY_WRITE
    | {
        ("dynamodb:GetItem", "JobsTable.Arn"),
        ("dynamodb:UpdateItem", "JobsTable.Arn"),  # its tenant's stream slots (STREAMS# only)
        ("s3:GetObject", "MediaBucket.Arn/outputs/*"),
    },
    "NotifyFunctionRole": _logs("NotifyFunctionLogGroup")
    | XRAY_WRITE
    | SECRETS_KEY
    | {
        ("dynamodb:GetItem", "JobsTable.Arn"),
        ("dynamodb:PutItem", "JobsTable.Arn"),
        ("dynamodb:UpdateItem", "JobsTable.Arn"),
        ("s3:GetObject", "MediaBucket.Arn/outputs/*"),
    },
    "DlqFunctionRole": _logs("DlqFunctionLogGroup")
    | XRAY_WRITE
    | {
        ("dynamodb:GetItem", "JobsTable.Arn"),
        ("dynamodb:UpdateItem", "JobsTable.Arn"),
        ("states:StartExecution", "JobStateMachine"),
        ("sqs:ReceiveMessage", "JobsDeadLetterQueue.Arn"),
        ("sqs:DeleteMessage", "JobsDeadLetterQueue.Arn"),
        ("sqs:GetQueueAttributes", "JobsDeadLetterQueue.Arn"),
        ("sqs:SendMessage", "JobsQueue.Arn"),
        ("sqs:SendMessage", "SecondFleetQueue.Arn"),
    },
    "FailedExecutionFunctionRole": _logs("FailedExecutionFunctionLogGroup")
    | XRAY_WRITE
    | {
        ("dynamodb:GetItem", "JobsTable.Arn"),
        ("dynamodb:UpdateItem", "JobsTable.Arn"),
        ("states:StartExecution", "JobStateMachine"),
        ("sqs:ReceiveMessage", "FailedExecutionEventsQueue.Arn"),
        ("sqs:DeleteMessage", "FailedExecutionEventsQueue.Arn"),
        ("sqs:GetQueueAttributes", "FailedExecutionEventsQueue.Arn"),
    },
    "RequeueFunctionRole": _logs("RequeueFunctionLogGroup")
    | XRAY_WRITE
    | {
        ("dynamodb:Query", "JobsTable.Arn/index/unqueued"),
        ("dynamodb:GetItem", "JobsTable.Arn"),
        ("dynamodb:UpdateItem", "JobsTable.Arn"),
        ("sqs:SendMessage", "JobsQueue.Arn"),
        ("sqs:SendMessage", "SecondFleetQueue.Arn"),
        # Abandoned jobs: found among the RUNNING ones, failed, their job.failed webhook started.
        ("dynamodb:Query", "JobsTable.Arn/index/by_status"),
        ("states:StartExecution", "JobStateMachine"),
    },
    "JobStateMachineRole": XRAY_DAEMON
    | {
        ("lambda:InvokeFunction", "PostprocessFunction.Arn"),
        ("lambda:InvokeFunction", "NotifyFunction.Arn"),
        ("dynamodb:UpdateItem", "JobsTable.Arn"),
    }
    | {(action, "*") for action in STAR_RESOURCE_ACTIONS if action.startswith("logs:")},
    "WorkerTaskRole": XRAY_DAEMON
    | SECRETS_KEY
    | {
        ("sqs:ReceiveMessage", "JobsQueue.Arn"),
        ("sqs:ReceiveMessage", "SecondFleetQueue.Arn"),
        ("sqs:DeleteMessage", "JobsQueue.Arn"),
        ("sqs:DeleteMessage", "SecondFleetQueue.Arn"),
        ("sqs:ChangeMessageVisibility", "JobsQueue.Arn"),
        ("sqs:ChangeMessageVisibility", "SecondFleetQueue.Arn"),
        ("dynamodb:GetItem", "JobsTable.Arn"),
        ("dynamodb:UpdateItem", "JobsTable.Arn"),
        ("s3:PutObject", "MediaBucket.Arn/staging/*"),
        ("states:StartExecution", "JobStateMachine"),
        # Progress previews (and presigning them for job.progress webhooks); the webhooks' signing secret.
        ("s3:PutObject", "MediaBucket.Arn/outputs/*/preview.jpg"),
        ("s3:GetObject", "MediaBucket.Arn/outputs/*/preview.jpg"),
        ("s3:DeleteObject", "MediaBucket.Arn/outputs/*/preview.jpg"),
        # Image-to-image and inpainting inputs, normalised at submit.
        ("s3:GetObject", "MediaBucket.Arn/outputs/*/input-*.png"),
        ("dynamodb:PutItem", "JobsTable.Arn"),
        # Scale-in protection while it has work, through the ECS agent's endpoint (its own tasks only).
        ("ecs:UpdateTaskProtection", "arn:AWS::Partition:ecs:AWS::Region:AWS::AccountId:task/*"),
        # Imported models' weights (sdq admin models import), read only.
        ("s3:GetObject", "MediaBucket.Arn/models/*"),
        ("s3:ListBucket", "MediaBucket.Arn"),
        # Compile artefacts shared between workers (workflows/generation/compileartefacts.py): no delete.
        ("s3:GetObject", "MediaBucket.Arn/compile-artefacts/*"),
        ("s3:PutObject", "MediaBucket.Arn/compile-artefacts/*"),
    },
    "WorkerExecutionRole": _logs("WorkerLogGroup")
    | {
        ("ecr:GetAuthorizationToken", "*"),
        ("ecr:BatchCheckLayerAvailability", "WorkerRepository.Arn"),
        ("ecr:GetDownloadUrlForLayer", "WorkerRepository.Arn"),
        ("ecr:BatchGetImage", "WorkerRepository.Arn"),
    },
    # The warm pool's launch hook, completed by the user data once a warming instance pulled the image.
    "WorkerInstanceRole": {
        (
            "autoscaling:CompleteLifecycleAction",
            "arn:AWS::Partition:autoscaling:AWS::Region:AWS::AccountId:autoScalingGroup:*:"
            "autoScalingGroupName/WorkerAutoScalingGroup",
        )
    },
    "ApiGatewayCloudWatchRole": set(),
}

# Writes limited to item kinds by dynamodb:LeadingKeys (the API cannot mint API keys, Notify writes only secrets).
EXPECTED_LEADING_KEYS = {
    ("ApiFunctionRole", "dynamodb:PutItem"): {"JOB#*", "IDEM#*", "TENANT#*", "CACHE#*"},
    # transitions, rate and daily GPU work counters, freed keys
    ("ApiFunctionRole", "dynamodb:UpdateItem"): {"JOB#*", "RATE#*", "BUDGET#*", "IDEM#*"},
    ("AuthorizerFunctionRole", "dynamodb:GetItem"): {"APIKEY#*", "ACCOUNT#*"},  # keys and plans, nothing else
    ("AuthorizerFunctionRole", "dynamodb:UpdateItem"): {"APIKEY#*"},  # a key's last use
    # transitions; a released joined job's GPU work (shared/ratelimit.py DailyGpuBudget.collect)
    ("PostprocessFunctionRole", "dynamodb:UpdateItem"): {"JOB#*", "BUDGET#*"},
    # A cache entry moved to the job that now generates: tests/unit/test_resultcache.py settles and checks each write.
    ("PostprocessFunctionRole", "dynamodb:PutItem"): {"CACHE#*"},
    ("NotifyFunctionRole", "dynamodb:PutItem"): {"TENANT#*"},
    ("NotifyFunctionRole", "dynamodb:UpdateItem"): {"JOB#*", "WEBHOOKS#*"},  # attempts; its tenant's delivery leases
    ("DlqFunctionRole", "dynamodb:UpdateItem"): {"JOB#*"},
    ("RequeueFunctionRole", "dynamodb:UpdateItem"): {"JOB#*", "BUDGET#*"},  # sent marks; a released job's work
    ("FailedExecutionFunctionRole", "dynamodb:UpdateItem"): {"JOB#*"},
    ("WorkerTaskRole", "dynamodb:UpdateItem"): {"JOB#*", "WORKER#*"},  # claims, leases, progress; its throughput
    ("WorkerTaskRole", "dynamodb:PutItem"): {"TENANT#*"},  # a progress webhook's signing secret, on first use
    # The job it streams, and the caller's key, re-read as often as the authorizer's answer is cached (KeyCheck):
    # tests/unit/test_event_routes.py runs a stream and checks every item it reads is one this grant allows.
    ("EventsFunctionRole", "dynamodb:GetItem"): {"JOB#*", "APIKEY#*", "STREAMS#*"},
    ("EventsFunctionRole", "dynamodb:UpdateItem"): {"STREAMS#*"},  # its tenant's open streams (StreamSlots)
    # The roles that sign no webhook read job items only (Postprocess also the result cache's entries), never a
    # tenant's secret, key or plan.
    ("PostprocessFunctionRole", "dynamodb:GetItem"): {"JOB#*", "CACHE#*"},
    ("DlqFunctionRole", "dynamodb:GetItem"): {"JOB#*"},
    ("RequeueFunctionRole", "dynamodb:GetItem"): {"JOB#*"},
    ("FailedExecutionFunctionRole", "dynamodb:GetItem"): {"JOB#*"},
    ("JobStateMachineRole", "dynamodb:UpdateItem"): {"JOB#*"},
}

TRUSTED_SERVICE = {
    "ApiFunctionRole": "lambda.amazonaws.com",
    "AuthorizerFunctionRole": "lambda.amazonaws.com",
    "EventsFunctionRole": "lambda.amazonaws.com",
    "PostprocessFunctionRole": "lambda.amazonaws.com",
    "NotifyFunctionRole": "lambda.amazonaws.com",
    "DlqFunctionRole": "lambda.amazonaws.com",
    "RequeueFunctionRole": "lambda.amazonaws.com",
    "FailedExecutionFunctionRole": "lambda.amazonaws.com",
    "JobStateMachineRole": "states.amazonaws.com",
    "WorkerTaskRole": "ecs-tasks.amazonaws.com",
    "WorkerExecutionRole": "ecs-tasks.amazonaws.com",
    "WorkerInstanceRole": "ec2.amazonaws.com",
    "ApiGatewayCloudWatchRole": "apigateway.amazonaws.com",
}


# --- fixtures and helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sam() -> dict[str, Any]:
    return load_sam_template(TEMPLATE)


@pytest.fixture(scope="module")
def cfn(sam: dict[str, Any]) -> dict[str, Any]:
    local, _, _ = localize_template(sam, ROOT, ASL)
    return translate_sam(local, "us-east-1", {})


@pytest.fixture(scope="module")
def resources(cfn: dict[str, Any]) -> dict[str, Any]:
    """The translated resources, each role with the policies attached to it apart (``AWS::IAM::Policy``) among its
    own, so that a role's grants are all in one place."""
    found = copy.deepcopy(dict(cfn["Resources"]))
    for resource in found.values():
        if resource["Type"] == "AWS::IAM::Policy":
            props = resource["Properties"]
            for role in props["Roles"]:
                policies = found[show(role)]["Properties"].setdefault("Policies", [])
                policies.append({"PolicyName": props["PolicyName"], "PolicyDocument": props["PolicyDocument"]})
    return found


def show(value: Any) -> str:
    """An intrinsic as readable text: ``JobsTable.Arn``, ``MediaBucket.Arn/outputs/*``, ``JobStateMachine``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Ref" in value:
        return str(value["Ref"])
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        return ".".join(target) if isinstance(target, list) else str(target)
    if isinstance(value, dict) and "Fn::Sub" in value:
        text = value["Fn::Sub"] if isinstance(value["Fn::Sub"], str) else value["Fn::Sub"][0]
        return re.sub(r"\$\{([^}]+)\}", r"\1", text)
    if isinstance(value, dict) and "Fn::If" in value:
        return show(value["Fn::If"][1])  # what its condition turns on (the second fleet's queue, AllowedModels)
    raise AssertionError(f"unexpected intrinsic {value!r}")


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def statements(role: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for policy in role["Properties"].get("Policies", []):
        yield from policy["PolicyDocument"]["Statement"]


def grants(role: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (action, show(resource))
        for st in statements(role)
        if st["Effect"] == "Allow"
        for action in _as_list(st["Action"])
        for resource in _as_list(st["Resource"])
    }


def roles(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in resources.items() if r["Type"] == "AWS::IAM::Role"}


def env_of(resource: dict[str, Any]) -> dict[str, Any]:
    return dict(resource["Properties"].get("Environment", {}).get("Variables", {}))


def container(resources: dict[str, Any], name: str) -> dict[str, Any]:
    containers = resources["WorkerTaskDefinition"]["Properties"]["ContainerDefinitions"]
    return next(c for c in containers if c["Name"] == name)


def resolve(value: Any, given: dict[str, str], conditions: dict[str, bool], sam: dict[str, Any]) -> Any:
    """An environment value of the translated template as a deploy with ``given`` parameter and resource values
    (the others' defaults, or their names) and ``conditions`` would set it."""
    if isinstance(value, str | int):
        return str(value)

    def ref(name: str) -> str:
        default = sam["Parameters"].get(name, {}).get("Default", name)
        return given.get(name, str(default))

    ((function, arg),) = value.items()
    if function == "Ref":
        return ref(arg)
    if function == "Fn::GetAtt":
        return ref(arg if isinstance(arg, str) else ".".join(arg))
    if function == "Fn::If":
        condition, yes, no = arg
        return resolve(yes if conditions[condition] else no, given, conditions, sam)
    if function == "Fn::Sub":
        text, names = (arg, {}) if isinstance(arg, str) else arg
        local = {k: resolve(v, given, conditions, sam) for k, v in names.items()}
        return re.sub(r"\$\{([^}]+)\}", lambda m: local[m[1]] if m[1] in local else ref(m[1]), text)
    if function == "Fn::Join":
        separator, parts = arg
        return separator.join(resolve(parts, given, conditions, sam))
    if function == "Fn::Split":
        separator, text = arg
        return resolve(text, given, conditions, sam).split(separator)
    raise AssertionError(f"unexpected intrinsic {value!r}")


def deployed_settings(
    function: str,
    sam: dict[str, Any],
    resources: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    given: dict[str, str] | None = None,
    conditions: dict[str, bool] | None = None,
) -> Settings:
    """The settings ``function`` reads from its environment in a deploy with ``given`` values (else the defaults)."""
    conditions = conditions or {"HasSecondFleet": False, "HasAllowedModels": False}
    with monkeypatch.context() as env:
        for name, value in env_of(resources[function]).items():
            if name.startswith("SDQ_"):
                env.setenv(name, resolve(value, given or {}, conditions, sam))
        return Settings()


# --- lint and substitutions -----------------------------------------------------------------------------------


def _lint(text: str) -> list[str]:
    from cfnlint.api import lint
    from cfnlint.config import ManualArgs

    config = ManualArgs(regions=["us-east-1", "us-west-2", "eu-west-1"], ignore_checks=sorted(IGNORED_RULES))
    return [f"{m.rule.id} {m.message} ({m.linenumber}:{m.columnnumber})" for m in lint(text, config=config)]


def test_cfn_lint_reports_no_errors_or_warnings() -> None:
    assert _lint(TEMPLATE.read_text()) == []


def test_cfn_lint_is_really_checking() -> None:
    broken = TEMPLATE.read_text().replace("StopTimeout: 120", "StopTimeoutSeconds: 120", 1)
    assert any(finding.startswith("E3002") for finding in _lint(broken))


def test_every_asl_placeholder_has_a_substitution_and_every_substitution_is_used(sam: dict[str, Any]) -> None:
    used = set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", ASL.read_text()))
    machine = sam["Resources"]["JobStateMachine"]["Properties"]
    assert machine["DefinitionUri"] == ASL.name
    assert used
    assert used == set(machine["DefinitionSubstitutions"])


# --- IAM: least privilege -------------------------------------------------------------------------------------


def test_each_role_grants_exactly_what_its_code_uses(resources: dict[str, Any]) -> None:
    found = roles(resources)
    assert set(found) == set(EXPECTED_GRANTS), "a role was added or removed: give it an entry here"
    for name, role in found.items():
        assert grants(role) == EXPECTED_GRANTS[name], name


def test_no_wildcards_where_a_narrower_grant_exists(resources: dict[str, Any]) -> None:
    for name, role in roles(resources).items():
        for st in statements(role):
            assert st["Effect"] == "Allow", name
            assert "NotAction" not in st, name
            assert "NotResource" not in st, name
            for action in _as_list(st["Action"]):
                assert "*" not in action, f"{name}: wildcard action {action}"
            if "*" in _as_list(st["Resource"]):
                bad = [a for a in _as_list(st["Action"]) if a not in STAR_RESOURCE_ACTIONS]
                assert not bad, f'{name}: {bad} on Resource "*"'


def test_managed_policies_are_only_the_explained_ones(resources: dict[str, Any]) -> None:
    for name, role in roles(resources).items():
        arns = [show(a) for a in role["Properties"].get("ManagedPolicyArns", [])]
        names = {arn.rsplit("/", 1)[-1] for arn in arns}
        assert names == set(MANAGED_POLICIES.get(name, {})), name


# Roles whose item reads (GetItem) of the jobs table may read any item kind: their reads span many kinds, never
# each traced to one, and a condition that missed one would refuse it on AWS. Every other item read, and every
# write, is limited by dynamodb:LeadingKeys (docs/deploy.md and docs/security.md say so).
UNLIMITED_ITEM_READERS = ("ApiFunctionRole", "NotifyFunctionRole", "WorkerTaskRole")


def test_every_jobs_table_write_and_all_but_the_explained_reads_are_limited_to_item_kinds(
    resources: dict[str, Any],
) -> None:
    for name, role in roles(resources).items():
        for action, resource in grants(role):
            if resource != "JobsTable.Arn" or not action.startswith("dynamodb:"):
                continue
            if action == "dynamodb:GetItem" and name in UNLIMITED_ITEM_READERS:
                continue
            assert (name, action) in EXPECTED_LEADING_KEYS, (name, action)


def test_dynamodb_writes_are_limited_to_their_item_kinds(resources: dict[str, Any]) -> None:
    for (role, action), prefixes in EXPECTED_LEADING_KEYS.items():
        conditions = [
            st.get("Condition")
            for st in statements(resources[role])
            if action in _as_list(st["Action"]) and "JobsTable.Arn" in map(show, _as_list(st["Resource"]))
        ]
        assert len(conditions) == 1, (role, action, conditions)
        assert set(conditions[0]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]) == prefixes, (role, action)
    # Nobody can mint API keys or change plans (the operator's `sdq admin` does), delete items or scan the table.
    for name, role in roles(resources).items():
        actions = {a for a, _ in grants(role)}
        assert not actions & {"dynamodb:DeleteItem", "dynamodb:Scan", "dynamodb:BatchWriteItem"}, name
    api_put = [st for st in statements(resources["ApiFunctionRole"]) if "dynamodb:PutItem" in _as_list(st["Action"])]
    assert "APIKEY#*" not in json.dumps(api_put)
    for name, role in roles(resources).items():
        writes = [
            st for st in statements(role) if {"dynamodb:PutItem", "dynamodb:UpdateItem"} & set(_as_list(st["Action"]))
        ]
        assert "ACCOUNT#" not in json.dumps(writes), name


def test_who_may_do_what(resources: dict[str, Any]) -> None:
    by_role = {name: grants(role) for name, role in roles(resources).items()}

    def holders(action: str, resource_prefix: str = "") -> set[str]:
        return {n for n, g in by_role.items() if any(a == action and r.startswith(resource_prefix) for a, r in g)}

    # Submit; requeue dead letters after worker crashes; requeue jobs whose submission died before sending.
    # ...and send jobs that joined one that failed (the result cache's SettleJoined, in the postprocess function).
    assert holders("sqs:SendMessage") == {
        "ApiFunctionRole",
        "DlqFunctionRole",
        "RequeueFunctionRole",
        "PostprocessFunctionRole",
    }
    assert holders("sqs:ReceiveMessage", "JobsQueue") == {"WorkerTaskRole"}
    assert holders("sqs:ReceiveMessage", "JobsDeadLetterQueue") == {"DlqFunctionRole"}
    assert holders("s3:DeleteObject") == {"PostprocessFunctionRole", "ApiFunctionRole", "WorkerTaskRole"}
    # Only the postprocess step deletes staged images; the worker deletes progress previews, the API those and the
    # inputs of a request that made no job, nothing else.
    previews, inputs = "MediaBucket.Arn/outputs/*/preview.jpg", "MediaBucket.Arn/outputs/*/input-*.png"
    assert {r for a, r in by_role["WorkerTaskRole"] if a == "s3:DeleteObject"} == {previews}
    assert {r for a, r in by_role["ApiFunctionRole"] if a == "s3:DeleteObject"} == {previews, inputs}
    assert holders("s3:PutObject") == {"PostprocessFunctionRole", "WorkerTaskRole", "ApiFunctionRole"}
    # The worker writes only its jobs' progress previews under outputs/ (and reads their inputs), never an output.
    assert {r for a, r in by_role["WorkerTaskRole"] if r.startswith("MediaBucket.Arn/outputs/")} == {previews, inputs}
    assert {(a, r) for a, r in by_role["WorkerTaskRole"] if r == inputs} == {("s3:GetObject", inputs)}
    # The worker's hand-off, and the notices of the API (cancel, redeliver), dead letters, failed executions and
    # abandoned jobs (the requeue sweeper).
    assert holders("states:StartExecution") == {
        "ApiFunctionRole",
        "WorkerTaskRole",
        "DlqFunctionRole",
        "RequeueFunctionRole",
        "FailedExecutionFunctionRole",
        "PostprocessFunctionRole",  # joined jobs' job.succeeded notices
    }
    assert holders("lambda:InvokeFunction") == {"JobStateMachineRole"}
    # The API writes only uploads (through the POSTs it presigns) and a job's normalised inputs, never an output.
    assert {r for a, r in by_role["ApiFunctionRole"] if a == "s3:PutObject"} == {"MediaBucket.Arn/uploads/*", inputs}


# The roles whose code tells an absent object by S3's NoSuchKey, and the keys it reads so: the API a job's upload
# (422 upload_not_found, workflows/preprocessing.py), Postprocess a staged image a retried run already finished.
# S3 answers NoSuchKey only to a caller that may list the bucket, AccessDenied to any other: for the API, a 500.
READS_ABSENT_KEYS = {
    "ApiFunctionRole": "MediaBucket.Arn/uploads/*",
    "PostprocessFunctionRole": "MediaBucket.Arn/staging/*",
}


def test_a_role_that_tells_a_missing_object_by_nosuchkey_may_list_the_bucket(resources: dict[str, Any]) -> None:
    for name, keys in READS_ABSENT_KEYS.items():
        role = resources[name]
        assert ("s3:GetObject", keys) in grants(role), name
        listing = [st for st in statements(role) if "s3:ListBucket" in _as_list(st["Action"])]
        assert [show(st["Resource"]) for st in listing] == ["MediaBucket.Arn"], name
        # Unconditioned: a GetObject carries no s3:prefix, so a grant conditioned on one would not count for it.
        assert all("Condition" not in st for st in listing), name


def test_roles_are_trusted_by_their_service_and_used_by_their_component(resources: dict[str, Any]) -> None:
    for name, role in roles(resources).items():
        trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert [st["Principal"]["Service"] for st in trust] == [TRUSTED_SERVICE[name]], name
    for fn in FUNCTIONS:
        assert show(resources[fn]["Properties"]["Role"]) == f"{fn}Role.Arn"
        log_group = show(resources[fn]["Properties"]["LoggingConfig"]["LogGroup"])
        assert _logs(log_group) <= grants(resources[f"{fn}Role"]), fn
    assert show(resources["JobStateMachine"]["Properties"]["RoleArn"]) == "JobStateMachineRole.Arn"
    task = resources["WorkerTaskDefinition"]["Properties"]
    assert show(task["TaskRoleArn"]) == "WorkerTaskRole.Arn"
    assert show(task["ExecutionRoleArn"]) == "WorkerExecutionRole.Arn"
    assert [show(r) for r in resources["WorkerInstanceProfile"]["Properties"]["Roles"]] == ["WorkerInstanceRole"]


def test_state_machine_role_covers_every_task_of_the_asl(resources: dict[str, Any], sam: dict[str, Any]) -> None:
    substitutions = {
        k: show(v) for k, v in sam["Resources"]["JobStateMachine"]["Properties"]["DefinitionSubstitutions"].items()
    }
    granted = grants(resources["JobStateMachineRole"])
    needed = set()
    for state in json.loads(ASL.read_text())["States"].values():
        if state["Type"] != "Task":
            continue
        params = state["Parameters"]
        if state["Resource"] == "arn:aws:states:::lambda:invoke":
            target = substitutions[params["FunctionName"].strip("${}")]
            needed.add(("lambda:InvokeFunction", target))
        elif state["Resource"] == "arn:aws:states:::dynamodb:updateItem":
            table = substitutions[params["TableName"].strip("${}")]
            needed.add(("dynamodb:UpdateItem", f"{table}.Arn"))
        else:
            raise AssertionError(f"unknown task resource {state['Resource']}: grant it and extend this test")
    assert needed
    assert needed <= granted
    assert {g for g in granted if not g[0].startswith(("logs:", "xray:"))} == needed


# --- configuration the code reads ---------------------------------------------------------------------------


def test_every_sdq_variable_is_a_real_setting(resources: dict[str, Any]) -> None:
    settings = environment_variables()
    declared: set[str] = set()
    for resource in resources.values():
        if resource["Type"] == "AWS::Lambda::Function":
            declared |= set(env_of(resource))
    for c in resources["WorkerTaskDefinition"]["Properties"]["ContainerDefinitions"]:
        declared |= {e["Name"] for e in c.get("Environment", [])}
    sdq = {name for name in declared if name.startswith("SDQ_")}
    assert sdq
    assert sdq <= settings, sorted(sdq - settings)


def test_worker_container_gets_everything_the_worker_reads(sam: dict[str, Any], resources: dict[str, Any]) -> None:
    worker = container(resources, "worker")
    env = {e["Name"]: show(e["Value"]) for e in worker["Environment"]}
    assert env["SDQ_TABLE_NAME"] == "JobsTable"
    assert env["SDQ_QUEUE_URL"] == "JobsQueue"
    assert env["SDQ_DLQ_URL"] == "JobsDeadLetterQueue"
    assert env["SDQ_BUCKET"] == "MediaBucket"
    assert env["SDQ_STATE_MACHINE_ARN"] == "JobStateMachine"
    assert env["SDQ_MODEL"] == "ModelId"
    assert env["SDQ_MAX_BATCH_IMAGES"] == "MaxBatchImages"
    assert env["SDQ_VISIBILITY_TIMEOUT_S"] == "VisibilityTimeoutSeconds"
    assert env["SDQ_GRACE_S"] == "WorkerGraceSeconds"
    assert env["SDQ_XRAY"] == "true"
    # Compile is a deploy parameter (off by default); its caches persist on the instance's model volume.
    assert env["SDQ_COMPILE"] == "WorkerCompile"
    assert sam["Parameters"]["WorkerCompile"]["Default"] == "false"
    volume = next(m["ContainerPath"] for m in worker["MountPoints"] if m["SourceVolume"] == "model-cache")
    assert env["SDQ_COMPILE_CACHE_DIR"].startswith(volume + "/")
    assert env["SDQ_COMPILE_MEGA_CACHE"].startswith(env["SDQ_COMPILE_CACHE_DIR"] + "/")
    assert env["AWS_XRAY_DAEMON_ADDRESS"] == "xray-daemon:2000"
    assert worker["Links"] == ["xray-daemon"]
    assert [r["Type"] for r in worker["ResourceRequirements"]] == ["GPU"]
    assert show(worker["Image"]) == "WorkerRepository.RepositoryUri:WorkerImageTag"


def test_jobs_are_priced_at_the_deployed_instance_type(
    sam: dict[str, Any], resources: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's usage.estimated_cost_usd is its GPU seconds at the price of the instance type the stack runs
    (GpuInstanceType): every type the template allows has a price, and the workers of both fleets and every
    function (the API and Postprocess price result-cache answers) are told the deployed one, not the default."""
    for instance in sam["Parameters"]["GpuInstanceType"]["AllowedValues"]:
        assert gpu_price(instance).usd_per_hour > 0, instance
        given = {"GpuInstanceType": instance}
        for fn in FUNCTIONS:
            assert deployed_settings(fn, sam, resources, monkeypatch, given).gpu_instance_type == instance, fn
        for task in ("WorkerTaskDefinition", "SecondFleetTaskDefinition"):
            containers = resources[task]["Properties"]["ContainerDefinitions"]
            worker = next(c for c in containers if c["Name"] == "worker")
            env = {e["Name"]: e["Value"] for e in worker["Environment"]}
            assert resolve(env["SDQ_GPU_INSTANCE_TYPE"], given, {}, sam) == instance, task


def test_worker_container_is_health_checked_by_the_file_its_watchdog_keeps_fresh(resources: dict[str, Any]) -> None:
    """ECS replaces a task whose worker stopped touching its health file; the image runs the same check, and its
    environment names the file (ECS ignores a Dockerfile HEALTHCHECK, so the task definition carries its own)."""
    check = container(resources, "worker")["HealthCheck"]
    assert check["Command"] == ["CMD", "python", "-m", "workflows.generation.health"]
    assert check["StartPeriod"] >= 120  # the model loads before the first touch; no file yet counts as healthy
    assert check["Interval"] * check["Retries"] >= 60
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["python", "-m", "workflows.generation.health"]' in dockerfile
    assert re.search(r"SDQ_HEALTH_FILE=/tmp/\S+", dockerfile)


def test_api_function_knows_the_models_and_the_state_machine(resources: dict[str, Any]) -> None:
    env = env_of(resources["ApiFunction"])
    assert show(env["SDQ_STATE_MACHINE_ARN"]) == "JobStateMachine"
    # AllowedModels as a JSON list (the models of both fleets), else ModelId alone.
    condition, allowed, alone = env["SDQ_MODELS"]["Fn::If"]
    assert (condition, show(allowed), show(alone)) == ("HasAllowedModels", '["Ids"]', '["ModelId"]')
    assert show(env["SDQ_DEFAULT_MODEL"]) == "ModelId"
    assert show(env["SDQ_JOB_RETENTION_DAYS"]) == "RetentionDays"
    for fn in FUNCTIONS:
        variables = env_of(resources[fn])
        assert variables["POWERTOOLS_METRICS_NAMESPACE"] == "sdq", fn
        assert "POWERTOOLS_SERVICE_NAME" in variables, fn
        # Never switched on from the template: locally these variables reach in-process handlers.
        assert "POWERTOOLS_TRACE_DISABLED" not in variables, fn
        assert "SDQ_PROFILE" not in variables, fn


def test_the_requeue_sweeper_runs_alone_each_minute_and_leaves_live_submissions_be(
    sam: dict[str, Any], resources: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    props = sam["Resources"]["RequeueFunction"]["Properties"]
    assert props["Events"]["Sweep"] == {
        "Type": "Schedule",
        "Properties": {
            "Schedule": "rate(1 minute)",
            "Description": props["Events"]["Sweep"]["Properties"]["Description"],
        },
    }
    # A failed run is not retried beside the next one, and a run ends before the next starts.
    assert props["EventInvokeConfig"] == {"MaximumRetryAttempts": 0}
    assert props["Timeout"] <= 60
    # No reserved concurrency: Lambda refuses one that leaves an account under 100 unreserved.
    assert "ReservedConcurrentExecutions" not in props
    settings = deployed_settings("RequeueFunction", sam, resources, monkeypatch)
    assert show(env_of(resources["RequeueFunction"])["SDQ_STATE_MACHINE_ARN"]) == "JobStateMachine"
    # A job is requeued only once no API call that wrote it can still be sending its message.
    assert settings.requeue_after_s > sam["Globals"]["Function"]["Timeout"]
    assert "Timeout" not in sam["Resources"]["ApiFunction"]["Properties"]
    # A replay of a job still unsent is answered 409 for as long as the API call that wrote it may be sending it.
    assert sam["Globals"]["Function"]["Timeout"] == API_TIMEOUT_S
    # A sweep stops taking jobs well inside its function's timeout, even with every call at its longest.
    longest_call = settings.aws_max_attempts * (settings.aws_connect_timeout_s + settings.aws_read_timeout_s)
    assert settings.requeue_budget_s + 3 * longest_call < props["Timeout"]


# Bounds an operator sets at deploy time, each a parameter that reaches the function using it with the setting's
# default and floor: (parameter, setting, function, a value given), and why the runbook turns it.
OPERATOR_BOUNDS = [
    # The sweeper cannot see whether a lapsed job's message still waits in the queue: a deploy expecting workers to
    # be missing longer than the default hour (a GPU capacity outage) raises it, and the sweeper waits that long.
    ("AbandonedAfterSeconds", "abandoned_after_s", "RequeueFunction", 21600),
    # NotifyThrottlesAlarm's runbook lowers the per-tenant delivery bound; Notify holds the slots.
    ("WebhookDeliveriesPerTenant", "webhook_deliveries_per_tenant", "NotifyFunction", 2),
    # Each open stream holds an execution of the events function for up to 15 minutes.
    ("EventStreamsPerTenant", "event_streams_per_tenant", "EventsFunction", 3),
]


@pytest.mark.parametrize(("parameter", "setting", "function", "value"), OPERATOR_BOUNDS)
def test_an_operator_sets_a_bound_with_a_parameter_that_reaches_its_function(
    sam: dict[str, Any],
    resources: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    parameter: str,
    setting: str,
    function: str,
    value: int,
) -> None:
    param = sam["Parameters"][parameter]
    field = Settings.model_fields[setting]
    assert param["Default"] == getattr(Settings(), setting)
    assert [param["MinValue"]] == [m.ge for m in field.metadata if hasattr(m, "ge")]
    deployed = deployed_settings(function, sam, resources, monkeypatch, {parameter: str(value)})
    assert getattr(deployed, setting) == value


def test_notify_may_run_more_deliveries_at_once_than_one_tenant_may_hold(sam: dict[str, Any]) -> None:
    notify = sam["Parameters"]["NotifyReservedConcurrency"]["Default"]
    assert notify > sam["Parameters"]["WebhookDeliveriesPerTenant"]["Default"]


def test_every_failed_timed_out_or_aborted_execution_of_the_job_workflow_reaches_its_handler(
    sam: dict[str, Any],
) -> None:
    resources = sam["Resources"]
    rule = resources["FailedExecutionRule"]["Properties"]
    pattern = rule["EventPattern"]
    assert pattern["source"] == ["aws.states"]
    assert pattern["detail-type"] == ["Step Functions Execution Status Change"]
    assert set(pattern["detail"]["status"]) == {"FAILED", "TIMED_OUT", "ABORTED"}
    assert [show(arn) for arn in pattern["detail"]["stateMachineArn"]] == ["JobStateMachine"]
    # Through a queue, so that a handler that cannot fail the job yet (the table is down) is retried for hours,
    # not the three times within minutes of an asynchronous invocation; what it gives up on is alarmed.
    [target] = rule["Targets"]
    assert show(target["Arn"]) == "FailedExecutionEventsQueue.Arn"
    # An event the queue does not take at once is retried for a day, then kept in the alarmed dead-letter queue.
    assert target["RetryPolicy"]["MaximumEventAgeInSeconds"] >= 86400
    assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 100
    assert show(target["DeadLetterConfig"]["Arn"]) == "FailedExecutionEventsDeadLetterQueue.Arn"
    queue = resources["FailedExecutionEventsQueue"]["Properties"]
    function = resources["FailedExecutionFunction"]["Properties"]
    [event] = function["Events"].values()
    assert (event["Type"], show(event["Properties"]["Queue"])) == ("SQS", "FailedExecutionEventsQueue.Arn")
    assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    timeout = function.get("Timeout", sam["Globals"]["Function"]["Timeout"])
    assert queue["VisibilityTimeout"] >= 6 * timeout
    redrive = queue["RedrivePolicy"]
    assert show(redrive["deadLetterTargetArn"]) == "FailedExecutionEventsDeadLetterQueue.Arn"
    assert redrive["maxReceiveCount"] * queue["VisibilityTimeout"] >= 3600
    policy = resources["FailedExecutionEventsQueuePolicy"]["Properties"]
    assert {show(q) for q in policy["Queues"]} == {"FailedExecutionEventsQueue", "FailedExecutionEventsDeadLetterQueue"}
    [statement] = policy["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert {show(r) for r in statement["Resource"]} == {
        "FailedExecutionEventsQueue.Arn",
        "FailedExecutionEventsDeadLetterQueue.Arn",
    }
    assert show(statement["Condition"]["ArnEquals"]["aws:SourceArn"]) == "FailedExecutionRule.Arn"
    alarm = json.dumps(resources["FailedExecutionsAlarm"]["Properties"]["Metrics"])
    assert "FailedExecutionEventsDeadLetterQueue" in alarm


def test_a_queue_a_function_reads_hides_a_message_six_times_its_timeout(
    sam: dict[str, Any], resources: dict[str, Any]
) -> None:
    """Lambda's advice for an SQS event source: a taken message stays hidden at least six times the function's timeout,
    so one still being handled (or its batch retried) is not handed to a second invocation meanwhile."""
    readers = 0
    for name, function in sam["Resources"].items():
        if function["Type"] != "AWS::Serverless::Function":
            continue
        timeout = function["Properties"].get("Timeout", sam["Globals"]["Function"]["Timeout"])
        for event in function["Properties"].get("Events", {}).values():
            if event["Type"] == "SQS":
                queue = show(event["Properties"]["Queue"]).removesuffix(".Arn")
                assert resources[queue]["Properties"].get("VisibilityTimeout", 30) >= 6 * timeout, (name, queue)
                readers += 1
    assert readers >= 2  # the DLQ function and the failed-execution function


def test_warm_stop_fits_inside_the_stop_timeout(sam: dict[str, Any], resources: dict[str, Any]) -> None:
    worker = container(resources, "worker")
    grace = sam["Parameters"]["WorkerGraceSeconds"]
    assert grace["Default"] < worker["StopTimeout"]
    assert grace["MaxValue"] < worker["StopTimeout"]
    user_data = show(resources["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"])
    assert f"ECS_CONTAINER_STOP_TIMEOUT={worker['StopTimeout']}s" in user_data


def test_a_warming_instance_is_stopped_only_once_it_pulled_the_image_and_a_start_is_let_go_at_once(
    resources: dict[str, Any],
) -> None:
    """Without a launch hook the warm pool stops an instance as soon as it runs, before its user data pulled the
    worker image, and a start from the pool pulls it after all. The hook holds each launch into the pool until the
    user data completed it after the pull; a start out of the pool boots again and completes it at once."""
    from cli.costmodel import Usage

    hook = resources["WorkerLaunchHook"]
    props = hook["Properties"]
    assert hook["Condition"] == resources["WorkerWarmPool"]["Condition"] == "HasWarmPool"
    assert show(props["AutoScalingGroupName"]) == show(
        resources["WorkerWarmPool"]["Properties"]["AutoScalingGroupName"]
    )
    assert props["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_LAUNCHING"
    assert props["DefaultResult"] == "CONTINUE"  # a hook never completed delays an instance, never loses it
    usage = Usage()
    modelled_pull_s = usage.worker_image_gb * 1000 / usage.image_pull_mb_s
    assert props["HeartbeatTimeout"] >= 3 * modelled_pull_s
    # The pool launches its first instances once the hook and the instances' grant to complete it exist.
    assert {"WorkerLaunchHook", "WorkerLaunchHookPolicy"} <= set(_as_list(resources["WorkerWarmPool"]["DependsOn"]))
    # The instances learn the hook's name and their group from their tags (the group's, propagated at launch).
    template = resources["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert template["MetadataOptions"]["InstanceMetadataTags"] == {"Fn::If": ["HasWarmPool", "enabled", "disabled"]}
    tags = [
        t for t in resources["WorkerAutoScalingGroup"]["Properties"]["Tags"] if isinstance(t, dict) and "Fn::If" in t
    ]
    ((condition, tag, _),) = [t["Fn::If"] for t in tags]
    assert (condition, tag) == (
        "HasWarmPool",
        {"Key": "sdq:launch-hook", "Value": props["LifecycleHookName"], "PropagateAtLaunch": True},
    )
    user_data = show(template["UserData"]["Fn::Base64"])
    script = user_data[user_data.index("<<'SCRIPT'") : user_data.index("\nSCRIPT\n")]
    assert "tags/instance/sdq:launch-hook" in script
    assert "tags/instance/aws:autoscaling:groupName" in script
    # Pulled first, then let go; at every boot (a per-boot script), and at the first one from the user data.
    assert script.index("docker pull") < script.index("complete-lifecycle-action")
    assert "--lifecycle-action-result CONTINUE" in script
    assert "cat > /var/lib/cloud/scripts/per-boot/sdq-launch-hook.sh" in user_data
    assert "\n/var/lib/cloud/scripts/per-boot/sdq-launch-hook.sh" in user_data


def test_queue_visibility_is_the_worker_lease_and_outlasts_a_heartbeat(
    sam: dict[str, Any], resources: dict[str, Any]
) -> None:
    queue = resources["JobsQueue"]["Properties"]
    assert show(queue["VisibilityTimeout"]) == "VisibilityTimeoutSeconds"
    param = sam["Parameters"]["VisibilityTimeoutSeconds"]
    assert param["MinValue"] >= 2 * Settings().worker.heartbeat_s
    assert queue["ReceiveMessageWaitTimeSeconds"] == 20
    assert queue["SqsManagedSseEnabled"] is True
    assert resources["JobsDeadLetterQueue"]["Properties"]["SqsManagedSseEnabled"] is True
    assert show(queue["RedrivePolicy"]["maxReceiveCount"]) == "MaxReceiveCount"
    assert sam["Parameters"]["MaxReceiveCount"]["Default"] == 3


def test_an_events_stream_rereads_its_key_as_often_as_the_gateway_caches_the_authorizer(
    sam: dict[str, Any], resources: dict[str, Any]
) -> None:
    """A revoked key ends an open stream within the period a new request with it is still let through: the stream
    function's period is the template's parameter, whose default is the setting's."""
    param = sam["Parameters"]["AuthorizerCacheSeconds"]
    field = Settings.model_fields["authorizer_cache_s"]
    assert param["Default"] == Settings().authorizer_cache_s
    assert (param["MinValue"], param["MaxValue"]) == (0, 3600)
    assert [m.ge for m in field.metadata if hasattr(m, "ge")] == [0]
    assert [m.le for m in field.metadata if hasattr(m, "le")] == [3600]
    variables = resources["EventsFunction"]["Properties"]["Environment"]["Variables"]
    assert show(variables["SDQ_AUTHORIZER_CACHE_S"]) == "AuthorizerCacheSeconds"
    authorizer = sam["Resources"]["Api"]["Properties"]["Auth"]["Authorizers"]["KeyAuthorizer"]
    assert show(authorizer["Identity"]["ReauthorizeEvery"]) == "AuthorizerCacheSeconds"


def test_a_job_message_outlives_the_job_retention_and_its_dead_letter_outlives_it(
    sam: dict[str, Any], resources: dict[str, Any]
) -> None:
    """A message that expired while its job stays QUEUED would leave the job with no way to run or fail: the
    queue keeps messages at least as long as the longest retention the stack allows. SQS keeps a message's first
    enqueue time when it moves to the dead-letter queue, so that one keeps them at least as long again."""
    day = 86400
    retention = sam["Parameters"]["RetentionDays"]
    queue = resources["JobsQueue"]["Properties"]["MessageRetentionPeriod"]
    assert queue >= retention["MaxValue"] * day
    assert queue >= Settings().job_retention_days * day
    assert resources["JobsDeadLetterQueue"]["Properties"]["MessageRetentionPeriod"] >= queue


# --- data protection ----------------------------------------------------------------------------------------


def test_bucket_is_private_encrypted_tls_only_and_expires_staging_and_outputs(
    sam: dict[str, Any], resources: dict[str, Any]
) -> None:
    bucket = resources["MediaBucket"]["Properties"]
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    rules = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rules[0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    policy = resources["MediaBucketPolicy"]["Properties"]
    assert show(policy["Bucket"]) == "MediaBucket"
    deny_plain = [
        st
        for st in policy["PolicyDocument"]["Statement"]
        if st["Effect"] == "Deny" and st.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
    ]
    assert len(deny_plain) == 1
    assert deny_plain[0]["Principal"] == "*"
    assert deny_plain[0]["Action"] == "s3:*"
    assert {show(r) for r in deny_plain[0]["Resource"]} == {"MediaBucket.Arn", "MediaBucket.Arn/*"}

    lifecycle = {r["Prefix"]: r for r in bucket["LifecycleConfiguration"]["Rules"] if "Prefix" in r}
    settings = Settings()
    assert lifecycle[settings.staging_prefix]["ExpirationInDays"] == 1
    assert show(lifecycle[settings.outputs_prefix]["ExpirationInDays"]) == "RetentionDays"
    assert lifecycle[settings.uploads_prefix]["ExpirationInDays"] == 1  # unused uploads
    assert all(r["Status"] == "Enabled" for r in bucket["LifecycleConfiguration"]["Rules"])


def test_table_is_on_demand_encrypted_with_ttl_and_pitr(resources: dict[str, Any]) -> None:
    table = resources["JobsTable"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["SSESpecification"]["SSEEnabled"] is True
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert {g["IndexName"] for g in table["GlobalSecondaryIndexes"]} == {
        "by_tenant",
        "by_tenant_status",
        "active_by_tenant",
        "unqueued",
        "by_status",
    }


# --- tracing, logging, API ----------------------------------------------------------------------------------


def test_tracing_is_active_everywhere(resources: dict[str, Any]) -> None:
    functions = [r for r in resources.values() if r["Type"] == "AWS::Lambda::Function"]
    assert len(functions) == len(FUNCTIONS)
    assert all(f["Properties"]["TracingConfig"] == {"Mode": "Active"} for f in functions)
    assert resources["JobStateMachine"]["Properties"]["TracingConfiguration"] == {"Enabled": True}
    stage = next(r for r in resources.values() if r["Type"] == "AWS::ApiGateway::Stage")
    assert stage["Properties"]["TracingEnabled"] is True


def test_state_machine_logs_to_cloudwatch(resources: dict[str, Any]) -> None:
    logging_config = resources["JobStateMachine"]["Properties"]["LoggingConfiguration"]
    (destination,) = logging_config["Destinations"]
    assert show(destination["CloudWatchLogsLogGroup"]["LogGroupArn"]) == "StateMachineLogGroup.Arn"


def test_a_custom_domain_serves_the_api_with_tls_1_2_or_newer_only(cfn: dict[str, Any]) -> None:
    resources = cfn["Resources"]
    assert cfn["Conditions"]["HasApiDomain"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "ApiDomainName"}, ""]}]}
    domain = resources["ApiDomain"]
    assert domain["Condition"] == "HasApiDomain"
    assert domain["Properties"] == {
        "DomainName": {"Ref": "ApiDomainName"},
        "RegionalCertificateArn": {"Ref": "ApiCertificateArn"},
        "EndpointConfiguration": {"Types": ["REGIONAL"]},
        "SecurityPolicy": "TLS_1_2",
    }
    mapping = resources["ApiDomainMapping"]
    assert mapping["Condition"] == "HasApiDomain"
    (stage,) = (k for k, r in resources.items() if r["Type"] == "AWS::ApiGateway::Stage")
    # The whole stage at the domain's root: the same paths as the default endpoint (/v1/jobs).
    assert {k: show(v) for k, v in mapping["Properties"].items()} == {
        "DomainName": "ApiDomain",
        "RestApiId": "Api",
        "Stage": stage,
    }
    for output in ("ApiDomainUrl", "ApiDomainTarget", "ApiDomainHostedZoneId"):
        assert cfn["Outputs"][output]["Condition"] == "HasApiDomain", output
    # The default endpoint (TLS 1.0 and up) can be turned off: SAM puts the switch in the OpenAPI body's servers.
    assert cfn["Conditions"]["ApiDefaultEndpointOff"] == {"Fn::Equals": [{"Ref": "ApiDefaultEndpoint"}, "disabled"]}
    (server,) = resources["Api"]["Properties"]["Body"]["servers"]
    assert server["x-amazon-apigateway-endpoint-configuration"] == {
        "disableExecuteApiEndpoint": {"Fn::If": ["ApiDefaultEndpointOff", True, False]}
    }


def test_api_needs_keys_is_throttled_per_key_and_logs_access(resources: dict[str, Any]) -> None:
    rest_api = resources["Api"]["Properties"]
    assert rest_api["EndpointConfiguration"] == {"Types": ["REGIONAL"]}
    paths = rest_api["Body"]["paths"]
    keyed = paths["/v1/{proxy+}"]["x-amazon-apigateway-any-method"]
    assert {"api_key": []} in keyed["security"]
    for open_path in ("/health", "/openapi.json", "/docs"):
        assert {"api_key": []} not in paths[open_path]["x-amazon-apigateway-any-method"].get("security", []), open_path
    for page in ("/playground", "/playground/{file}"):
        assert {"api_key": []} not in paths[page]["get"].get("security", []), page
    # The event stream: its own function, keyed like /v1, through API Gateway's response streaming (15 minutes).
    events = paths["/v1/jobs/{job_id}/events"]["get"]
    assert {"api_key": []} in events["security"]
    integration = events["x-amazon-apigateway-integration"]
    assert integration["responseTransferMode"] == "STREAM"
    assert integration["timeoutInMillis"] == 900000
    assert "/2021-11-15/functions/" in json.dumps(integration["uri"])
    assert "/response-streaming-invocations" in json.dumps(integration["uri"])
    streaming = env_of(resources["EventsFunction"])
    assert streaming["AWS_LAMBDA_EXEC_WRAPPER"] == "/var/task/handlers/streamruntime.sh"
    assert resources["EventsFunction"]["Properties"]["Timeout"] == 900
    stage = next(r for r in resources.values() if r["Type"] == "AWS::ApiGateway::Stage")["Properties"]
    assert show(stage["AccessLogSetting"]["DestinationArn"]) == "ApiAccessLogGroup.Arn"
    assert "$context.requestId" in stage["AccessLogSetting"]["Format"]
    plan = resources["ApiUsagePlan"]["Properties"]
    assert show(plan["Throttle"]["RateLimit"]) == "ApiKeyRateLimit"
    assert show(plan["Throttle"]["BurstLimit"]) == "ApiKeyBurstLimit"
    (method,) = [m for m in stage["MethodSettings"] if m["ResourcePath"] == "/*"]  # the whole stage's
    assert show(method["ThrottlingRateLimit"]) == "ApiStageRateLimit"
    # The gateway's own refusals keep the API's error shape.
    responses = rest_api["Body"]["x-amazon-apigateway-gateway-responses"]
    throttled = responses["THROTTLED"]
    assert throttled["statusCode"] == "429"
    assert "Retry-After" in json.dumps(throttled["responseParameters"])
    assert json.loads(throttled["responseTemplates"]["application/json"])["error"]["code"] == "too_many_requests"


# --- alarms and dashboard -----------------------------------------------------------------------------------


def _alarm_metrics(alarm: dict[str, Any]) -> set[tuple[str, str]]:
    props = alarm["Properties"]
    if "MetricName" in props:
        return {(props["Namespace"], props["MetricName"])}
    return {
        (q["MetricStat"]["Metric"]["Namespace"], q["MetricStat"]["Metric"]["MetricName"])
        for q in props["Metrics"]
        if "MetricStat" in q
    }


def test_alarms_cover_dead_letters_queue_age_errors_failed_executions_and_webhooks(
    resources: dict[str, Any],
) -> None:
    alarms = {k: r for k, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    watched = {m for alarm in alarms.values() for m in _alarm_metrics(alarm)}
    for metric in [
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        ("AWS/SQS", "ApproximateAgeOfOldestMessage"),
        ("AWS/Lambda", "Errors"),
        ("AWS/States", "ExecutionsFailed"),
        ("sdq", "WebhookFailures"),
    ]:
        assert metric in watched, metric
    dlq_alarm = json.dumps(alarms["DeadLettersAlarm"])
    assert "JobsDeadLetterQueue" in dlq_alarm
    for name, alarm in alarms.items():
        if name not in ("WorkerScaleFromZeroAlarm", "SecondFleetScaleFromZeroAlarm"):  # scaling triggers
            assert [show(a) for a in alarm["Properties"]["AlarmActions"]] == ["AlarmTopic"], name


def test_webhook_metric_filter_matches_what_notify_logs(resources: dict[str, Any]) -> None:
    from aws_lambda_powertools import Logger

    from workflows.webhooks import classify, send_once

    outcomes = {classify(200), classify(503), classify(410)}
    outcomes.add(send_once("https://10.0.0.1/hook", "{}", {}, allow_loopback=False).outcome)
    assert outcomes == {"delivered", "retry", "gave_up", "blocked"}

    buffer = io.StringIO()
    Logger(service="test", logger_handler=logging.StreamHandler(buffer)).info(
        "webhook attempt", job_id="j", event="job.succeeded", outcome="gave_up", status=410
    )
    line = json.loads(buffer.getvalue())
    assert "webhook attempt" in Path(ROOT / "workflows" / "webhooks.py").read_text()

    failures = resources["WebhookFailuresMetricFilter"]["Properties"]
    assert show(failures["LogGroupName"]) == "NotifyFunctionLogGroup"
    assert show(resources["NotifyFunction"]["Properties"]["LoggingConfig"]["LogGroup"]) == "NotifyFunctionLogGroup"
    terms = re.findall(r'\$\.(\w+) = "([^"]+)"', failures["FilterPattern"])
    assert ("message", line["message"]) in terms
    assert {value for field, value in terms if field == "outcome"} == {"gave_up", "blocked"}
    assert all(field in line for field, _ in terms)


def test_deliveries_the_state_machine_gave_up_count_as_webhook_failures(resources: dict[str, Any]) -> None:
    """Notify failing past its retries logs nothing; the state machine's CountWebhookGivenUp has the postprocess
    function log the line this filter counts into the same metric WebhookFailuresAlarm reads."""
    from workflows.webhooks import WEBHOOK_GIVEN_UP

    state = json.loads((ROOT / "statemachine.asl.json").read_text())["States"]["CountWebhookGivenUp"]
    assert state["Parameters"]["FunctionName"] == "${PostprocessFunctionArn}"
    assert state["Parameters"]["Payload"]["webhook_given_up"] is True
    given_up = resources["WebhookGivenUpMetricFilter"]["Properties"]
    assert show(given_up["LogGroupName"]) == "PostprocessFunctionLogGroup"
    assert (
        show(resources["PostprocessFunction"]["Properties"]["LoggingConfig"]["LogGroup"])
        == "PostprocessFunctionLogGroup"
    )
    assert re.findall(r'\$\.(\w+) = "([^"]+)"', given_up["FilterPattern"]) == [("message", WEBHOOK_GIVEN_UP)]
    [counted] = given_up["MetricTransformations"]
    alarm = resources["WebhookFailuresAlarm"]["Properties"]
    assert (counted["MetricNamespace"], counted["MetricName"]) == (alarm["Namespace"], alarm["MetricName"])


def test_dashboard_is_valid_json_with_the_operational_widgets(resources: dict[str, Any]) -> None:
    dashboard = _dashboard(resources)
    titles = " | ".join(w["properties"]["title"] for w in dashboard["widgets"]).lower()
    for needle in ("queue depth", "images per second", "batch size", "latency", "workers"):
        assert needle in titles, needle


# Functions whose unhandled errors LambdaErrorsAlarm leaves out, each with the reason.
ERRORS_NOT_ALARMED = {
    "NotifyFunction": "raises WebhookRetryable on purpose when its table fails, for the state machine's retries",
    "AuthorizerFunction": "an error answers the call 500, which Api5xxAlarm counts",
}


def dashboard_text(resources: dict[str, Any], *, spot: bool = True, second_fleet: bool = True) -> str:
    """The dashboard's body as deployed with (or without) the Spot group and the second fleet: its own variables
    filled in, the stack's references (``${Res.Arn}``) left as they are."""
    body = resources["Dashboard"]["Properties"]["DashboardBody"]
    sub = body if isinstance(body, str) else body["Fn::Sub"]
    text, variables = (sub, {}) if isinstance(sub, str) else (sub[0], sub[1])
    conditions = {"UseSpot": spot, "HasSecondFleet": second_fleet}
    for name, value in variables.items():
        condition, with_it, without = value["Fn::If"]
        chosen = with_it if conditions[condition] else without
        text = text.replace(f"${{{name}}}", chosen["Fn::Sub"] if isinstance(chosen, dict) else chosen)
    return str(text)


def _dashboard(resources: dict[str, Any], *, spot: bool = True, second_fleet: bool = True) -> dict[str, Any]:
    text = dashboard_text(resources, spot=spot, second_fleet=second_fleet)
    return dict(json.loads(re.sub(r"\$\{([^}.]+)(\.[^}]+)?\}", r"\1", text)))


def test_every_functions_errors_page_and_show_on_the_dashboard(resources: dict[str, Any]) -> None:
    """An unhandled error of any function but the explained ones (an events stream refused by its role, say)
    pages through LambdaErrorsAlarm, and the dashboard's Lambda errors widget shows each function the alarm counts."""
    queries = resources["LambdaErrorsAlarm"]["Properties"]["Metrics"]
    counted = {
        show(q["MetricStat"]["Metric"]["Dimensions"][0]["Value"]): q["Id"]
        for q in queries
        if "MetricStat" in q and q["MetricStat"]["Metric"]["MetricName"] == "Errors"
    }
    assert set(counted) == set(FUNCTIONS) - set(ERRORS_NOT_ALARMED)
    (total,) = [q for q in queries if q.get("ReturnData")]
    assert set(re.findall(r"FILL\((\w+), 0\)", total["Expression"])) == set(counted.values())
    (widget,) = [w for w in _dashboard(resources)["widgets"] if w["properties"]["title"].startswith("Lambda errors")]
    shown = {m[3] for m in widget["properties"]["metrics"] if m[:2] == ["AWS/Lambda", "Errors"]}
    assert set(counted) <= shown


def test_the_workers_widget_shows_the_spot_groups_instances_when_there_is_one(resources: dict[str, Any]) -> None:
    """Both GPU groups collect their in-service count, and the Workers widget plots the Spot group's beside the
    on-demand one's only when the stack has a Spot group (its reference would not resolve without one)."""
    for group in ("WorkerAutoScalingGroup", "WorkerSpotAutoScalingGroup"):
        [collected] = resources[group]["Properties"]["MetricsCollection"]
        assert "GroupInServiceInstances" in collected["Metrics"], group
    assert resources["WorkerSpotAutoScalingGroup"]["Condition"] == "UseSpot"
    for spot, groups in (
        (True, ["WorkerAutoScalingGroup", "WorkerSpotAutoScalingGroup"]),
        (False, ["WorkerAutoScalingGroup"]),
    ):
        (widget,) = [w for w in _dashboard(resources, spot=spot)["widgets"] if w["properties"]["title"] == "Workers"]
        lines = [m for m in widget["properties"]["metrics"] if m[:2] == ["AWS/AutoScaling", "GroupInServiceInstances"]]
        assert [m[3] for m in lines] == groups, spot


def test_every_paging_alarm_has_its_runbook_rows_and_shows_on_the_dashboard(resources: dict[str, Any]) -> None:
    """An alarm that notifies the alarm topic is listed in docs/operations.md (what fires it, then what to do) and
    on the dashboard's Alarms widget; one that notifies no one (a scaling trigger) is neither."""
    paging = {
        name
        for name, resource in resources.items()
        if resource["Type"] == "AWS::CloudWatch::Alarm"
        and "AlarmTopic" in {show(action) for action in resource["Properties"].get("AlarmActions", [])}
    }
    assert {"OldestJobAgeAlarm", "WorkersShortAlarm", "WebhookFailuresAlarm"} <= paging
    runbook = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+Alarm)` \|", runbook, flags=re.MULTILINE)
    assert sorted(rows) == sorted([*paging, *paging]), "each paging alarm: one row in each table"
    (widget,) = [w for w in _dashboard(resources)["widgets"] if w["properties"]["title"] == "Alarms"]
    assert set(widget["properties"]["alarms"]) == paging
    # Without a second fleet its alarms do not exist, and the widget does not name them.
    no_second = _dashboard(resources, second_fleet=False)
    (widget,) = [w for w in no_second["widgets"] if w["properties"]["title"] == "Alarms"]
    fleets = {name for name in paging if resources[name].get("Condition") == "HasSecondFleet"}
    assert fleets == {"SecondFleetOldestJobAgeAlarm", "SecondFleetWorkersShortAlarm"}
    assert set(widget["properties"]["alarms"]) == paging - fleets


def test_outputs_name_the_api_and_the_data(cfn: dict[str, Any]) -> None:
    outputs = cfn["Outputs"]
    for name in ("ApiUrl", "BucketName", "TableName", "QueueUrl", "DeadLetterQueueUrl", "StateMachineArn"):
        assert name in outputs, name
    assert show(outputs["ApiUrl"]["Value"]).startswith("https://")


# --- the worker fleet scales on backlog, from and to zero ----------------------------------------------------


def test_worker_service_scales_on_backlog_per_worker_from_zero(sam: dict[str, Any], resources: dict[str, Any]) -> None:
    target = resources["WorkerScalableTarget"]["Properties"]
    assert show(target["MinCapacity"]) == "MinWorkers"
    assert sam["Parameters"]["MinWorkers"]["Default"] == 0
    assert show(target["MaxCapacity"]) == "MaxWorkers"
    assert resources["WorkerService"]["Properties"]["DesiredCount"] == 0
    tracking = resources["WorkerBacklogScaling"]["Properties"]["TargetTrackingScalingPolicyConfiguration"]
    assert show(tracking["TargetValue"]) == "BacklogPerWorker"
    (expression,) = [q for q in tracking["CustomizedMetricSpecification"]["Metrics"] if "Expression" in q]
    assert expression["Expression"] == "(queued + inflight) / running"
    alarm = resources["WorkerScaleFromZeroAlarm"]["Properties"]
    assert [show(a) for a in alarm["AlarmActions"]] == ["WorkerScaleFromZero"]
    provider = resources["GpuCapacityProvider"]["Properties"]["AutoScalingGroupProvider"]
    assert provider["ManagedScaling"]["Status"] == "ENABLED"
    assert provider["ManagedTerminationProtection"] == "ENABLED"
    assert resources["WorkerAutoScalingGroup"]["Properties"]["MinSize"] == "0"
    assert resources["WorkerAutoScalingGroup"]["Properties"]["NewInstancesProtectedFromScaleIn"] is True


# --- the local cloud's filter ----------------------------------------------------------------------------------


def test_local_filter_removes_only_the_listed_types(cfn: dict[str, Any]) -> None:
    from moto.cloudformation.parsing import resource_class_from_type

    local, dropped = filter_local_resources(cfn)
    assert dropped == {k: r["Type"] for k, r in cfn["Resources"].items() if r["Type"] in LOCAL_SKIPPED_TYPES}
    kept_types = {r["Type"] for r in local["Resources"].values()}
    assert not kept_types & set(LOCAL_SKIPPED_TYPES)
    assert set(local["Resources"]) | set(dropped) == set(cfn["Resources"])
    # What the local cloud needs is all there, and moto's CloudFormation can create every kept type.
    for needed in ("JobsQueue", "JobsDeadLetterQueue", "JobsTable", "MediaBucket", "JobStateMachine"):
        assert needed in local["Resources"], needed
    functions = {k for k, r in local["Resources"].items() if r["Type"] == "AWS::Lambda::Function"}
    assert functions == set(FUNCTIONS)
    assert "AWS::Lambda::EventSourceMapping" in kept_types
    assert all(resource_class_from_type(t) is not None for t in kept_types)
    assert all(reason.strip() for reason in LOCAL_SKIPPED_TYPES.values())


def test_local_filter_drops_outputs_and_parameters_only_aws_needs(cfn: dict[str, Any]) -> None:
    local, _ = filter_local_resources(cfn)
    assert "ApiUrl" not in local["Outputs"]
    for kept in ("TableName", "QueueUrl", "DeadLetterQueueUrl", "BucketName", "StateMachineArn"):
        assert kept in local["Outputs"], kept
    params = set(local.get("Parameters", {}))
    assert "GpuAmiId" not in params  # an SSM-typed parameter moto would try to resolve
    assert not {"ApiDomainName", "ApiCertificateArn", "ApiDefaultEndpoint"} & params  # API Gateway's alone
    assert not {"ApiDomainUrl", "ApiDomainTarget", "ApiDomainHostedZoneId"} & set(local["Outputs"])
    assert {"ModelId", "MaxReceiveCount", "VisibilityTimeoutSeconds", "RetentionDays"} <= params
    # Only the conditions a kept resource uses stay: the Notify and events functions' reserved concurrency, the
    # models the Lambdas allow, and the second fleet's queue (its workers and scaling are ECS's, left out).
    assert set(local.get("Conditions", {})) == {
        "HasNotifyReservation",
        "HasEventsReservation",
        "HasAllowedModels",
        "HasSecondFleet",
    }
    assert local["Resources"]["SecondFleetQueue"]["Condition"] == "HasSecondFleet"
    assert "FleetQueueUrls" in local["Outputs"]
    assert "SecondFleetService" not in local["Resources"]


def test_local_filter_refuses_to_drop_something_a_kept_resource_needs() -> None:
    template = {
        "Resources": {
            "Gateway": {"Type": "AWS::ApiGateway::RestApi", "Properties": {}},
            "Fn": {"Type": "AWS::Lambda::Function", "Properties": {"Description": {"Fn::Sub": "${Gateway}"}}},
        }
    }
    with pytest.raises(ProvisionError, match="Fn"):
        filter_local_resources(template)


def test_the_model_registry_reaches_each_reader_with_the_models_it_allows(resources: dict[str, Any]) -> None:
    """The API (scheduler checks), Postprocess (revisions in the images' metadata) and the worker (what it loads and
    verifies) read one registry, and every model they allow must be in it (the settings refuse otherwise)."""
    worker = {v["Name"]: v["Value"] for v in container(resources, "worker")["Environment"]}
    readers = {
        "ApiFunction": env_of(resources["ApiFunction"]),
        "PostprocessFunction": env_of(resources["PostprocessFunction"]),
    }
    for name, env in {**readers, "worker": worker}.items():
        assert show(env["SDQ_MODEL_REGISTRY"]) == "ModelRegistry", name
        assert show(env["SDQ_LORA_REGISTRY"]) == "LoraRegistry", name  # the LoRAs, checked, recorded and loaded
        condition, allowed, alone = env["SDQ_MODELS"]["Fn::If"]  # AllowedModels, else ModelId alone
        assert (condition, show(allowed), show(alone)) == ("HasAllowedModels", '["Ids"]', '["ModelId"]'), name
        assert show(env["SDQ_DEFAULT_MODEL"]) == "ModelId", name
    worker_s3 = {(a, r) for a, r in grants(resources["WorkerTaskRole"]) if a.startswith("s3:") and "models" in r}
    assert worker_s3 == {("s3:GetObject", "MediaBucket.Arn/models/*")}  # imported weights: read, never written


def test_every_function_that_sends_jobs_sends_a_second_fleet_model_to_that_fleets_queue(
    sam: dict[str, Any], resources: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's queue is its model's fleet's (the registry's ``fleet``, SDQ_FLEET_QUEUE_URLS): a function that may send
    to the second fleet's queue but lacks the registry finds no route and sends that fleet's jobs to JobsQueue, where
    no worker loads their model (the DLQ's and the requeue sweeper's requeues did)."""
    given = {
        "ModelId": "tiny",
        "AllowedModels": "tiny,xl",
        "ModelRegistry": json.dumps(TWO_FLEET_REGISTRY),
        "SecondFleet": "large",
        "JobsQueue": "https://sqs.example/jobs",
        "SecondFleetQueue": "https://sqs.example/large",
    }
    conditions = {"HasSecondFleet": True, "HasAllowedModels": True}
    senders = {fn for fn in FUNCTIONS if ("sqs:SendMessage", "SecondFleetQueue.Arn") in grants(resources[f"{fn}Role"])}
    assert {"ApiFunction", "PostprocessFunction", "DlqFunction", "RequeueFunction"} <= senders
    for fn in sorted(senders):
        settings = deployed_settings(fn, sam, resources, monkeypatch, given, conditions)
        assert settings.queue_url == given["JobsQueue"], fn
        assert settings.queue_routes == {"xl": given["SecondFleetQueue"]}, fn


def test_every_route_that_needs_no_key_has_a_throttle_of_its_own(sam: dict[str, Any]) -> None:
    """A keyless route (the authorizer off) cannot be called without bound to run up the bill; keyed routes are
    throttled per tenant by the usage plan."""
    api = next(r for r in sam["Resources"].values() if r["Type"] == "AWS::Serverless::Api")["Properties"]
    throttled = {
        (s["ResourcePath"][1:].replace("~1", "/"), s["HttpMethod"])  # "/" + the path, its slashes as ~1
        for s in api["MethodSettings"]
        if show(s.get("ThrottlingRateLimit", "")) == "OpenRouteRateLimit"
    }
    open_routes = {
        (
            str(event["Properties"]["Path"]),
            "*" if event["Properties"]["Method"] == "ANY" else event["Properties"]["Method"],
        )
        for resource in sam["Resources"].values()
        if resource["Type"] == "AWS::Serverless::Function"
        for event in resource["Properties"].get("Events", {}).values()
        if event["Type"] == "Api" and event["Properties"].get("Auth", {}).get("Authorizer") == "NONE"
    }
    assert open_routes
    assert open_routes == throttled


def test_a_second_fleet_has_its_own_queue_workers_and_scaling_from_zero(resources: dict[str, Any]) -> None:
    """SecondFleet: the default fleet's queue, workers and scaling, copied for the fleet's models. The Lambdas send
    its models' jobs to its queue (SDQ_FLEET_QUEUE_URLS), its workers drain that queue and load the registry's
    models of the fleet (SDQ_FLEET), and its own backlog scales its service from zero."""
    second = {name: r for name, r in resources.items() if name.startswith("SecondFleet")}
    assert set(second) == {
        "SecondFleetQueue",
        "SecondFleetTaskDefinition",
        "SecondFleetService",
        "SecondFleetScalableTarget",
        "SecondFleetBacklogScaling",
        "SecondFleetScaleFromZero",
        "SecondFleetScaleFromZeroAlarm",
        "SecondFleetOldestJobAgeAlarm",
        "SecondFleetWorkersShortAlarm",
    }
    assert {r["Condition"] for r in second.values()} == {"HasSecondFleet"}
    assert second["SecondFleetQueue"]["Properties"] == resources["JobsQueue"]["Properties"]
    workers = second["SecondFleetTaskDefinition"]["Properties"]["ContainerDefinitions"]
    env = {e["Name"]: show(e["Value"]) for e in next(c for c in workers if c["Name"] == "worker")["Environment"]}
    assert (env["SDQ_QUEUE_URL"], env["SDQ_FLEET"]) == ("SecondFleetQueue", "SecondFleet")
    default = {e["Name"]: e["Value"] for e in container(resources, "worker")["Environment"]}
    assert default["SDQ_FLEET"] == {"Fn::If": ["HasSecondFleet", "default", ""]}  # else SDQ_MODEL: ModelId
    assert show(second["SecondFleetService"]["Properties"]["TaskDefinition"]) == "SecondFleetTaskDefinition"
    assert "SecondFleetService.Name" in show(second["SecondFleetScalableTarget"]["Properties"]["ResourceId"])
    for name in ("SecondFleetBacklogScaling", "SecondFleetScaleFromZeroAlarm"):
        measured = json.dumps(second[name])
        assert "SecondFleetQueue" in measured, name
        assert "SecondFleetService" in measured, name
        assert "JobsQueue" not in measured, name
    # Its oldest job's age pages as the default queue's does.
    age = second["SecondFleetOldestJobAgeAlarm"]["Properties"]
    assert show(age["Dimensions"][0]["Value"]) == "SecondFleetQueue.QueueName"
    assert age["MetricName"] == resources["OldestJobAgeAlarm"]["Properties"]["MetricName"]
    # Its workers missing page as the default fleet's do, measured on its own service.
    short = json.dumps(second["SecondFleetWorkersShortAlarm"]["Properties"]["Metrics"])
    assert short == json.dumps(resources["WorkersShortAlarm"]["Properties"]["Metrics"]).replace(
        '["WorkerService", "Name"]', '["SecondFleetService", "Name"]'
    )
    routes = {"Fn::If": ["HasSecondFleet", {"Fn::Sub": '{"${SecondFleet}": "${SecondFleetQueue}"}'}, "{}"]}
    for fn in ("ApiFunction", "RequeueFunction", "DlqFunction", "PostprocessFunction"):
        assert env_of(resources[fn])["SDQ_FLEET_QUEUE_URLS"] == routes, fn
