"""Checking that a webhook came from the API (Standard Webhooks signatures)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import standardwebhooks
from pydantic import ValidationError
from standardwebhooks.webhooks import EmptyWebhookSecretError

from sdq_client.errors import WebhookVerificationError
from sdq_client.models import JobEvent


def verify_webhook(body: bytes | str, headers: Mapping[str, str], secret: str | Sequence[str]) -> JobEvent:
    """The verified event of a webhook request, or WebhookVerificationError.

    ``body`` is the raw request body exactly as received; ``headers`` its headers (any case); ``secret`` the
    tenant's ``whsec_...`` secret (``GET /v1/webhook-secret``), or several (during a rotation, the new and the
    old one: either verifies). The signature must match and ``webhook-timestamp`` be within five minutes of now
    (replays are refused); dedupe on ``webhook-id``, which is the same for every retry of one job's event.
    """
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise WebhookVerificationError("no secret to verify with")
    plain = {str(k): str(v) for k, v in headers.items()}
    problem = "no secret given"
    for candidate in secrets:
        try:
            standardwebhooks.Webhook(candidate).verify(body, plain, json_parse=False)
        except standardwebhooks.WebhookVerificationError as exc:
            problem = str(exc)
            continue
        except (RuntimeError, ValueError, EmptyWebhookSecretError) as exc:  # a malformed secret
            raise WebhookVerificationError(f"unusable secret: {exc}") from exc
        try:
            return JobEvent.model_validate_json(body)
        except ValidationError as exc:
            raise WebhookVerificationError(f"signed, but not a job event: {exc}") from exc
    raise WebhookVerificationError(problem)
