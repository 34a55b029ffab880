"""Per-tenant webhook signing secrets: the ``TENANT#<tenant>`` items of the jobs table, rotatable with an overlap,
encrypted at rest with the stack's own KMS key where one is configured."""

from __future__ import annotations

import base64
import contextlib
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from shared.errors import Conflict

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from shared.aws import AwsClients
    from shared.settings import Settings


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


class SecretRotationConflict(Conflict):
    """Other rotations of the same tenant's secret kept winning the write; nothing was changed by this one."""

    code = "rotation_in_progress"

    def __init__(self) -> None:
        super().__init__("The webhook secret is being rotated by another request; retry in a moment.")


@dataclass(frozen=True)
class Rotation:
    """A rotation's outcome: the new secret, and until when the one it replaced still signs (None: it does not)."""

    secret: str
    previous_valid_until: datetime | None


ROTATE_ATTEMPTS = 5
# The item attributes a secret may be stored in: ciphertext (KMS) or, before a key was configured, plain text.
CURRENT, PREVIOUS = "webhook_secret", "previous_webhook_secret"
ENCRYPTED = "_enc"
NO_SECRET_YET = f"attribute_not_exists({CURRENT}) AND attribute_not_exists({CURRENT}{ENCRYPTED})"


class SecretCipher:
    """Encrypts a secret with a KMS key (``kms:Encrypt``) and decrypts it (``kms:Decrypt``), bound to its tenant by
    the encryption context, so a ciphertext copied to another tenant's item does not decrypt. Only roles granted
    the key can read a secret; the table alone (a backup, an export, a role with ``dynamodb:GetItem``) holds no
    usable secret. A secret is 24 random bytes, far inside KMS's 4 KiB plaintext limit, so it is encrypted by KMS
    directly rather than under a data key. Decryptions are remembered per process (a few hundred tenants)."""

    def __init__(self, kms: Any, key_id: str) -> None:
        self._kms = kms
        self.key_id = key_id
        self.decrypt = lru_cache(maxsize=512)(self._decrypt)

    @staticmethod
    def _context(tenant: str) -> dict[str, str]:
        return {"sdq:tenant": tenant}

    def encrypt(self, tenant: str, secret: str) -> bytes:
        resp = self._kms.encrypt(KeyId=self.key_id, Plaintext=secret.encode(), EncryptionContext=self._context(tenant))
        return bytes(resp["CiphertextBlob"])

    def _decrypt(self, tenant: str, blob: bytes) -> str:
        resp = self._kms.decrypt(CiphertextBlob=blob, EncryptionContext=self._context(tenant))
        return bytes(resp["Plaintext"]).decode()


