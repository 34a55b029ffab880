"""Provision the local cloud from ``template.yaml`` (the same SAM template that deploys to AWS).

Route: cfn-lint's decoder reads the template (it understands ``!Ref``/``!GetAtt``/``!Sub``), local
``CodeUri`` values become an S3 placeholder object in a bootstrap bucket, each state machine's local
``DefinitionUri`` is inlined as ``Definition``, aws-sam-translator transforms SAM into CloudFormation,
and moto's CloudFormation creates the stack. Properties moto accepts but ignores are applied afterwards
through the service APIs (see ``_reconcile_*``).

The template also describes what only exists on AWS: the API Gateway in front of the API Lambda, the GPU
worker fleet (ECS on EC2 with its network and scaling) and the alarms. The local cloud serves the API
itself, runs the worker as a local process and has no metrics, so those resource types are left out of the
local stack by :func:`filter_local_resources`, from an explicit list (:data:`LOCAL_SKIPPED_TYPES`).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import re
import time
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient

BOOTSTRAP_BUCKET = "sdq-localcloud-bootstrap"
PLACEHOLDER_KEY = "code/placeholder.zip"
DEFAULT_STACK_NAME = "sdq"
DUMMY_CREDENTIAL = "testing"
# Outputs added to the local stack so that moto resolves the state machines' DefinitionSubstitutions
# and RoleArn intrinsics for us (the same resolution it applies to everything else in the template).
_SUBST_OUTPUT_PREFIX = "LocalCloudSubst"
_ROLE_OUTPUT_PREFIX = "LocalCloudRole"
_PLACEHOLDER = re.compile(r"\$\{(?P<name>[A-Za-z0-9_]+)\}")
_FALLBACK_ROLE_ARN = "arn:aws:iam::123456789012:role/sdq-local-state-machine"
RETRIER_FIELDS = frozenset({"IntervalSeconds", "MaxAttempts", "BackoffRate", "MaxDelaySeconds", "JitterStrategy"})

_LOCAL_API = "the REST API is served locally by localcloud/api.py"
_LOCAL_WORKER = "the GPU worker runs as a local process (sdq up / sdq worker)"
_NO_METRICS = "the local cloud has no CloudWatch metrics or alarm notifications"
LOCAL_SKIPPED_TYPES: Mapping[str, str] = {
    # API Gateway and the permissions that let it invoke the API Lambda.
    "AWS::ApiGateway::Account": _LOCAL_API,
    "AWS::ApiGateway::BasePathMapping": _LOCAL_API,
    "AWS::ApiGateway::Deployment": _LOCAL_API,
    "AWS::ApiGateway::DomainName": _LOCAL_API,
    "AWS::ApiGateway::RestApi": _LOCAL_API,
    "AWS::ApiGateway::Stage": _LOCAL_API,
    "AWS::ApiGateway::UsagePlan": _LOCAL_API,
    "AWS::Lambda::Permission": _LOCAL_API,
    # Lambda's retries of a failed asynchronous invocation: the local schedules invoke synchronously, once.
    "AWS::Lambda::EventInvokeConfig": "local scheduled runs are synchronous invocations, never retried",
    # The GPU worker fleet: cluster, capacity, network and scaling.
    "AWS::ApplicationAutoScaling::ScalableTarget": _LOCAL_WORKER,
    "AWS::ApplicationAutoScaling::ScalingPolicy": _LOCAL_WORKER,
    "AWS::AutoScaling::AutoScalingGroup": _LOCAL_WORKER,
    "AWS::AutoScaling::LifecycleHook": _LOCAL_WORKER,
    "AWS::AutoScaling::WarmPool": _LOCAL_WORKER,
    "AWS::EC2::InternetGateway": _LOCAL_WORKER,
    "AWS::EC2::LaunchTemplate": _LOCAL_WORKER,
    "AWS::EC2::Route": _LOCAL_WORKER,
    "AWS::EC2::RouteTable": _LOCAL_WORKER,
    "AWS::EC2::SecurityGroup": _LOCAL_WORKER,
    "AWS::EC2::Subnet": _LOCAL_WORKER,
    "AWS::EC2::SubnetRouteTableAssociation": _LOCAL_WORKER,
    "AWS::EC2::VPC": _LOCAL_WORKER,
    "AWS::EC2::VPCEndpoint": _LOCAL_WORKER,
    "AWS::EC2::VPCGatewayAttachment": _LOCAL_WORKER,
    "AWS::ECS::CapacityProvider": _LOCAL_WORKER,
    "AWS::ECS::Cluster": _LOCAL_WORKER,
    "AWS::ECS::ClusterCapacityProviderAssociations": _LOCAL_WORKER,
    "AWS::ECS::Service": _LOCAL_WORKER,
    "AWS::ECS::TaskDefinition": _LOCAL_WORKER,
    # A policy attached apart from its role: the GPU instances' grant on their Auto Scaling group, left out above.
    "AWS::IAM::Policy": _LOCAL_WORKER,
    # Monitoring.
    "AWS::CloudWatch::Alarm": _NO_METRICS,
    "AWS::CloudWatch::Dashboard": _NO_METRICS,
    "AWS::Logs::MetricFilter": _NO_METRICS,
    "AWS::SNS::Subscription": _NO_METRICS,
    "AWS::SNS::Topic": _NO_METRICS,
    # A queue's resource policy (EventBridge may send to the failed-execution events queue): the local cloud
    # enforces no resource policies, and its execution status poller sends to the queue itself.
    "AWS::SQS::QueuePolicy": "the local cloud enforces no resource policies (moto cannot create this type)",
    # The deny-non-TLS bucket policy: the local cloud speaks plain HTTP on loopback.
    "AWS::S3::BucketPolicy": "the local cloud is plain HTTP on 127.0.0.1, which a deny-non-TLS policy refuses",
}
"""Resource types the local stack leaves out, each with the reason. Everything else in the template is
created locally (tables, queues, bucket, functions, event source mappings, roles, log groups, the state
machine, the worker's image repository); moto's CloudFormation fails the whole stack on a type it cannot
create, so anything new in the template is either created by moto or listed here."""


class ProvisionError(RuntimeError):
    """The template could not be turned into a running local stack."""


@dataclass(frozen=True)
class EventSource:
    """An SQS event source mapping declared in the template (disabled in moto; see ``provision``)."""

    uuid: str
    queue_arn: str
    function_name: str
    batch_size: int


@dataclass(frozen=True)
class Schedule:
    """A scheduled EventBridge rule that invokes a function (moto stores it but never fires it; see
    ``eventsources.SchedulePoller``)."""

    rule_arn: str
    function_name: str
    interval_s: float


_RATE = re.compile(r"^rate\((?P<n>\d+) (?P<unit>minute|minutes|hour|hours|day|days)\)$")
_RATE_UNIT_S = {"minute": 60, "hour": 3600, "day": 86400}


def rate_interval_s(expression: str) -> float:
    """Seconds between runs of a ``rate(...)`` schedule; ProvisionError for anything else (cron)."""
    match = _RATE.match(expression.strip())
    if match is None:
        raise ProvisionError(f"the local cloud runs rate(...) schedules only, not {expression!r}")
    return int(match["n"]) * _RATE_UNIT_S[match["unit"].rstrip("s")]


@dataclass(frozen=True)
class ExecutionStatusRule:
    """An EventBridge rule on Step Functions execution status changes, with its target, an SQS queue (moto's
    executions emit no events; see ``eventsources.ExecutionStatusPoller``)."""

    rule_arn: str
    queue_arn: str
    state_machine_arns: tuple[str, ...]
    statuses: tuple[str, ...]


EXECUTION_STATUS_CHANGE = "Step Functions Execution Status Change"


@dataclass(frozen=True)
class LocalResources:
    """Physical names of the provisioned local stack."""

    endpoint_url: str
    region: str
    stack_name: str
    table_name: str
    queue_url: str
    dlq_url: str
    bucket: str
    state_machine_arn: str
    audit_table_name: str
    webhook_secrets_key: str
    fleet_queue_urls: str = "{}"  # the template's FleetQueueUrls: each fleet with a queue of its own (JSON)
    functions: dict[str, str] = field(default_factory=dict)
    """Logical id (e.g. ``PostprocessFunction``) -> deployed function name."""
    event_sources: tuple[EventSource, ...] = ()
    schedules: tuple[Schedule, ...] = ()
    execution_rules: tuple[ExecutionStatusRule, ...] = ()

    def as_env(self) -> dict[str, str]:
        """Environment for processes (API, worker, handlers) that talk to this local cloud."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIAL,
            "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIAL,
            "SDQ_TABLE_NAME": self.table_name,
            "SDQ_QUEUE_URL": self.queue_url,
            "SDQ_DLQ_URL": self.dlq_url,
            "SDQ_BUCKET": self.bucket,
            "SDQ_STATE_MACHINE_ARN": self.state_machine_arn,
            "SDQ_AUDIT_TABLE_NAME": self.audit_table_name,
            "SDQ_WEBHOOK_SECRETS_KEY": self.webhook_secrets_key,
            "SDQ_FLEET_QUEUE_URLS": self.fleet_queue_urls,
        }


