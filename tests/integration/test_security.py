"""Evidence for docs/security.md's checklist that the scans do not give: every checkov finding suppressed in
template.yaml names its check and gives its reason; every store the template declares is encrypted at rest, so a
suppression can never hide a store left without encryption; the images travel over TLS 1.2 or newer only. The
scans themselves run in `make scan` (part of `make test`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from localcloud.provision import load_sam_template

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"

# The resource types that hold data, and where each declares its encryption at rest.
STORES = {
    "AWS::DynamoDB::Table",
    "AWS::S3::Bucket",
    "AWS::SQS::Queue",
    "AWS::ECR::Repository",
    "AWS::EC2::LaunchTemplate",
    "AWS::Logs::LogGroup",
    "AWS::SNS::Topic",
}


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    return dict(load_sam_template(TEMPLATE)["Resources"])


def _skips(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return list(resource.get("Metadata", {}).get("checkov", {}).get("skip", []))


def _encryption(kind: str, props: dict[str, Any]) -> str | None:
    """The key a store of this type names, as docs/security.md lists it; None where it names none."""
    if kind == "AWS::DynamoDB::Table":
        return "aws/dynamodb" if props.get("SSESpecification", {}).get("SSEEnabled") is True else None
    if kind == "AWS::S3::Bucket":
        rules = props.get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration", [])
        return "SSE-S3" if [r["ServerSideEncryptionByDefault"]["SSEAlgorithm"] for r in rules] == ["AES256"] else None
    if kind == "AWS::SQS::Queue":
        return "SSE-SQS" if props.get("SqsManagedSseEnabled") is True else None
    if kind == "AWS::ECR::Repository":
        return "AES256" if props.get("EncryptionConfiguration") == {"EncryptionType": "AES256"} else None
    if kind == "AWS::EC2::LaunchTemplate":
        volumes = props["LaunchTemplateData"]["BlockDeviceMappings"]
        return "aws/ebs" if volumes and all(v["Ebs"]["Encrypted"] is True for v in volumes) else None
    if kind == "AWS::Logs::LogGroup":
        return "KmsKeyId" if "KmsKeyId" in props else "CloudWatch Logs"  # the service always encrypts log data
    return "KmsMasterKeyId" if "KmsMasterKeyId" in props else None  # AWS::SNS::Topic


def test_every_checkov_suppression_names_its_check_and_gives_its_reason(resources: dict[str, Any]) -> None:
    skips = [(name, skip) for name, resource in resources.items() for skip in _skips(resource)]
    assert skips, "template.yaml suppresses nothing: was the Metadata layout changed?"
    for name, skip in skips:
        assert set(skip) == {"id", "comment"}, (name, skip)
        assert re.fullmatch(r"CKV_AWS_\d+", skip["id"]), (name, skip)
        assert len(skip["comment"].split()) >= 5, (name, skip)  # a reason, not a placeholder
    ids = [(name, skip["id"]) for name, skip in skips]
    assert len(ids) == len(set(ids)), "a check suppressed twice on one resource"


def test_every_store_is_encrypted_at_rest(resources: dict[str, Any]) -> None:
    stores = {name: r for name, r in resources.items() if r["Type"] in STORES}
    unencrypted = {name for name, r in stores.items() if _encryption(r["Type"], r.get("Properties", {})) is None}
    assert unencrypted == set()


def test_suppressed_encryption_checks_sit_only_on_stores_encrypted_another_way(resources: dict[str, Any]) -> None:
    encryption_checks = {"CKV_AWS_119", "CKV_AWS_27", "CKV_AWS_136", "CKV_AWS_158"}
    for name, resource in resources.items():
        for skip in _skips(resource):
            if skip["id"] in encryption_checks:
                assert _encryption(resource["Type"], resource["Properties"]) is not None, (name, skip["id"])


def test_the_bucket_refuses_tls_older_than_1_2(resources: dict[str, Any]) -> None:
    policy = resources["MediaBucketPolicy"]["Properties"]["PolicyDocument"]
    (deny,) = (
        st for st in policy["Statement"] if "s3:TlsVersion" in st.get("Condition", {}).get("NumericLessThan", {})
    )
    assert (deny["Effect"], deny["Principal"], deny["Action"]) == ("Deny", "*", "s3:*")
    assert deny["Condition"]["NumericLessThan"]["s3:TlsVersion"] == "1.2"
    assert deny["Resource"] == [{"Fn::GetAtt": ["MediaBucket", "Arn"]}, {"Fn::Sub": "${MediaBucket.Arn}/*"}]


def test_alarms_can_publish_to_their_encrypted_topic(resources: dict[str, Any]) -> None:
    assert resources["AlarmTopic"]["Properties"]["KmsMasterKeyId"] == {"Ref": "AlarmTopicKey"}
    policy = resources["AlarmTopicKey"]["Properties"]["KeyPolicy"]
    (cloudwatch,) = (st for st in policy["Statement"] if st["Principal"] == {"Service": "cloudwatch.amazonaws.com"})
    assert cloudwatch["Effect"] == "Allow"
    assert set(cloudwatch["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