class WebhookSecrets:
    """Per-tenant signing secrets (item ``TENANT#<tenant>``), created on first use, rotatable with an overlap.

    The item holds ``webhook_secret`` (the current one) and, for ``overlap_s`` seconds after a rotation,
    ``previous_webhook_secret`` with ``previous_valid_until`` (epoch seconds): until then every webhook is
    signed with both, so a receiver that has not deployed the new secret yet still accepts it. ``now`` is the
    clock those times are read against (injectable for tests).
    """

    def __init__(
        self,
        dynamodb: DynamoDBClient,
        table_name: str,
        *,
        overlap_s: int,
        now: Callable[[], float] = time.time,
        cipher: SecretCipher | None = None,
    ) -> None:
        """``cipher``: where set, secrets are stored encrypted (``webhook_secret_enc``); a secret stored in plain
        text before is encrypted the first time it is read."""
        self._ddb = dynamodb
        self._table = table_name
        self._overlap_s = overlap_s
        self._now = now
        self._cipher = cipher

    def _stored(self, tenant: str, secret: str) -> dict[str, Any]:
        """How ``secret`` is written: its ciphertext, or plain text without a cipher."""
        if self._cipher is None:
            return {"S": secret}
        return {"B": self._cipher.encrypt(tenant, secret)}

    def _attr(self, name: str) -> str:
        return name + ENCRYPTED if self._cipher is not None else name

    def _read(self, tenant: str, item: dict[str, Any], name: str) -> str | None:
        blob = item.get(name + ENCRYPTED, {}).get("B")
        if blob is not None:
            if self._cipher is None:
                raise RuntimeError("webhook secrets are encrypted but no key is configured (SDQ_WEBHOOK_SECRETS_KEY)")
            return self._cipher.decrypt(tenant, bytes(blob))
        plain = item.get(name, {}).get("S")
        return str(plain) if plain else None

    def _encrypt_plaintext(self, tenant: str, item: dict[str, Any]) -> None:
        """Rewrite ``item``, whose secrets are in plain text, with their ciphertext instead (once a key is
        configured), unless a rotation changed it meanwhile. A whole-item put: the roles that sign may put
        ``TENANT#`` items, never update them."""
        new: dict[str, Any] = {**self._key(tenant), CURRENT + ENCRYPTED: self._stored(tenant, str(item[CURRENT]["S"]))}
        if PREVIOUS in item:
            new[PREVIOUS + ENCRYPTED] = self._stored(tenant, str(item[PREVIOUS]["S"]))
        if "previous_valid_until" in item:
            new["previous_valid_until"] = item["previous_valid_until"]
        with contextlib.suppress(self._ddb.exceptions.ConditionalCheckFailedException):
            self._ddb.put_item(
                TableName=self._table,
                Item=new,
                ConditionExpression=f"{CURRENT} = :read",
                ExpressionAttributeValues={":read": item[CURRENT]},
            )

    def _key(self, tenant: str) -> dict[str, Any]:
        return {"pk": {"S": f"TENANT#{tenant}"}}

    def _item(self, tenant: str) -> dict[str, Any]:
        resp = self._ddb.get_item(TableName=self._table, Key=self._key(tenant), ConsistentRead=True)
        return dict(resp.get("Item", {}))

    def get(self, tenant: str) -> str:
        """The current secret (created on first use)."""
        return self.signing_secrets(tenant)[0]

    def signing_secrets(self, tenant: str) -> list[str]:
        """The secrets a webhook is signed with now: the current one, then the previous one while its overlap
        lasts. Creates the current secret on first use."""
        item = self._item(tenant)
        current = self._read(tenant, item, CURRENT)
        if not current:
            candidate = new_secret()
            try:
                self._ddb.put_item(
                    TableName=self._table,
                    Item={**self._key(tenant), self._attr(CURRENT): self._stored(tenant, candidate)},
                    ConditionExpression=NO_SECRET_YET,
                )
            except self._ddb.exceptions.ConditionalCheckFailedException:
                return self.signing_secrets(tenant)  # created concurrently: use the winner's
            return [candidate]
        if self._cipher is not None and CURRENT in item:
            self._encrypt_plaintext(tenant, item)
        previous = self._read(tenant, item, PREVIOUS)
        until = item.get("previous_valid_until", {}).get("N")
        if previous and until and self._now() < int(until):
            return [current, previous]
        return [current]

    def rotate(self, tenant: str) -> Rotation:
        """Replace the current secret with a new one; the replaced one keeps signing for ``overlap_s`` seconds.

        One conditional write of the whole item (new secret, previous secret, its end of validity), made only
        if the current secret is still the one read, so the secret a concurrent rotation handed out is not lost:
        it becomes the previous one. Only the immediately previous secret is kept: rotating again within the
        overlap drops the older one at once (a webhook carries at most two signatures; a receiver still on a
        secret two rotations old rejects webhooks; a second rotation is also how a client stops an unwanted
        old secret from signing before its overlap ends). With ``overlap_s`` 0, or when the tenant had no
        secret yet, nothing is kept and ``previous_valid_until`` is None. Raises :class:`SecretRotationConflict`
        (409) when other rotations won every attempt.
        """
        for _ in range(ROTATE_ATTEMPTS):
            read = self._item(tenant)
            current = self._read(tenant, read, CURRENT)
            secret = new_secret()
            item: dict[str, Any] = {**self._key(tenant), self._attr(CURRENT): self._stored(tenant, secret)}
            valid_until: int | None = None
            if current and self._overlap_s > 0:
                valid_until = math.ceil(self._now()) + self._overlap_s
                item[self._attr(PREVIOUS)] = self._stored(tenant, current)
                item["previous_valid_until"] = {"N": str(valid_until)}
            # The whole item is replaced only if its current secret is still the one read (as stored).
            stored_as = CURRENT + ENCRYPTED if CURRENT + ENCRYPTED in read else CURRENT
            condition: dict[str, Any] = (
                {
                    "ConditionExpression": f"{stored_as} = :read",
                    "ExpressionAttributeValues": {":read": read[stored_as]},
                }
                if current
                else {"ConditionExpression": NO_SECRET_YET}
            )
            try:
                self._ddb.put_item(TableName=self._table, Item=item, **condition)
            except self._ddb.exceptions.ConditionalCheckFailedException:
                continue  # another rotation (or the first use) wrote in between: rotate what it left
            until = datetime.fromtimestamp(valid_until, UTC) if valid_until is not None else None
            return Rotation(secret, until)
        raise SecretRotationConflict()


def webhook_secrets(aws: AwsClients, settings: Settings) -> WebhookSecrets:
    """The secret store of every process that signs or hands out secrets (API, Notify, worker): on the jobs table,
    encrypted with ``settings.webhook_secrets_key`` where it is set."""
    key = settings.webhook_secrets_key
    return WebhookSecrets(
        aws.dynamodb(),
        settings.table_name,
        overlap_s=settings.webhook_secret_overlap_s,
        cipher=SecretCipher(aws.kms(), key) if key else None,
    )