@dataclass(frozen=True)
class ProvisionedStack:
    """Everything ``provision`` learned: the resources plus where each function's code lives."""

    resources: LocalResources
    code_roots: dict[str, Path]
    """Deployed function name -> directory its ``CodeUri`` pointed at."""


def load_sam_template(template_path: Path) -> dict[str, Any]:
    """Decode the SAM template with cfn-lint's decoder into plain dicts and lists."""
    from cfnlint.decode import decode

    template, matches = decode(str(template_path))
    if template is None or matches:
        raise ProvisionError(f"cannot decode {template_path}: {[str(m) for m in matches or []]}")
    plain: dict[str, Any] = json.loads(json.dumps(template))
    return plain


def localize_template(
    template: dict[str, Any], template_dir: Path, asl_path: Path | None
) -> tuple[dict[str, Any], dict[str, Path], dict[str, str]]:
    """Point local artifacts at the S3 placeholder and inline each state machine's definition.

    Returns the new template, logical function id -> code directory, and logical state machine id ->
    the raw ASL text (the text CloudFormation would substitute into on AWS).
    """
    tpl = copy.deepcopy(template)
    placeholder = {"Bucket": BOOTSTRAP_BUCKET, "Key": PLACEHOLDER_KEY}
    global_fn = tpl.get("Globals", {}).get("Function", {})
    default_code = global_fn.get("CodeUri")
    if isinstance(default_code, str) and not default_code.startswith("s3://"):
        global_fn["CodeUri"] = placeholder
    code_roots: dict[str, Path] = {}
    asl_texts: dict[str, str] = {}
    machines = [k for k, r in tpl["Resources"].items() if r.get("Type") == "AWS::Serverless::StateMachine"]
    for logical_id, resource in tpl["Resources"].items():
        props = resource.setdefault("Properties", {})
        if resource.get("Type") == "AWS::Serverless::Function":
            code = props.get("CodeUri", default_code)
            if isinstance(code, str) and not code.startswith("s3://"):
                code_roots[logical_id] = (template_dir / code).resolve()
                if "CodeUri" in props:
                    props["CodeUri"] = placeholder
        elif resource.get("Type") == "AWS::Serverless::StateMachine" and isinstance(props.get("DefinitionUri"), str):
            uri = props.pop("DefinitionUri")
            path = asl_path if asl_path is not None and len(machines) == 1 else template_dir / uri
            text = path.read_text()
            asl_texts[logical_id] = text
            props["Definition"] = json.loads(text)
    return tpl, code_roots, asl_texts


