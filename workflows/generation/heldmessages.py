"""The job messages a worker holds: waiting to form a batch or at work, until deleted or let go.

One lock (a condition, so the GPU thread can wait for a batch) guards the held records and the batcher's waiting
room together: a message is registered and queued for a batch in one step. No SQS call is made under the lock,
so a slow call never holds up the receiver, claims or a stop.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError

from shared.contracts import GenerationRequest, Job, QueueMessage
from shared.queue import Received, WorkerQueue
from workflows.generation.batcher import Batcher, Pending

logger = Logger(service="sdq-worker")

AwsError = (ClientError, BotoCoreError)

# The longest a worker keeps renewing a job's lease: SQS's own limit on keeping a message invisible. A call that
# hangs (a wedged GPU) must not lock its jobs for as long as the process lives.
MAX_LEASE_HOLD_S = 12 * 3600.0


@dataclass
class Held:
    """A received job message the worker is responsible for until it is deleted or released."""

    received: Received
    message: QueueMessage
    arrived: float  # monotonic time the worker received the message
    job: Job | None = None
    dropped: bool = False
    let_go_visibility: int | None = None  # set once the worker lets the message go: the visibility it set
    # Monotonic times of the job's stages here (its worker segment records them: workflows/generation/handoff.py):
    claiming_at: float | None = None  # its batch's claims began
    claimed_at: float | None = None  # this worker's claim was won
    generating_at: float | None = None  # its batch's run began (its inputs read, then its pipeline calls)
    generated_at: float | None = None  # the last pipeline call it was in ended

    @property
    def job_id(self) -> str:
        return self.message.job_id

    @property
    def tenant(self) -> str:
        return self.message.tenant

    @property
    def request(self) -> GenerationRequest:
        return self.message.request

    def stages(self) -> list[tuple[str, float, float]]:
        """The job's stages here that have ended, as (name, start, end) in monotonic time: ``batching`` (waiting for
        its batch to form), ``claim``, ``gpu-wait`` (claimed ahead, while the batch before it ran), ``generate``."""
        stages = [
            ("batching", self.arrived, self.claiming_at),
            ("claim", self.claiming_at, self.claimed_at),
            ("gpu-wait", self.claimed_at, self.generating_at),
            ("generate", self.generating_at, self.generated_at),
        ]
        return [(name, start, end) for name, start, end in stages if start is not None and end is not None]

    def renewable(self) -> bool:
        """Whether the heartbeat renews this job's lease: claimed here, not dropped or let go, not held too long."""
        return (
            self.job is not None
            and self.claimed_at is not None
            and not self.dropped
            and self.let_go_visibility is None
            and time.monotonic() - self.claimed_at < MAX_LEASE_HOLD_S
        )


