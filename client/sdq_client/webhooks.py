"""Checking that a webhook came from the API (Standard Webhooks signatures)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import standardwebhooks
from pydantic import ValidationError
from standardwebhooks.webhooks import EmptyWebhookSecretError

from sdq_client.errors import UnusableWebhookSecret, WebhookVerificationError
from sdq_client.models import JobEvent


def verify_webhook(body: bytes | str, headers: Mapping[str, str], secret: str | Sequence[str]) -> JobEvent:
    """The verified event of a webhook request, or WebhookVerificationError.

    ``body`` is the raw request body exactly as received; ``headers`` its headers (any case); ``secret`` the
    tenant's ``whsec_...`` secret (``GET /v1/webhook-secret``), or several (during a rotation, the new and the
    old one: either verifies). The signature must match and ``webhook-timestamp`` be within five minutes of now
    (replays are refused); dedupe on ``webhook-id``, which is the same for every retry of one job's event.

    A secret that cannot be used (empty, not base64) is skipped: the others still verify. When none of them can
    be used, UnusableWebhookSecret (a WebhookVerificationError) says so, as a configuration problem rather than
    a forged webhook.
    """
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise UnusableWebhookSecret("no secret to verify with")
    plain = {str(k): str(v) for k, v in headers.items()}
    hooks: list[standardwebhooks.Webhook] = []
    unusable: list[str] = []
    for position, candidate in enumerate(secrets):
        try:
            hooks.append(standardwebhooks.Webhook(candidate))
        except (RuntimeError, ValueError, TypeError, EmptyWebhookSecretError) as exc:  # binascii.Error: ValueError
            unusable.append(f"secret {position + 1}: {exc}")  # never the secret itself
    if not hooks:
        raise UnusableWebhookSecret("no usable secret: " + "; ".join(unusable))
    problem = ""
    for hook in hooks:
        try:
            hook.verify(body, plain, json_parse=False)
        except standardwebhooks.WebhookVerificationError as exc:
            problem = str(exc)
            continue
        try:
            return JobEvent.model_validate_json(body)
        except ValidationError as exc:
            raise WebhookVerificationError(f"signed, but not a job event: {exc}") from exc
    raise WebhookVerificationError(problem)