def add_resolution_outputs(template: dict[str, Any]) -> dict[str, Any]:
    """Add stack Outputs for each state machine's substitutions and role, so moto resolves them."""
    tpl = copy.deepcopy(template)
    outputs = tpl.setdefault("Outputs", {})
    for logical_id, resource in tpl["Resources"].items():
        if resource.get("Type") != "AWS::StepFunctions::StateMachine":
            continue
        props = resource.get("Properties", {})
        for key, value in props.get("DefinitionSubstitutions", {}).items():
            outputs[f"{_SUBST_OUTPUT_PREFIX}{logical_id}{key}"] = {"Value": value}
        if "RoleArn" in props:
            outputs[f"{_ROLE_OUTPUT_PREFIX}{logical_id}"] = {"Value": props["RoleArn"]}
    return tpl


@contextmanager
def _quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    log = logging.getLogger(name)
    saved = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(saved)


def translate_sam(template: dict[str, Any], region: str, parameters: Mapping[str, str]) -> dict[str, Any]:
    """Transform SAM into plain CloudFormation with aws-sam-translator (no managed-policy lookups)."""
    from samtranslator.metrics.metrics import DummyMetricsPublisher, Metrics
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    metrics = Metrics("ServerlessTransform", DummyMetricsPublisher())
    session = boto3.session.Session(region_name=region)
    translator = Translator(None, Parser(), boto_session=session, metrics=metrics)
    # Without a feature-toggle config the translator warns once per API about each toggle it looks up.
    with _quiet_logger("samtranslator.feature_toggle.feature_toggle"):
        try:
            result: dict[str, Any] = translator.translate(
                copy.deepcopy(template), dict(parameters), get_managed_policy_map=dict
            )
        finally:
            metrics.publish()
    return result


