"""`verify_webhook()` against webhooks signed exactly as the service signs them (workflows/webhooks.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sdq_client import JobStatus, UnusableWebhookSecret, WebhookVerificationError, verify_webhook

from shared.contracts import webhook_id
from shared.webhooksecrets import new_secret
from tests.client.test_stream import job
from workflows.webhooks import signature_header

SECRET, PREVIOUS = new_secret(), new_secret()


def signed(
    secrets: list[str], *, at: datetime | None = None, event: str = "job.succeeded"
) -> tuple[str, dict[str, str]]:
    at = at or datetime.now(UTC)
    body = json.dumps({"type": event, "timestamp": at.isoformat(), "data": job("SUCCEEDED")})
    msg_id = webhook_id("01KAXAAAAAAAAAAAAAAAAAAAAA", event)
    headers = {
        "Webhook-Id": msg_id,
        "Webhook-Timestamp": str(int(at.timestamp())),
        "Webhook-Signature": signature_header(secrets, msg_id, at, body),
    }
    return body, headers


def test_a_signed_webhook_verifies_and_reads_as_a_job_event() -> None:
    body, headers = signed([SECRET])
    event = verify_webhook(body.encode(), headers, SECRET)
    assert event.type == "job.succeeded"
    assert event.data.status is JobStatus.SUCCEEDED
    assert event.data.request.prompt == "a red fox"


def test_during_a_rotation_either_secret_verifies() -> None:
    body, headers = signed([SECRET, PREVIOUS])  # the service signs with both for the overlap
    assert verify_webhook(body, headers, PREVIOUS).type == "job.succeeded"
    body, headers = signed([SECRET])
    assert verify_webhook(body, headers, [PREVIOUS, SECRET]).type == "job.succeeded"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda body, headers: (body.replace("a red fox", "a red cat"), headers),
        lambda body, headers: (body, {**headers, "Webhook-Id": "msg_other"}),
        lambda body, headers: (body, {k: v for k, v in headers.items() if k != "Webhook-Signature"}),
        lambda body, headers: (body, {**headers, "Webhook-Timestamp": str(int(headers["Webhook-Timestamp"]) + 1)}),
    ],
    ids=["body", "id", "no-signature", "timestamp"],
)
def test_anything_altered_is_refused(tamper) -> None:
    body, headers = tamper(*signed([SECRET]))
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, SECRET)


def test_another_secret_an_old_message_or_a_broken_secret_is_refused() -> None:
    body, headers = signed([SECRET])
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        verify_webhook(body, headers, PREVIOUS)
    old_body, old_headers = signed([SECRET], at=datetime.now(UTC) - timedelta(minutes=10))
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_webhook(old_body, old_headers, SECRET)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, "whsec_")
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, [])


def test_a_signed_body_that_is_not_a_job_event_is_refused() -> None:
    at = datetime.now(UTC)
    body = json.dumps({"hello": "world"})
    headers = {
        "webhook-id": "msg_x",
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature_header([SECRET], "msg_x", at, body),
    }
    with pytest.raises(WebhookVerificationError, match="not a job event"):
        verify_webhook(body, headers, SECRET)


@pytest.mark.parametrize("broken", ["whsec_!!!", "", "whsec_", "whsec_A"])
def test_a_secret_that_cannot_be_used_is_skipped_for_the_others(broken: str) -> None:
    body, headers = signed([SECRET])
    assert verify_webhook(body, headers, [broken, SECRET]).type == "job.succeeded"
    assert verify_webhook(body, headers, [SECRET, broken]).type == "job.succeeded"
    with pytest.raises(WebhookVerificationError, match="No matching signature") as refused:
        verify_webhook(body, headers, [broken, PREVIOUS])  # the usable one decides: not signed with it
    assert not isinstance(refused.value, UnusableWebhookSecret)


def test_only_unusable_secrets_is_a_configuration_error_that_names_no_secret() -> None:
    body, headers = signed([SECRET])
    with pytest.raises(UnusableWebhookSecret, match="no usable secret") as refused:
        verify_webhook(body, headers, ["whsec_!!!", ""])
    assert "!!!" not in str(refused.value)
    with pytest.raises(UnusableWebhookSecret):
        verify_webhook(body, headers, [])
