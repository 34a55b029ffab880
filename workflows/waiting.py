"""Holding an answer until a job finishes (``Prefer: wait``): re-read the job with backoff until it is terminal
or the wait is over.

The wait holds nothing but the request itself: no worker, no queue message, no lock. Its cost is the caller's
time (on AWS, the API function's billed duration) and a bounded number of strongly consistent reads of one item
(:func:`max_reads`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.contracts import Job

# API Gateway gives up on an integration after 29 s; a wait of at most 25 s leaves room for the request's own
# work (a submit's writes and send) and the answer.
MAX_WAIT_S = 25


@dataclass(frozen=True)
class Backoff:
    """The pause before each re-read: ``first_s``, then times ``factor`` per read, never more than ``max_s``."""

    first_s: float = 0.25
    factor: float = 2.0
    max_s: float = 1.0

    def delays(self) -> Callable[[], float]:
        """A fresh schedule: each call returns the next pause."""
        current = self.first_s

        def step() -> float:
            nonlocal current
            pause, current = current, min(current * self.factor, self.max_s)
            return pause

        return step


@dataclass(frozen=True)
class Waited:
    """The job as it stood when the wait ended, and what the wait cost."""

    job: Job
    reads: int
    waited_s: float

    @property
    def finished(self) -> bool:
        return self.job.status.terminal


def wait_until_finished(
    job: Job,
    read: Callable[[], Job],
    *,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    backoff: Backoff = Backoff(),
) -> Waited:
    """Re-read ``job`` (through ``read``) until it is terminal or ``clock()`` reaches ``deadline``.

    A job that is already terminal, or a deadline already passed, costs no read. The last pause is cut to the
    deadline and followed by one more read, so the answer is the job as it stood when the wait ran out. Raises
    whatever ``read`` raises (JobNotFound when the job passed its retention meanwhile).
    """
    started = clock()
    next_pause = backoff.delays()
    reads = 0
    while not job.status.terminal:
        remaining = deadline - clock()
        if remaining <= 0:
            break
        sleep(min(next_pause(), remaining))
        job = read()
        reads += 1
    return Waited(job=job, reads=reads, waited_s=max(0.0, clock() - started))


def max_reads(wait_s: float, backoff: Backoff = Backoff()) -> int:
    """The most reads a wait of ``wait_s`` seconds makes (each pause is followed by one read)."""
    next_pause = backoff.delays()
    elapsed, reads = 0.0, 0
    while elapsed < wait_s:
        elapsed += next_pause()
        reads += 1
    return reads