def _references(node: Any) -> set[str]:
    """Logical names a template fragment refers to: ``Ref``, ``Fn::GetAtt``, ``Fn::Sub`` and ``Condition``."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value.split(".", 1)[0])
            elif key == "Fn::GetAtt":
                target = value[0] if isinstance(value, list) and value else value
                if isinstance(target, str):
                    found.add(target.split(".", 1)[0])
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) and value else value
                if isinstance(text, str):
                    found |= {m.split(".", 1)[0] for m in re.findall(r"\$\{([^!}][^}]*)\}", text)}
                if isinstance(value, list) and len(value) > 1:
                    found |= _references(value[1])
            elif key in ("Condition", "Fn::If") and not isinstance(value, dict):
                name = value[0] if isinstance(value, list) and value else value
                if isinstance(name, str):
                    found.add(name)
                if isinstance(value, list):
                    found |= _references(value[1:])
            else:
                found |= _references(value)
    elif isinstance(node, list):
        for value in node:
            found |= _references(value)
    return found


def filter_local_resources(template: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Drop the resource types in :data:`LOCAL_SKIPPED_TYPES` from a CloudFormation template.

    Also dropped: outputs that name a dropped resource, then conditions and parameters nothing left uses
    (a parameter such as the GPU AMI's SSM path would otherwise be resolved by moto). Returns the new
    template and ``{logical id: type}`` of the dropped resources. Raises ProvisionError when a resource that
    stays refers to one that goes: the filter never removes anything silently by dependency.
    """
    tpl = copy.deepcopy(dict(template))
    resources: dict[str, Any] = tpl["Resources"]
    dropped = {k: r["Type"] for k, r in resources.items() if r.get("Type") in LOCAL_SKIPPED_TYPES}
    for logical_id in dropped:
        del resources[logical_id]
    dangling = {
        logical_id: sorted(refs)
        for logical_id, resource in resources.items()
        if (refs := (_references(resource) | set(_depends_on(resource))) & set(dropped))
    }
    if dangling:
        raise ProvisionError(f"resources kept locally refer to resources the local cloud leaves out: {dangling}")
    outputs = tpl.get("Outputs", {})
    for name in [n for n, o in outputs.items() if _references(o) & set(dropped)]:
        del outputs[name]
    _prune_unused(tpl, "Conditions")
    _prune_unused(tpl, "Parameters")
    return tpl, dropped


