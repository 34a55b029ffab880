"""The receiver thread: long-polls the queue into the held messages, holding back while enough work waits and
backing off while the queue cannot be reached."""

from __future__ import annotations

import random
import threading
import time

from aws_lambda_powertools import Logger

from workflows.generation.heldmessages import AwsError, HeldMessages

logger = Logger(service="sdq-worker")


class Receiver:
    def __init__(
        self,
        held: HeldMessages,
        stopping: threading.Event,
        *,
        backlog_images: int,
        receive_wait_s: int,
        visibility_s: int,
    ) -> None:
        self._held = held
        self._stopping = stopping
        self._backlog_images = backlog_images  # images waiting at which the receiver stops asking for more
        self._receive_wait_s = receive_wait_s
        self._visibility_s = visibility_s
        self._images_per_job = 1.0  # what the last receive's jobs averaged: the estimate while none wait

    def _asked(self, jobs: int, images: int) -> int:
        """How many messages the next receive asks for: as many as the window has room for at what a job weighs
        now (the average of the jobs waiting, else of the last receive's), from 1 to SQS's 10. A message's images
        are known only once received, so a receive can still overfill the window by a job's worth or so."""
        per_job = images / jobs if jobs else self._images_per_job
        return max(1, min(10, int((self._backlog_images - images) / per_job)))

    def run(self) -> None:
        """Receive until a stop is requested (the thread's target)."""
        backoff = 0.5
        outage_since: float | None = None
        failures = 0
        while not self._stopping.is_set():
            jobs, images = self._held.waiting()
            if images >= self._backlog_images:
                # Enough work on hand: leave the rest in the queue for other workers.
                time.sleep(0.05)
                continue
            try:
                # No more messages than there is room for: a receive that overfills the window would leave the next
                # batch's room closed, and a newly arrived tenant's message (which a fair queue hands out first)
                # would wait in the queue for another batch.
                received = self._held.queue.receive(
                    max_messages=self._asked(jobs, images),
                    wait_s=self._receive_wait_s,
                    visibility_s=self._visibility_s,
                )
                backoff = 0.5
            except AwsError as exc:
                # The queue (or the local cloud behind it) is unreachable: back off exponentially with
                # jitter, up to 30 s, and keep everything held; the heartbeat keeps trying on its own.
                outage_since = outage_since if outage_since is not None else time.monotonic()
                failures += 1
                delay = backoff * random.uniform(0.5, 1.0)
                logger.warning("receive failed; retrying", error=str(exc), retry_in_s=round(delay, 2))
                self._stopping.wait(delay)
                backoff = min(backoff * 2, 30.0)
                continue
            if outage_since is not None:
                logger.info(
                    "queue reachable again; resuming",
                    outage_s=round(time.monotonic() - outage_since, 1),
                    failed_receives=failures,
                )
                outage_since, failures = None, 0
            if self._stopping.is_set():
                self._held.set_visibility(received, 0)
                return
            sizes = [r.message.request.num_images for r in received if r.message is not None]
            if sizes:
                self._images_per_job = sum(sizes) / len(sizes)
            self._held.accept(received)
