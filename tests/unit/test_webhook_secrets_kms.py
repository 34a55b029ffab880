"""Webhook secrets encrypted at rest with a KMS key (moto's KMS and DynamoDB, in process): what the table holds,
who can read it back, and secrets stored in plain text before a key was configured."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.exceptions import ClientError

from shared.webhooksecrets import SecretCipher, WebhookSecrets
from tests.unit.conftest import JOBS_TABLE

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

NOW = 1_800_000_000.0


@pytest.fixture
def kms(jobs_table: DynamoDBClient) -> Any:  # jobs_table: inside its moto context
    return boto3.client("kms", region_name="us-east-1")


@pytest.fixture
def cipher(kms: Any) -> SecretCipher:
    key_id = kms.create_key(Description="sdq webhook secrets")["KeyMetadata"]["KeyId"]
    return SecretCipher(kms, key_id)


def store(jobs_table: DynamoDBClient, cipher: SecretCipher | None, overlap_s: int = 0) -> WebhookSecrets:
    return WebhookSecrets(jobs_table, JOBS_TABLE, overlap_s=overlap_s, now=lambda: NOW, cipher=cipher)


def item(jobs_table: DynamoDBClient, tenant: str) -> dict[str, Any]:
    return dict(jobs_table.get_item(TableName=JOBS_TABLE, Key={"pk": {"S": f"TENANT#{tenant}"}})["Item"])


def test_the_table_holds_only_ciphertext_and_the_key_reads_it_back(
    jobs_table: DynamoDBClient, cipher: SecretCipher
) -> None:
    secrets = store(jobs_table, cipher)
    secret = secrets.get("acme")
    assert secret.startswith("whsec_")
    stored = item(jobs_table, "acme")
    assert set(stored) == {"pk", "webhook_secret_enc"}
    assert secret.encode() not in bytes(stored["webhook_secret_enc"]["B"])
    # Another process with the key (a fresh cipher, no cache) reads the same secret.
    fresh = SecretCipher(boto3.client("kms", region_name="us-east-1"), cipher.key_id)
    assert store(jobs_table, fresh).signing_secrets("acme") == [secret]
    # Without the key the table alone gives nothing usable.
    with pytest.raises(RuntimeError, match="no key is configured"):
        store(jobs_table, None).get("acme")


def test_a_ciphertext_copied_to_another_tenant_does_not_decrypt(
    jobs_table: DynamoDBClient, cipher: SecretCipher
) -> None:
    store(jobs_table, cipher).get("acme")
    blob = item(jobs_table, "acme")["webhook_secret_enc"]
    jobs_table.put_item(TableName=JOBS_TABLE, Item={"pk": {"S": "TENANT#mallory"}, "webhook_secret_enc": blob})
    fresh = SecretCipher(boto3.client("kms", region_name="us-east-1"), cipher.key_id)
    with pytest.raises(ClientError):
        store(jobs_table, fresh).get("mallory")


def test_a_secret_stored_in_plain_text_is_encrypted_when_first_read_with_the_key(
    jobs_table: DynamoDBClient, cipher: SecretCipher
) -> None:
    plain = store(jobs_table, None, overlap_s=600)
    first = plain.get("acme")
    second = plain.rotate("acme").secret
    assert "webhook_secret" in item(jobs_table, "acme")
    encrypted = store(jobs_table, cipher, overlap_s=600)
    assert encrypted.signing_secrets("acme") == [second, first]  # unchanged for receivers
    stored = item(jobs_table, "acme")
    assert "webhook_secret" not in stored
    assert "previous_webhook_secret" not in stored
    assert {"webhook_secret_enc", "previous_webhook_secret_enc", "previous_valid_until"} <= set(stored)
    assert encrypted.signing_secrets("acme") == [second, first]


def test_rotation_keeps_both_secrets_encrypted(jobs_table: DynamoDBClient, cipher: SecretCipher) -> None:
    secrets = store(jobs_table, cipher, overlap_s=600)
    old = secrets.get("acme")
    rotation = secrets.rotate("acme")
    assert secrets.signing_secrets("acme") == [rotation.secret, old]
    stored = item(jobs_table, "acme")
    assert set(stored) == {"pk", "webhook_secret_enc", "previous_webhook_secret_enc", "previous_valid_until"}
    again = secrets.rotate("acme")
    assert secrets.signing_secrets("acme") == [again.secret, rotation.secret]