# The name property of each resource type that the local stack names itself (see name_local_resources).
# Type -> (name property, the longest name AWS accepts).
_NAME_PROPERTIES: Mapping[str, tuple[str, int]] = {
    "AWS::DynamoDB::Table": ("TableName", 255),
    "AWS::SQS::Queue": ("QueueName", 80),
    "AWS::S3::Bucket": ("BucketName", 63),
    "AWS::StepFunctions::StateMachine": ("StateMachineName", 80),
    "AWS::Lambda::Function": ("FunctionName", 64),
}


def name_local_resources(template: Mapping[str, Any], stack_name: str) -> dict[str, Any]:
    """Give every table, queue, bucket, state machine and function without a name ``{stack}-{logical id}``.

    On AWS CloudFormation picks random suffixes; locally, stable names let a worker that outlives a restart
    of the local cloud (``sdq up`` stopped and started again on the same ``--cloud-port``) find the new stack
    at the same queue URL, table and state machine ARN. Names the template sets are kept, and a name that
    would be too long is left to CloudFormation.
    """
    tpl = copy.deepcopy(dict(template))
    for logical_id, resource in tpl.get("Resources", {}).items():
        if (named := _NAME_PROPERTIES.get(resource.get("Type", ""))) is None:
            continue
        prop, longest = named
        props = resource.setdefault("Properties", {})
        name = f"{stack_name}-{logical_id}"
        if prop not in props and len(name) <= longest:
            props[prop] = name.lower() if prop == "BucketName" else name
    return tpl


def _depends_on(resource: Mapping[str, Any]) -> list[str]:
    value = resource.get("DependsOn", [])
    return [value] if isinstance(value, str) else list(value)


def _prune_unused(tpl: dict[str, Any], section: str) -> None:
    """Remove entries of ``section`` that nothing else in the template refers to (to a fixed point)."""
    while True:
        entries = tpl.get(section, {})
        used = _references({k: v for k, v in tpl.items() if k != section})
        used |= {ref for name, body in entries.items() for ref in _references(body) if ref != name}
        unused = [name for name in entries if name not in used]
        if not unused:
            break
        for name in unused:
            del entries[name]
    if section in tpl and not tpl[section]:
        del tpl[section]


def render_definition(
    asl_text: str, substitutions: Mapping[str, str], retry_override: Mapping[str, Any] | None = None
) -> str:
    """Replace ``${Name}`` placeholders as CloudFormation does, then apply a local retry override.

    CloudFormation's DefinitionSubstitutions are plain text replacement; an unknown placeholder is an
    error there too. ``retry_override`` sets retrier fields (e.g. ``IntervalSeconds``) on every Retry
    entry, for compressed local schedules.
    """
    missing = sorted({m["name"] for m in _PLACEHOLDER.finditer(asl_text)} - set(substitutions))
    if missing:
        raise ProvisionError(f"definition placeholders without a substitution: {missing}")
    text = _PLACEHOLDER.sub(lambda m: str(substitutions[m["name"]]), asl_text)
    definition = json.loads(text)
    if retry_override:
        _override_retriers(definition, retry_override)
    return json.dumps(definition, indent=2)


def _override_retriers(node: Any, override: Mapping[str, Any]) -> None:
    if isinstance(node, dict):
        for retrier in node.get("Retry", []) if isinstance(node.get("Retry"), list) else []:
            retrier.update(override)
        for value in node.values():
            _override_retriers(value, override)
    elif isinstance(node, list):
        for value in node:
            _override_retriers(value, override)


