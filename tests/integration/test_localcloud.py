"""The embedded local cloud: resources come from template.yaml, Lambda runs in-process, ASL runs for real.

Real boto3 calls against a started moto server; no mocks. The state machine's Postprocess task is
pointed (through ``substitutions_override``) at a stub function defined in this module, so these
tests exercise the local cloud itself, not the project's handlers.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
import uuid
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from localcloud import LocalCloud, LocalResources, ProvisionError
from localcloud.provision import load_sam_template, provision
from shared.errors import RetryableError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
ASL = ROOT / "statemachine.asl.json"
MODULE = __name__
STUB_POSTPROCESS = "sdq-test-postprocess"
ACCOUNT = "123456789012"


# --- stub handlers, imported by the in-process Lambda runtime by their Handler string -------------


class PostprocessBoom(Exception):
    """Raised by the failing stub, to check that the class name becomes the Lambda errorType."""


def failing_handler(event: dict[str, Any], context: Any) -> None:
    raise PostprocessBoom(f"cannot postprocess {event.get('job_id')}")


def echo_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {
        "event": event,
        "function_name": context.function_name,
        "request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "table_env": os.environ.get("SDQ_TABLE_NAME"),
        "endpoint_env": os.environ.get("AWS_ENDPOINT_URL"),
    }


FLAKY_CALLS: dict[str, int] = {}


def postprocess_stub(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("staging_keys") == ["explode"]:
        raise PostprocessBoom("stub asked to fail")
    if event.get("staging_keys") == ["flaky"]:
        # A transient failure (throttled S3, say) twice, then success.
        FLAKY_CALLS[event["job_id"]] = FLAKY_CALLS.get(event["job_id"], 0) + 1
        if FLAKY_CALLS[event["job_id"]] <= 2:
            raise RetryableError("transient: try again")
    outputs = [{"key": f"outputs/{event['job_id']}/0.png"}]
    return {
        "status": "done",
        "skipped": False,
        "outputs": outputs,
        "outputs_json": json.dumps(outputs),
        "failure": None,
    }


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cloud() -> Iterator[tuple[LocalCloud, LocalResources]]:
    saved_env = dict(os.environ)
    local = LocalCloud(host="127.0.0.1", port=0).start()
    try:
        resources = local.provision(
            template_path=TEMPLATE,
            asl_path=ASL,
            substitutions_override={
                "PostprocessFunctionArn": f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:{STUB_POSTPROCESS}"
            },
            retry_override={"IntervalSeconds": 1, "BackoffRate": 1.0},
        )
        _create_function(resources, STUB_POSTPROCESS, f"{MODULE}.postprocess_stub")
        yield local, resources
    finally:
        local.stop()
        assert not local.running
        assert os.environ.get("MOTO_PORT") == saved_env.get("MOTO_PORT")
        # Variables applied for in-process invocations are put back when the cloud stops.
        ignored = {"PYTEST_CURRENT_TEST"}
        assert {k: v for k, v in os.environ.items() if k not in ignored} == {
            k: v for k, v in saved_env.items() if k not in ignored
        }


@pytest.fixture(scope="module")
def res(cloud: tuple[LocalCloud, LocalResources]) -> LocalResources:
    return cloud[1]


def _client(res: LocalResources, service: str) -> Any:
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=res.endpoint_url,
        region_name=res.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _create_function(res: LocalResources, name: str, handler: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("placeholder.txt", "in-process")
    lam = _client(res, "lambda")
    # moto checks that the role exists: borrow the one the stack made for a template function.
    role = lam.get_function(FunctionName=res.functions["PostprocessFunction"])["Configuration"]["Role"]
    lam.create_function(
        FunctionName=name,
        Runtime="python3.12",
        Role=role,
        Handler=handler,
        Code={"ZipFile": buf.getvalue()},
        Environment={"Variables": {"SDQ_TABLE_NAME": res.table_name}},
        Timeout=30,
    )


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_sam_template(TEMPLATE)


def _param_default(template: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict) and "Ref" in value:
        return template["Parameters"][value["Ref"]]["Default"]
    return value


def _put_job(res: LocalResources, status: str) -> str:
    job_id = str(uuid.uuid4())
    item = {
        "pk": {"S": f"JOB#{job_id}"},
        "job_id": {"S": job_id},
        "tenant": {"S": "t-1"},
        "status": {"S": status},
        "tenant_status": {"S": f"t-1#{status}"},
        "attempt": {"N": "1"},
    }
    if status not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        item["active_tenant"] = {"S": "t-1"}
    _client(res, "dynamodb").put_item(TableName=res.table_name, Item=item)
    return job_id


def _get_job(res: LocalResources, job_id: str) -> dict[str, Any]:
    item = _client(res, "dynamodb").get_item(TableName=res.table_name, Key={"pk": {"S": f"JOB#{job_id}"}})
    return {k: next(iter(v.values())) for k, v in item["Item"].items()}


def _run_execution(res: LocalResources, payload: dict[str, Any], timeout_s: float = 30) -> dict[str, Any]:
    sfn = _client(res, "stepfunctions")
    arn = sfn.start_execution(stateMachineArn=res.state_machine_arn, name=payload["job_id"], input=json.dumps(payload))[
        "executionArn"
    ]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        described: dict[str, Any] = sfn.describe_execution(executionArn=arn)
        if described["status"] != "RUNNING":
            return described
        time.sleep(0.05)
    raise AssertionError(f"execution {arn} still RUNNING after {timeout_s}s")


# --- resources match template.yaml -------------------------------------------------------------------


def test_queue_and_dead_letter_queue_match_template(res: LocalResources, template: dict[str, Any]) -> None:
    sqs = _client(res, "sqs")
    props = template["Resources"]["JobsQueue"]["Properties"]
    attrs = sqs.get_queue_attributes(QueueUrl=res.queue_url, AttributeNames=["All"])["Attributes"]
    dlq_attrs = sqs.get_queue_attributes(QueueUrl=res.dlq_url, AttributeNames=["All"])["Attributes"]

    assert int(attrs["VisibilityTimeout"]) == int(_param_default(template, props["VisibilityTimeout"]))
    assert int(attrs["ReceiveMessageWaitTimeSeconds"]) == int(props["ReceiveMessageWaitTimeSeconds"]) == 20
    assert attrs["SqsManagedSseEnabled"] == "true"
    redrive = json.loads(attrs["RedrivePolicy"])
    expected_max = _param_default(template, props["RedrivePolicy"]["maxReceiveCount"])
    assert int(redrive["maxReceiveCount"]) == int(expected_max) == 3
    assert redrive["deadLetterTargetArn"] == dlq_attrs["QueueArn"]
    dlq_props = template["Resources"]["JobsDeadLetterQueue"]["Properties"]
    assert int(dlq_attrs["MessageRetentionPeriod"]) == int(dlq_props["MessageRetentionPeriod"]) == 14 * 86400
    # No second fleet by default: every job goes to this queue.
    assert json.loads(res.as_env()["SDQ_FLEET_QUEUE_URLS"]) == {}


def test_table_keys_indexes_ttl_and_pitr_match_template(res: LocalResources, template: dict[str, Any]) -> None:
    ddb = _client(res, "dynamodb")
    props = template["Resources"]["JobsTable"]["Properties"]
    table = ddb.describe_table(TableName=res.table_name)["Table"]

    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    actual = {
        g["IndexName"]: (g["KeySchema"], g["Projection"]["ProjectionType"]) for g in table["GlobalSecondaryIndexes"]
    }
    expected = {
        g["IndexName"]: (g["KeySchema"], g["Projection"]["ProjectionType"]) for g in props["GlobalSecondaryIndexes"]
    }
    assert actual == expected
    assert set(actual) == {"by_tenant", "by_tenant_status", "active_by_tenant", "unqueued", "by_status"}
    assert actual["active_by_tenant"][1] == "KEYS_ONLY"

    ttl = ddb.describe_time_to_live(TableName=res.table_name)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": props["TimeToLiveSpecification"]["AttributeName"]}
    backups = ddb.describe_continuous_backups(TableName=res.table_name)["ContinuousBackupsDescription"]
    assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"


def test_bucket_exists_private_and_encrypted(res: LocalResources) -> None:
    s3 = _client(res, "s3")
    s3.head_bucket(Bucket=res.bucket)
    block = s3.get_public_access_block(Bucket=res.bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values())
    assert len(block) == 4
    rules = s3.get_bucket_encryption(Bucket=res.bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_functions_keep_template_handler_and_environment(res: LocalResources, template: dict[str, Any]) -> None:
    lam = _client(res, "lambda")
    sam_functions = {k: r for k, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}
    assert set(res.functions) == set(sam_functions)
    env = res.as_env()
    for logical_id, name in res.functions.items():
        config = lam.get_function(FunctionName=name)["Configuration"]
        assert config["Handler"] == sam_functions[logical_id]["Properties"]["Handler"]
        variables = config["Environment"]["Variables"]
        for key in ("SDQ_TABLE_NAME", "SDQ_QUEUE_URL", "SDQ_DLQ_URL", "SDQ_BUCKET"):
            assert variables[key] == env[key]


def test_state_machine_definition_is_fully_substituted(res: LocalResources) -> None:
    sfn = _client(res, "stepfunctions")
    described = sfn.describe_state_machine(stateMachineArn=res.state_machine_arn)
    text = described["definition"]
    assert "${" not in text
    definition = json.loads(text)
    states = definition["States"]
    assert states["Postprocess"]["Parameters"]["FunctionName"].endswith(f":function:{STUB_POSTPROCESS}")
    assert states["MarkSucceeded"]["Parameters"]["TableName"] == res.table_name
    assert states["MarkFailed"]["Parameters"]["TableName"] == res.table_name
    retriers = [r for s in states.values() for r in s.get("Retry", [])]
    assert retriers
    assert all(r["IntervalSeconds"] == 1 and r["BackoffRate"] == 1.0 for r in retriers)
    # The file on disk keeps the AWS schedule and stays plain JSON.
    on_disk = json.loads(ASL.read_text())
    assert on_disk["States"]["Postprocess"]["Retry"][0]["IntervalSeconds"] == 2


def test_as_env_points_at_the_local_cloud(res: LocalResources) -> None:
    env = res.as_env()
    assert env["AWS_ENDPOINT_URL"] == res.endpoint_url
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == "testing"
    assert env["SDQ_STATE_MACHINE_ARN"] == res.state_machine_arn
    assert env["SDQ_TABLE_NAME"] == res.table_name


def test_second_cloud_in_the_same_process_is_refused(cloud: tuple[LocalCloud, LocalResources]) -> None:
    assert LocalCloud.active() is cloud[0]
    with pytest.raises(RuntimeError, match="another LocalCloud"):
        LocalCloud().start()


def test_unknown_override_fails_before_anything_is_created(cloud: tuple[LocalCloud, LocalResources]) -> None:
    local, res = cloud
    with pytest.raises(ProvisionError, match="retry_override"):
        local.provision(TEMPLATE, ASL, substitutions_override={"RetryIntervalSeconds": "1"}, stack_name="sdq-bad")
    stacks = _client(res, "cloudformation").list_stacks()["StackSummaries"]
    assert [s["StackName"] for s in stacks] == [res.stack_name]
    assert local.resources == res


def test_a_request_for_another_host_is_refused_so_no_page_can_rebind_a_name_to_the_cloud(
    cloud: tuple[LocalCloud, LocalResources],
) -> None:
    """DNS rebinding: a web page points a name of its own at 127.0.0.1 and has the browser send it unsigned AWS
    calls (moto checks no signature). The request names the page's host; the local cloud, and the Step Functions
    process it forwards to, answer only their loopback address and port, while boto3 goes on working."""
    local, res = cloud
    port = local.port

    def forged(service: str, target: str) -> dict[str, str]:
        """Headers a page can set on its own origin's requests; the signature is made up (moto checks none)."""
        credential = f"Credential=testing/20260101/us-east-1/{service}/aws4_request"
        return {
            "X-Amz-Target": target,
            "Content-Type": "application/x-amz-json-1.0",
            "Authorization": f"AWS4-HMAC-SHA256 {credential}, SignedHeaders=host, Signature=00",
        }

    scan = forged("dynamodb", "DynamoDB_20120810.Scan")
    executions = forged("states", "AWSStepFunctions.ListStateMachines")
    body = json.dumps({"TableName": res.table_name}).encode()
    url = f"http://127.0.0.1:{port}/"
    with httpx.Client(timeout=10) as http:
        for host in (f"rebind.attacker.example:{port}", f"localhost.attacker.example:{port}", "127.0.0.1:1", ""):
            for target in (scan, executions):
                refused = http.post(url, content=body, headers={**target, "Host": host})
                assert refused.status_code == 403, (host, target)
                assert b"Items" not in refused.content
                assert b"stateMachines" not in refused.content
        # The same unsigned call for the cloud's own address is answered: the guard is all that stood between.
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
            answered = http.post(url, content=body, headers={**scan, "Host": host})
            assert answered.status_code == 200
            assert "Items" in answered.json()
        assert http.post(url, content=b"{}", headers={**executions, "Host": f"127.0.0.1:{port}"}).status_code == 200
        # The Step Functions process, on a port of its own, refuses other hosts too.
        sfn_port = local._executions.wait_ready()  # type: ignore[union-attr]
        sfn = f"http://127.0.0.1:{sfn_port}/"
        foreign = http.post(sfn, content=b"{}", headers={**executions, "Host": f"rebind.attacker.example:{sfn_port}"})
        assert foreign.status_code == 403
    assert _client(res, "dynamodb").describe_table(TableName=res.table_name)["Table"]["TableName"] == res.table_name
    assert _client(res, "stepfunctions").describe_state_machine(stateMachineArn=res.state_machine_arn)


