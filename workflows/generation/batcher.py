"""SD-aware batching: group compatible jobs (same model, size, steps, guidance, scheduler) into one call.

A batch is released when its group holds ``max_images`` images (counting each job's ``num_images``), or
``max_wait_s`` after the group's oldest job arrived, whichever comes first. Groups are served oldest first,
so no shape starves. A job that does not fit the remaining room waits for the next batch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Pending(Generic[T]):
    """One waiting job: its batch key, how many images it needs and when it arrived."""

    key: Hashable
    images: int
    arrived_at: float
    item: T


@dataclass
class Batcher(Generic[T]):
    max_images: int
    max_wait_s: float
    _pending: list[Pending[T]] = field(default_factory=list)

    def add(self, pending: Pending[T]) -> None:
        """Queue a job. One bigger than ``max_images`` still runs, alone: the limit groups, it does not admit."""
        self._pending.append(pending)

    def __len__(self) -> int:
        return len(self._pending)

    def items(self) -> list[T]:
        return [p.item for p in self._pending]

    def images_waiting(self) -> int:
        return sum(p.images for p in self._pending)

    def _oldest_group(self) -> list[Pending[T]]:
        if not self._pending:
            return []
        oldest = min(self._pending, key=lambda p: p.arrived_at)
        return sorted((p for p in self._pending if p.key == oldest.key), key=lambda p: p.arrived_at)

    def _fill(self, group: list[Pending[T]]) -> list[Pending[T]]:
        chosen: list[Pending[T]] = []
        room = self.max_images
        for p in group:
            if not chosen and p.images >= room:
                return [p]
            if p.images <= room:
                chosen.append(p)
                room -= p.images
            if room == 0:
                break
        return chosen

    def seconds_until_ready(self, now: float) -> float | None:
        """0 when a batch can be taken now, None when nothing waits, else how long until the oldest times out."""
        group = self._oldest_group()
        if not group:
            return None
        if sum(p.images for p in group) >= self.max_images:
            return 0.0
        return max(0.0, group[0].arrived_at + self.max_wait_s - now)

    def take(self, now: float, *, force: bool = False) -> list[T]:
        """Remove and return the next batch if it is ready (or ``force``), else an empty list."""
        wait = self.seconds_until_ready(now)
        if wait is None or (wait > 0 and not force):
            return []
        chosen = self._fill(self._oldest_group())
        ids = {id(p) for p in chosen}
        self._pending = [p for p in self._pending if id(p) not in ids]
        return [p.item for p in chosen]

    def remove(self, predicate: Callable[[T], bool]) -> list[T]:
        """Drop and return items for which ``predicate(item)`` is true."""
        kept: list[Pending[T]] = []
        dropped: list[Pending[T]] = []
        for p in self._pending:
            (dropped if predicate(p.item) else kept).append(p)
        self._pending = kept
        return [p.item for p in dropped]

    def drain(self) -> list[T]:
        items = [p.item for p in self._pending]
        self._pending = []
        return items