def _check_overrides(resources: Mapping[str, Any], substitutions: Mapping[str, str], retry: Mapping[str, Any]) -> None:
    """Fail before creating anything when an override names nothing the template declares."""
    declared = {
        key
        for resource in resources.values()
        if resource.get("Type") == "AWS::StepFunctions::StateMachine"
        for key in resource.get("Properties", {}).get("DefinitionSubstitutions", {})
    }
    unknown = sorted(set(substitutions) - declared)
    if unknown:
        raise ProvisionError(
            f"substitutions_override keys {unknown} are not DefinitionSubstitutions of any state machine "
            f"(declared: {sorted(declared)}); retry schedules are set with retry_override"
        )
    bad_fields = sorted(set(retry) - RETRIER_FIELDS)
    if bad_fields:
        raise ProvisionError(f"retry_override fields {bad_fields} are not retrier fields {sorted(RETRIER_FIELDS)}")


def _clients(endpoint_url: str, region: str) -> dict[str, Any]:
    session = boto3.session.Session(
        aws_access_key_id=DUMMY_CREDENTIAL, aws_secret_access_key=DUMMY_CREDENTIAL, region_name=region
    )
    config = Config(retries={"max_attempts": 2, "mode": "standard"})
    names = ("s3", "cloudformation", "dynamodb", "stepfunctions", "lambda", "events")
    return {n: session.client(n, endpoint_url=endpoint_url, config=config) for n in names}  # type: ignore[call-overload]


def _upload_placeholder(s3: Any) -> None:
    try:
        s3.create_bucket(Bucket=BOOTSTRAP_BUCKET)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("README.txt", "Local cloud placeholder: handlers run in-process from the source tree.\n")
    s3.put_object(Bucket=BOOTSTRAP_BUCKET, Key=PLACEHOLDER_KEY, Body=buf.getvalue())


def _wait_for_stack(cfn: CloudFormationClient, stack_name: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
        status = stack["StackStatus"]
        if not status.endswith("_IN_PROGRESS"):
            if status != "CREATE_COMPLETE":
                events = cfn.describe_stack_events(StackName=stack_name)["StackEvents"]
                failed = [
                    f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}"
                    for e in events
                    if "FAILED" in e["ResourceStatus"]
                ]
                raise ProvisionError(f"stack {stack_name} ended {status}: {failed}")
            return dict(stack)
        if time.monotonic() > deadline:
            raise ProvisionError(f"stack {stack_name} still {status} after {timeout_s}s")
        time.sleep(0.05)


def _reconcile_table(ddb: Any, table_name: str, props: Mapping[str, Any]) -> None:
    """Apply table properties moto's CloudFormation ignores: TTL and point-in-time recovery."""
    ttl = props.get("TimeToLiveSpecification")
    if ttl and str(ttl.get("Enabled")).lower() == "true":
        current = ddb.describe_time_to_live(TableName=table_name)["TimeToLiveDescription"]
        if current.get("TimeToLiveStatus") != "ENABLED":
            ddb.update_time_to_live(
                TableName=table_name,
                TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
            )
    pitr = props.get("PointInTimeRecoverySpecification")
    if pitr and str(pitr.get("PointInTimeRecoveryEnabled")).lower() == "true":
        ddb.update_continuous_backups(
            TableName=table_name,
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
        )


def _reconcile_bucket(s3: Any, bucket: str, props: Mapping[str, Any]) -> None:
    """Apply bucket properties moto's CloudFormation ignores: the public access block."""
    block = props.get("PublicAccessBlockConfiguration")
    if block:
        s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={k: str(v).lower() == "true" for k, v in block.items()},
        )