# --- in-process Lambda ---------------------------------------------------------------------------------


def test_invoke_returns_handler_result_with_context_and_environment(res: LocalResources) -> None:
    name = "sdq-test-echo"
    _create_function(res, name, f"{MODULE}.echo_handler")
    response = _client(res, "lambda").invoke(FunctionName=name, Payload=json.dumps({"hello": "world"}))
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    body = json.loads(response["Payload"].read())
    assert body["event"] == {"hello": "world"}
    assert body["function_name"] == name
    assert body["request_id"]
    assert 0 < body["remaining_ms"] <= 30_000
    assert body["table_env"] == res.table_name
    assert body["endpoint_env"] == res.endpoint_url


def test_invoke_unhandled_exception_is_a_function_error(res: LocalResources) -> None:
    name = "sdq-test-failing"
    _create_function(res, name, f"{MODULE}.failing_handler")
    response = _client(res, "lambda").invoke(FunctionName=name, Payload=json.dumps({"job_id": "j-1"}))
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    body = json.loads(response["Payload"].read())
    assert body == {"errorType": "PostprocessBoom", "errorMessage": "cannot postprocess j-1", "stackTrace": []}


def test_invoke_missing_handler_module_is_a_function_error(res: LocalResources) -> None:
    name = "sdq-test-missing-module"
    _create_function(res, name, "tests.integration.no_such_module.lambda_handler")
    response = _client(res, "lambda").invoke(FunctionName=name, Payload=b"{}")
    assert response["FunctionError"] == "Unhandled"
    body = json.loads(response["Payload"].read())
    assert body["errorType"] == "Runtime.ImportModuleError"
    assert "no_such_module" in body["errorMessage"]


