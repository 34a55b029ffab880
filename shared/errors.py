"""Typed errors. Callers branch on the class, never on message text.

``ServiceError`` subclasses carry the HTTP status and the stable error ``code`` the API returns as
``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An error with a stable code and an HTTP status; ``details`` is safe to show to the caller."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class BadRequest(ServiceError):
    status = 400
    code = "bad_request"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"

    def __init__(self) -> None:
        # One message for missing, wrong and revoked keys: the caller learns nothing about which.
        super().__init__("Send a valid API key in the x-api-key header.")


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class JobNotFound(NotFound):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"Job {job_id!r} was not found.")
        self.job_id = job_id


class JobExpired(JobNotFound):
    """The job passed its retention (``expires_at``) before it finished; to clients it no longer exists.
    ``past``: False when its retention has not ended yet but is too short for a run (a claim's margin): then a
    worker that holds it under a live lease keeps it."""

    def __init__(self, job_id: str, *, past: bool = True) -> None:
        super().__init__(job_id)
        self.past = past


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class WebhookDeliveryInProgress(Conflict):
    """A redelivery asked for while the job's webhook is still being retried on its schedule."""

    code = "webhook_delivery_in_progress"

    def __init__(self, next_attempt_at: str) -> None:
        super().__init__(
            "The job's webhook is still being delivered: its next attempt is due at"
            f" {next_attempt_at}. Redeliver it once it is delivered or has failed.",
            details={"state": "retrying", "next_attempt_at": next_attempt_at},
        )


class TenantExists(Conflict):
    """``sdq admin tenants create`` for a tenant that is registered already."""


class TenantNotFound(NotFound):
    """An operator named a tenant that is not registered."""


class IdempotencyConflict(Conflict):
    code = "idempotency_key_reused"

    def __init__(self) -> None:
        super().__init__("This Idempotency-Key was already used with a different request body.")


class IdempotencyKeyInUse(Conflict):
    """Another request with the same Idempotency-Key is still in progress: its job was still being written after the
    retries, or is written and not yet sent to the queue (that request may yet fail it and free the key). Retry it,
    after ``retry_after_s`` seconds when given (the answer's ``Retry-After``)."""

    code = "idempotency_key_in_use"

    def __init__(self, *, retry_after_s: int | None = None) -> None:
        super().__init__("A request with this Idempotency-Key is in progress; retry it in a moment.")
        self.retry_after_s = retry_after_s


class InvalidTransition(Conflict):
    """A status change the job's state machine does not allow (e.g. cancelling a finished job)."""

    code = "invalid_transition"

    def __init__(self, job_id: str, current: str, target: str) -> None:
        super().__init__(
            f"Job {job_id} is {current}; it cannot become {target}.",
            details={"status": current, "requested": target},
        )
        self.job_id = job_id
        self.current = current
        self.target = target


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class ValidationFailed(ServiceError):
    status = 422
    code = "validation_error"


class InvalidTenantId(ValidationFailed):
    """A tenant id outside the allowed characters."""


class PriorityNotAllowed(ValidationFailed):
    """A job's ``priority`` above its tenant's plan allows: a 422 on that field."""

    def __init__(self, asked: str, ceiling: str) -> None:
        message = f"Your plan allows priority {ceiling} at most; this job asks for {asked}."
        super().__init__(
            message, details=[{"loc": ["body", "priority"], "msg": message, "type": "priority_not_allowed"}]
        )


class TooManyRequests(ServiceError):
    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, details={"retry_after_seconds": retry_after_s})
        self.retry_after_s = retry_after_s


class EnqueueFailed(ServiceError):
    """The job was recorded but could not be queued; it has been marked FAILED."""

    status = 503
    code = "enqueue_failed"


class InvalidCursor(ValueError):
    """A listing cursor this service did not make for this listing (garbled, another tenant's or index's)."""


class RetryableError(Exception):
    """A transient failure: the same work may succeed if tried again."""


class PermanentError(Exception):
    """A failure that retrying will not fix."""