def _install_state_machine(sfn: Any, arn: str, definition: str, role_arn: str, sm_type: str) -> None:
    """Put the resolved definition where StartExecution looks for it.

    With ``execute_state_machine`` on, moto serves the Step Functions API from a separate backend
    (the ASL interpreter's) that CloudFormation does not write to; the machine is then created there
    under the same name, hence the same ARN. Otherwise the CloudFormation copy is updated in place.
    """
    try:
        sfn.describe_state_machine(stateMachineArn=arn)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("StateMachineDoesNotExist", "ResourceNotFound"):
            raise
        name = arn.rsplit(":", 1)[1]
        sfn.create_state_machine(name=name, definition=definition, roleArn=role_arn, type=sm_type)
    else:
        sfn.update_state_machine(stateMachineArn=arn, definition=definition)


def _disable_event_sources(
    lam: Any, physical: Mapping[str, str], cfn_resources: Mapping[str, Any]
) -> tuple[EventSource, ...]:
    """Disable SQS event source mappings: moto would invoke them through its Docker runtime."""
    sources = []
    for logical_id, resource in cfn_resources.items():
        if resource.get("Type") != "AWS::Lambda::EventSourceMapping" or logical_id not in physical:
            continue
        mapping = lam.get_event_source_mapping(UUID=physical[logical_id])
        if mapping.get("State") != "Disabled":
            lam.update_event_source_mapping(UUID=mapping["UUID"], Enabled=False)
        sources.append(
            EventSource(
                uuid=mapping["UUID"],
                queue_arn=mapping["EventSourceArn"],
                function_name=mapping["FunctionArn"].rsplit(":", 1)[1],
                batch_size=int(mapping.get("BatchSize", 10)),
            )
        )
    return tuple(sources)


def _event_rules(events: Any) -> tuple[tuple[Schedule, ...], tuple[ExecutionStatusRule, ...]]:
    """The stack's EventBridge rules the local cloud runs itself: ``rate(...)`` schedules that invoke functions,
    and ``aws.states`` execution status changes delivered to SQS queues. Any other rule is refused, since the
    local cloud would never deliver it."""
    schedules: list[Schedule] = []
    execution_rules: list[ExecutionStatusRule] = []
    for page in events.get_paginator("list_rules").paginate():
        for rule in page["Rules"]:
            targets = [t["Arn"] for t in events.list_targets_by_rule(Rule=rule["Name"])["Targets"]]
            if rule.get("ScheduleExpression"):
                interval = rate_interval_s(rule["ScheduleExpression"])
                schedules.extend(
                    Schedule(rule["Arn"], arn.split(":function:", 1)[1].split(":", 1)[0], interval)
                    for arn in targets
                    if ":function:" in arn
                )
                continue
            pattern = json.loads(rule.get("EventPattern") or "{}")
            if pattern.get("source") != ["aws.states"] or pattern.get("detail-type") != [EXECUTION_STATUS_CHANGE]:
                raise ProvisionError(f"the local cloud delivers no events for the pattern of rule {rule['Name']}")
            if any(":sqs:" not in arn for arn in targets):
                raise ProvisionError(f"the local cloud delivers rule {rule['Name']} to SQS queues only")
            detail = pattern.get("detail", {})
            execution_rules.extend(
                ExecutionStatusRule(
                    rule_arn=rule["Arn"],
                    queue_arn=arn,
                    state_machine_arns=tuple(detail.get("stateMachineArn", [])),
                    statuses=tuple(detail.get("status", ["FAILED", "TIMED_OUT", "ABORTED", "SUCCEEDED"])),
                )
                for arn in targets
            )
    return tuple(schedules), tuple(execution_rules)


