"""Per-tenant webhook signing secrets: the ``TENANT#<tenant>`` items of the jobs table, rotatable with an overlap."""

from __future__ import annotations

import base64
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.errors import Conflict

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


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
    ) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._overlap_s = overlap_s
        self._now = now

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
        current = item.get("webhook_secret", {}).get("S")
        if not current:
            candidate = new_secret()
            try:
                self._ddb.put_item(
                    TableName=self._table,
                    Item={**self._key(tenant), "webhook_secret": {"S": candidate}},
                    ConditionExpression="attribute_not_exists(webhook_secret)",
                )
            except self._ddb.exceptions.ConditionalCheckFailedException:
                return self.signing_secrets(tenant)  # created concurrently: use the winner's
            return [candidate]
        previous = item.get("previous_webhook_secret", {}).get("S")
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
            current = self._item(tenant).get("webhook_secret", {}).get("S")
            secret = new_secret()
            item: dict[str, Any] = {**self._key(tenant), "webhook_secret": {"S": secret}}
            valid_until: int | None = None
            if current and self._overlap_s > 0:
                valid_until = math.ceil(self._now()) + self._overlap_s
                item["previous_webhook_secret"] = {"S": current}
                item["previous_valid_until"] = {"N": str(valid_until)}
            condition: dict[str, Any] = (
                {
                    "ConditionExpression": "webhook_secret = :read",
                    "ExpressionAttributeValues": {":read": {"S": current}},
                }
                if current
                else {"ConditionExpression": "attribute_not_exists(webhook_secret)"}
            )
            try:
                self._ddb.put_item(TableName=self._table, Item=item, **condition)
            except self._ddb.exceptions.ConditionalCheckFailedException:
                continue  # another rotation (or the first use) wrote in between: rotate what it left
            until = datetime.fromtimestamp(valid_until, UTC) if valid_until is not None else None
            return Rotation(secret, until)
        raise SecretRotationConflict()