class HeldMessages:
    """The held records (by message id), the batcher they wait in, and their messages' visibility and deletion."""

    def __init__(self, queue: WorkerQueue, *, max_batch_images: int, max_batch_wait_s: float) -> None:
        self.queue = queue
        self._batcher: Batcher[Held] = Batcher(max_batch_images, max_batch_wait_s)
        self._held: dict[str, Held] = {}  # message id -> held
        self._lock = threading.Condition()  # reentrant: let_go forgets under the lock it holds

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    # -- arrivals and batches ------------------------------------------------------------------------

    def accept(self, received: list[Received]) -> None:
        """Hold what a receive returned and queue it for a batch; a poison message goes back at once."""
        poison = [r for r in received if r.message is None]
        if poison:
            # Release at once: the redrive policy moves it to the DLQ after maxReceiveCount receives,
            # where the DLQ handler fails its job.
            logger.error("unparseable message left for the DLQ", message_ids=[r.message_id for r in poison])
            self.set_visibility(poison, 0)
        now = time.monotonic()
        with self._lock:
            for r in received:
                if r.message is None:
                    continue
                if r.message_id in self._held:
                    # Received again while held (its visibility lapsed): SQS honours only the newest receipt
                    # handle, so the heartbeat and the final delete use that one from now on.
                    self._held[r.message_id].received = r
                    continue
                held = Held(received=r, message=r.message, arrived=now)
                self._held[r.message_id] = held
                self._batcher.add(Pending.of(r.message.request, tenant=r.message.tenant, arrived_at=now, item=held))
            self._lock.notify_all()

    def images_waiting(self) -> int:
        with self._lock:
            return self._batcher.images_waiting()

    def waiting(self) -> tuple[int, int]:
        """The jobs and the images waiting to form a batch, read together."""
        with self._lock:
            return len(self._batcher), self._batcher.images_waiting()

    def next_batch(self) -> list[Held]:
        """The next ready batch, or [] after waiting (at most a second) for one to become ready or a wake-up."""
        with self._lock:
            wait = self._batcher.seconds_until_ready(time.monotonic())
            if wait is None or wait > 0:
                self._lock.wait(timeout=min(wait if wait is not None else 1.0, 1.0))
                return []
            return self._batcher.take(time.monotonic())

    def ready_batch(self) -> list[Held]:
        """The next batch if one is ready now, else [] (no waiting)."""
        with self._lock:
            return self._batcher.take(time.monotonic())

    def take_waiting(self) -> list[Held]:
        """Every message still waiting to form a batch, out of the batcher (still held)."""
        with self._lock:
            return self._batcher.drain()

    def wake(self) -> None:
        """Wake a thread waiting in ``next_batch`` (a stop was requested)."""
        with self._lock:
            self._lock.notify_all()

    # -- the heartbeat's view ------------------------------------------------------------------------

    def snapshot(self) -> tuple[list[Held], list[Held]]:
        """Every held message, and those whose lease the heartbeat renews, read together."""
        with self._lock:
            held = list(self._held.values())
            return held, [h for h in held if h.renewable()]

    def still_renewable(self, held: Held) -> bool:
        """False once ``held`` was let go, finished or dropped (since a snapshot was taken)."""
        with self._lock:
            return self._held.get(held.received.message_id) is held and held.renewable()

    def let_go_among(self, held: list[Held]) -> list[Held]:
        with self._lock:
            return [h for h in held if h.let_go_visibility is not None]

    # -- letting go ------------------------------------------------------------------------------------

    def let_go(self, jobs: list[Held], visibility_s: int) -> list[str]:
        """Stop holding these messages and set their visibility (0: visible now; the heartbeat re-applies it if
        its own extension crossed this); returns the ids SQS refused."""
        with self._lock:
            for held in jobs:
                held.let_go_visibility = visibility_s
                self.forget(held)  # the lock is reentrant
        return self.set_visibility([h.received for h in jobs], visibility_s)

    def let_go_all(self) -> None:
        """Let every held message go, visible now (a stop: another worker takes over once the lease lapses)."""
        with self._lock:
            leftover = list(self._held.values())
            self._held.clear()
        self.let_go(leftover, 0)

    def forget(self, held: Held) -> None:
        """Stop holding ``held`` and leave its message as it is (it reappears when its visibility ends)."""
        with self._lock:
            self._held.pop(held.received.message_id, None)

    def finish(self, held: Held) -> None:
        """Stop holding ``held`` and delete its message: its job needs nothing more from any worker."""
        self.forget(held)
        try:
            failed = self.queue.delete([held.received])
        except AwsError as exc:
            failed = [held.received.message_id]
            logger.warning("delete failed", job_id=held.job_id, error=str(exc))
        if failed:
            # Harmless: the message comes back and its job is no longer claimable, so it is a no-op then.
            logger.warning("message not deleted; its redelivery will be a no-op", job_id=held.job_id)

    def set_visibility(self, messages: list[Received], visibility_s: int) -> list[str]:
        """Set the messages' visibility; returns the ids refused (all of them when SQS cannot be reached)."""
        if not messages:
            return []
        try:
            return self.queue.set_visibility(messages, visibility_s)
        except AwsError as exc:
            logger.warning("visibility change failed", error=str(exc), messages=len(messages))
            return [m.message_id for m in messages]