def test_invoke_unknown_function_is_resource_not_found(res: LocalResources) -> None:
    lam = _client(res, "lambda")
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.invoke(FunctionName="sdq-no-such-function", Payload=b"{}")


# --- the state machine runs for real -----------------------------------------------------------------


def test_worker_error_marks_job_failed(res: LocalResources) -> None:
    job_id = _put_job(res, "RUNNING")
    payload = {
        "job_id": job_id,
        "tenant": "t-1",
        "attempt": 1,
        "staging_keys": [],
        "worker_error": {"code": "CUDA_OOM", "message": "out of GPU memory"},
    }
    execution = _run_execution(res, payload)
    assert execution["status"] == "SUCCEEDED"
    job = _get_job(res, job_id)
    assert job["status"] == "FAILED"
    assert job["error_code"] == "CUDA_OOM"
    assert job["error_message"] == "out of GPU memory"
    assert job["tenant_status"] == "t-1#FAILED"
    assert "active_tenant" not in job
    assert job["finished_at"]


def test_postprocess_success_marks_job_succeeded(res: LocalResources) -> None:
    job_id = _put_job(res, "POSTPROCESSING")
    payload = {"job_id": job_id, "tenant": "t-1", "attempt": 1, "staging_keys": ["staging/a.png"]}
    assert _run_execution(res, payload)["status"] == "SUCCEEDED"
    job = _get_job(res, job_id)
    assert job["status"] == "SUCCEEDED"
    assert json.loads(job["outputs"]) == [{"key": f"outputs/{job_id}/0.png"}]
    assert "active_tenant" not in job