def provision(
    endpoint_url: str,
    region: str,
    template_path: Path,
    asl_path: Path | None = None,
    *,
    stack_name: str = DEFAULT_STACK_NAME,
    parameters: Mapping[str, str] | None = None,
    substitutions_override: Mapping[str, str] | None = None,
    retry_override: Mapping[str, Any] | None = None,
    timeout_s: float = 60.0,
) -> ProvisionedStack:
    """Create the template's stack on the local cloud at ``endpoint_url`` and return its resources."""
    clients = _clients(endpoint_url, region)
    params = {k: str(v) for k, v in (parameters or {}).items()}
    sam = load_sam_template(template_path)
    unknown_params = sorted(set(params) - set(sam.get("Parameters", {})))
    if unknown_params:
        raise ProvisionError(f"parameters {unknown_params} are not declared in {template_path.name}")
    local, code_dirs, asl_texts = localize_template(sam, template_path.parent, asl_path)
    cfn_template, _ = filter_local_resources(translate_sam(local, region, params))
    cfn_template = name_local_resources(cfn_template, stack_name)
    cfn_template = add_resolution_outputs(cfn_template)
    # Values for parameters only the left-out resources used have no place in the local stack.
    params = {k: v for k, v in params.items() if k in cfn_template.get("Parameters", {})}
    resources = cfn_template["Resources"]
    _check_overrides(resources, substitutions_override or {}, retry_override or {})
    _upload_placeholder(clients["s3"])

    cfn = clients["cloudformation"]
    cfn.create_stack(
        StackName=stack_name,
        TemplateBody=json.dumps(cfn_template),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    stack = _wait_for_stack(cfn, stack_name, timeout_s)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    summaries = cfn.get_paginator("list_stack_resources").paginate(StackName=stack_name)
    physical = {
        r["LogicalResourceId"]: r["PhysicalResourceId"] for page in summaries for r in page["StackResourceSummaries"]
    }

    for logical_id, resource in resources.items():
        rtype, props = resource.get("Type"), resource.get("Properties", {})
        if rtype == "AWS::DynamoDB::Table":
            _reconcile_table(clients["dynamodb"], physical[logical_id], props)
        elif rtype == "AWS::S3::Bucket":
            _reconcile_bucket(clients["s3"], physical[logical_id], props)
        elif rtype == "AWS::StepFunctions::StateMachine":
            declared = props.get("DefinitionSubstitutions", {})
            values = {k: outputs[f"{_SUBST_OUTPUT_PREFIX}{logical_id}{k}"] for k in declared}
            values.update({k: v for k, v in (substitutions_override or {}).items() if k in declared})
            text = asl_texts.get(logical_id, props.get("DefinitionString"))
            if not isinstance(text, str):
                raise ProvisionError(f"{logical_id}: only DefinitionUri or a literal DefinitionString is supported")
            definition = render_definition(text, values, retry_override)
            role_arn = outputs.get(f"{_ROLE_OUTPUT_PREFIX}{logical_id}", _FALLBACK_ROLE_ARN)
            _install_state_machine(
                clients["stepfunctions"],
                physical[logical_id],
                definition,
                role_arn,
                props.get("StateMachineType", "STANDARD"),
            )

    functions = {
        logical_id: physical[logical_id]
        for logical_id, resource in resources.items()
        if resource.get("Type") == "AWS::Lambda::Function"
    }
    event_sources = _disable_event_sources(clients["lambda"], physical, resources)
    schedules, execution_rules = _event_rules(clients["events"])
    try:
        res = LocalResources(
            endpoint_url=endpoint_url,
            region=region,
            stack_name=stack_name,
            table_name=outputs["TableName"],
            queue_url=outputs["QueueUrl"],
            dlq_url=outputs["DeadLetterQueueUrl"],
            bucket=outputs["BucketName"],
            state_machine_arn=outputs["StateMachineArn"],
            audit_table_name=outputs["AuditTableName"],
            webhook_secrets_key=outputs["WebhookSecretsKeyId"],
            fleet_queue_urls=outputs["FleetQueueUrls"],
            functions=functions,
            event_sources=event_sources,
            schedules=schedules,
            execution_rules=execution_rules,
        )
    except KeyError as exc:
        raise ProvisionError(f"template is missing the stack output {exc}") from exc
    code_roots = {functions[k]: v for k, v in code_dirs.items() if k in functions}
    return ProvisionedStack(resources=res, code_roots=code_roots)
