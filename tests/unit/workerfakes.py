"""Held messages and a recording queue for the worker loop's unit tests (no SQS behind it)."""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import EndpointConnectionError
from ulid import ULID

from shared.contracts import GenerationRequest, Job, JobStatus, QueueMessage, utcnow
from shared.queue import Received, WorkerQueue
from workflows.generation.heldmessages import Held


def received(
    job_id: str | None = None, *, tenant: str = "t-1", receipt: str = "r-1", message_id: str | None = None, **req: Any
) -> Received:
    """One received job message; ``req`` overrides the request's fields (256x256, 2 steps by default)."""
    request = GenerationRequest.model_validate(
        {"prompt": "a fox", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 1, **req},
        context={"trusted": True},
    )
    message = QueueMessage(job_id=job_id or str(ULID()), tenant=tenant, request=request, enqueued_at=utcnow())
    return Received(
        message_id=message_id or f"m-{message.job_id}",
        receipt_handle=receipt,
        body=message.model_dump_json(),
        receive_count=1,
        message=message,
    )


def poison(message_id: str = "m-poison") -> Received:
    return Received(message_id=message_id, receipt_handle="r-p", body="not json", receive_count=1, message=None)


def held(job_id: str | None = None, **req: Any) -> Held:
    r = received(job_id, **req)
    assert r.message is not None
    return Held(received=r, message=r.message, arrived=0.0)


def claimed(h: Held, attempt: int = 1) -> Held:
    """``h`` as the worker holds it once its claim was won."""
    h.job = Job(
        job_id=h.job_id,
        tenant=h.tenant,
        status=JobStatus.RUNNING,
        request=h.request,
        created_at=utcnow(),
        attempt=attempt,
        cache_key=h.request.cache_key(),
        expires_at=int(time.time()) + 3600,
    )
    h.claimed_at = time.monotonic()
    return h


class RecordingQueue(WorkerQueue):
    """Records every visibility change and delete (by message id), refusing the ids in ``refuse``; ``down`` makes
    every call fail the way an unreachable endpoint does."""

    def __init__(self) -> None:
        super().__init__(None, "https://sqs.invalid/queue")  # type: ignore[arg-type]
        self.visibility: list[tuple[str, int]] = []
        self.deleted: list[str] = []
        self.refuse: set[str] = set()
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise EndpointConnectionError(endpoint_url=self.url)

    def set_visibility(self, messages: list[Received], visibility_s: int) -> list[str]:
        self._check()
        self.visibility += [(m.message_id, visibility_s) for m in messages]
        return [m.message_id for m in messages if m.message_id in self.refuse]

    def delete(self, messages: list[Received]) -> list[str]:
        self._check()
        self.deleted += [m.message_id for m in messages if m.message_id not in self.refuse]
        return [m.message_id for m in messages if m.message_id in self.refuse]