def test_lambda_function_error_is_caught_and_marks_job_failed(res: LocalResources) -> None:
    job_id = _put_job(res, "POSTPROCESSING")
    payload = {"job_id": job_id, "tenant": "t-1", "attempt": 1, "staging_keys": ["explode"]}
    assert _run_execution(res, payload)["status"] == "SUCCEEDED"
    job = _get_job(res, job_id)
    assert job["status"] == "FAILED"
    # The client gets a stable code and the error's name, never the raw cause with its stack and request id.
    assert job["error_code"] == "POSTPROCESS_FAILED"
    assert job["error_message"] == "The images could not be postprocessed and stored (PostprocessBoom)."


def test_postprocess_failing_transiently_twice_is_retried_and_succeeds(res: LocalResources) -> None:
    job_id = _put_job(res, "POSTPROCESSING")
    payload = {"job_id": job_id, "tenant": "t-1", "attempt": 1, "staging_keys": ["flaky"]}
    assert _run_execution(res, payload)["status"] == "SUCCEEDED"
    assert FLAKY_CALLS[job_id] == 3
    job = _get_job(res, job_id)
    assert job["status"] == "SUCCEEDED"
    assert "error_code" not in job


def test_terminal_job_is_left_alone(res: LocalResources) -> None:
    job_id = _put_job(res, "CANCELLED")
    payload = {
        "job_id": job_id,
        "tenant": "t-1",
        "attempt": 1,
        "staging_keys": [],
        "worker_error": {"code": "LATE", "message": "worker finished after cancel"},
    }
    assert _run_execution(res, payload)["status"] == "SUCCEEDED"
    history = _client(res, "stepfunctions").get_execution_history(
        executionArn=f"{res.state_machine_arn.replace(':stateMachine:', ':execution:')}:{job_id}"
    )["events"]
    entered = [e["stateEnteredEventDetails"]["name"] for e in history if "stateEnteredEventDetails" in e]
    assert entered[-1] == "AlreadyFinal"
    job = _get_job(res, job_id)
    assert job["status"] == "CANCELLED"
    assert "error_code" not in job


# --- moto's hot paths, made cheaper (localcloud/hotpaths.py), answer as before --------------------------------------


def test_a_keys_only_index_query_counts_pages_and_projects_as_dynamodb_does(res: LocalResources) -> None:
    ddb = _client(res, "dynamodb")
    tenant = f"t-index-{uuid.uuid4().hex[:8]}"
    active = set()
    for i in range(10):
        job_id = f"{tenant}-{i:02}"
        item = {"pk": {"S": f"JOB#{job_id}"}, "job_id": {"S": job_id}, "tenant": {"S": tenant}, "big": {"S": "x" * 500}}
        if i % 3:
            item["active_tenant"] = {"S": tenant}
            active.add(f"JOB#{job_id}")
        ddb.put_item(TableName=res.table_name, Item=item)
    query = {
        "TableName": res.table_name,
        "IndexName": "active_by_tenant",
        "KeyConditionExpression": "active_tenant = :t",
        "ExpressionAttributeValues": {":t": {"S": tenant}},
    }
    assert ddb.query(**query, Select="COUNT")["Count"] == len(active) == 6
    limited = ddb.query(**query, Select="COUNT", Limit=4)  # a count honours Limit and pages as a query does
    assert limited["Count"] == 4
    rest = ddb.query(**query, Select="COUNT", ExclusiveStartKey=limited["LastEvaluatedKey"])
    assert rest["Count"] == 2
    assert "LastEvaluatedKey" not in rest
    # Outside a count, items are sized as before: one over DynamoDB's 400 KB is refused.
    with pytest.raises(ddb.exceptions.ClientError, match="size"):
        ddb.put_item(TableName=res.table_name, Item={"pk": {"S": f"BIG#{tenant}"}, "big": {"S": "x" * 410_000}})
    seen: list[dict[str, Any]] = []
    page: dict[str, Any] = {"Limit": 4}
    while True:
        answer = ddb.query(**query, **page)
        assert len(answer["Items"]) <= 4
        seen.extend(answer["Items"])
        if "LastEvaluatedKey" not in answer:
            break
        page["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
    assert {i["pk"]["S"] for i in seen} == active
    assert len(seen) == len(active)
    # KEYS_ONLY: the table's key and the index's (active_tenant, job_id), nothing else.
    assert all(set(i) == {"pk", "active_tenant", "job_id"} for i in seen)
    # The stored items keep every attribute (the projection copied, it did not cut the originals).
    stored = ddb.get_item(TableName=res.table_name, Key={"pk": {"S": sorted(active)[0]}})["Item"]
    assert stored["big"]["S"] == "x" * 500


def test_queue_attributes_count_visible_in_flight_and_delayed_messages(res: LocalResources) -> None:
    sqs = _client(res, "sqs")
    url = sqs.create_queue(QueueName=f"sdq-test-attrs-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    for i in range(5):
        sqs.send_message(QueueUrl=url, MessageBody=f"m{i}")
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=60)
    assert len(sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=60)["Messages"]) == 2
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "3"
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "2"
    assert attrs["ApproximateNumberOfMessagesDelayed"] == "1"
    assert attrs["SqsManagedSseEnabled"] == "true"
    assert "QueueArn" in attrs
    assert "Policy" not in attrs
    fifo = sqs.create_queue(
        QueueName=f"sdq-test-fifo-{uuid.uuid4().hex[:8]}.fifo",
        Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
    )["QueueUrl"]
    for _ in range(3):  # the same body: content-based deduplication keeps one
        sqs.send_message(QueueUrl=fifo, MessageBody="same", MessageGroupId="g")
    fifo_attrs = sqs.get_queue_attributes(
        QueueUrl=fifo, AttributeNames=["ApproximateNumberOfMessages", "ContentBasedDeduplication"]
    )["Attributes"]
    assert fifo_attrs == {"ApproximateNumberOfMessages": "1", "ContentBasedDeduplication": "true"}


# Last: its stack beside the module's would show in the stack listing the tests above check.
def test_a_second_fleet_is_provisioned_with_its_own_queue_and_its_route(res: LocalResources) -> None:
    """SecondFleet=large: the local cloud makes the fleet's queue as the template declares it (the same attributes
    as the jobs queue, dead letters to the same queue), and the processes' environment routes to it."""
    stack = provision(
        res.endpoint_url, res.region, TEMPLATE, ASL, parameters={"SecondFleet": "large"}, stack_name="fleets"
    )
    fleets = stack.resources
    routes = json.loads(fleets.as_env()["SDQ_FLEET_QUEUE_URLS"])
    assert list(routes) == ["large"]
    sqs = _client(res, "sqs")
    attributes = [
        "VisibilityTimeout",
        "ReceiveMessageWaitTimeSeconds",
        "MessageRetentionPeriod",
        "SqsManagedSseEnabled",
    ]
    jobs = sqs.get_queue_attributes(QueueUrl=fleets.queue_url, AttributeNames=["All"])["Attributes"]
    large = sqs.get_queue_attributes(QueueUrl=routes["large"], AttributeNames=["All"])["Attributes"]
    assert {a: large[a] for a in attributes} == {a: jobs[a] for a in attributes}
    dlq = sqs.get_queue_attributes(QueueUrl=fleets.dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert json.loads(large["RedrivePolicy"])["deadLetterTargetArn"] == dlq


def test_a_wait_until_a_timestamp_ends_at_that_time_not_before(res: LocalResources) -> None:
    """The webhook retries wait for a whole-second ``retry_at`` (a TimestampPath): as on AWS, the Wait state may not
    end before it (moto waited the seconds to it rounded down, up to one second early)."""
    sfn = _client(res, "stepfunctions")
    role = sfn.describe_state_machine(stateMachineArn=res.state_machine_arn)["roleArn"]
    definition = {
        "StartAt": "Until",
        "States": {"Until": {"Type": "Wait", "TimestampPath": "$.until", "End": True}},
    }
    machine = sfn.create_state_machine(name="wait-until", definition=json.dumps(definition), roleArn=role)
    # A whole second between 2 and 3 s ahead: rounded down, the wait would end up to a second early.
    until = datetime.fromtimestamp(math.floor(time.time()) + 3, UTC)
    arn = sfn.start_execution(
        stateMachineArn=machine["stateMachineArn"], input=json.dumps({"until": until.strftime("%Y-%m-%dT%H:%M:%SZ")})
    )["executionArn"]
    deadline = time.monotonic() + 15
    while sfn.describe_execution(executionArn=arn)["status"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.1)
    events = sfn.get_execution_history(executionArn=arn)["events"]
    [exited] = [e["timestamp"] for e in events if e["type"] == "WaitStateExited"]
    assert exited >= until
