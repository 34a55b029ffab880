"""SD-aware batching, fair between tenants: group compatible jobs (same model, size, steps, guidance, scheduler)
into one call, and choose whose work goes next by the GPU work each tenant has had.

Whose turn. Each tenant with jobs waiting has a work counter: the GPU work (:func:`pixel_steps`: width x height x
steps x images) of its jobs batched so far, scaled by each job's priority share (``low`` 1, ``normal`` 2, ``high``
4): a ``high`` job counts half its work, a ``low`` one twice. The next batch is led by the tenant with the lowest
counter (ties: the one waiting longest), so under a backlog each tenant gets GPU work in proportion to its jobs'
shares, whatever the number or size of its messages, and none starves: a waiting tenant's counter stands still
while the others' grow. A tenant that starts waiting again starts level with the last batch's leader, so idle time
banks no credit. Within a tenant, jobs go by priority, oldest first; a waiting job rises one level every
``AGING_S`` seconds, so a tenant's own ``high`` jobs cannot hold its ``low`` ones back for ever.

Forming the batch. The leading job's batch key picks the group; the rest of the batch is filled from that group's
jobs of every tenant, lowest counter first. A batch is released when its group holds ``max_images`` images
(counting each job's ``num_images``), or ``max_wait_s`` after the group's oldest job arrived, whichever comes
first. A job that does not fit the remaining room waits for the next batch; one bigger than ``max_images`` runs
alone. Priority and tenant never enter the batch key: a batch only ever groups compatible jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from shared.contracts import GenerationRequest, Priority, pixel_steps

T = TypeVar("T")

# How long a waiting job takes to rise one priority level among its own tenant's jobs.
AGING_S = 30.0


def share(priority: Priority) -> int:
    """A priority's share of the GPU against other tenants' backlogs: low 1, normal 2, high 4."""
    return 2**priority.rank


@dataclass
class Pending(Generic[T]):
    """One waiting job: its batch key, how many images it needs, when it arrived, and whose work it is."""

    key: Hashable
    images: int
    arrived_at: float
    item: T
    tenant: str = ""
    priority: Priority = Priority.NORMAL
    work: int = 1  # GPU work: pixel_steps of the request

    @classmethod
    def of(cls, request: GenerationRequest, *, tenant: str, arrived_at: float, item: T) -> Pending[T]:
        """A job as the worker queues it: its key, images, GPU work and priority from its request."""
        return cls(
            key=request.batch_key(),
            images=request.num_images,
            arrived_at=arrived_at,
            item=item,
            tenant=tenant,
            priority=request.priority,
            work=pixel_steps(request),
        )

    @property
    def charge(self) -> float:
        """What running it adds to its tenant's work counter: its work, scaled by its priority's share."""
        return self.work * share(Priority.NORMAL) / share(self.priority)

    def rank(self, now: float) -> int:
        """Its place among its tenant's jobs: the priority's rank plus one level per ``AGING_S`` waited."""
        return self.priority.rank + int(max(0.0, now - self.arrived_at) // AGING_S)


@dataclass
class Batcher(Generic[T]):
    max_images: int
    max_wait_s: float
    _pending: list[Pending[T]] = field(default_factory=list)
    _served: dict[str, float] = field(default_factory=dict)  # tenant -> work counter (see the module docstring)
    _level: float = 0.0  # the last leader's counter when it led: where a tenant that starts waiting begins

    def add(self, pending: Pending[T]) -> None:
        """Queue a job. One bigger than ``max_images`` still runs, alone: the limit groups, it does not admit."""
        if not any(p.tenant == pending.tenant for p in self._pending):
            self._served[pending.tenant] = max(self._served.get(pending.tenant, 0.0), self._level)
        self._pending.append(pending)

    def __len__(self) -> int:
        return len(self._pending)

    def items(self) -> list[T]:
        return [p.item for p in self._pending]

    def images_waiting(self) -> int:
        return sum(p.images for p in self._pending)

    # -- the fair choice ---------------------------------------------------------------------------

    def _by_tenant(self, pending: list[Pending[T]], now: float) -> dict[str, list[Pending[T]]]:
        """Each tenant's jobs in its own order: highest rank (priority with aging) first, then oldest."""
        queues: dict[str, list[Pending[T]]] = {}
        for p in sorted(pending, key=lambda p: (-p.rank(now), p.arrived_at)):
            queues.setdefault(p.tenant, []).append(p)
        return queues

    @staticmethod
    def _next_tenant(queues: dict[str, list[Pending[T]]], served: dict[str, float]) -> str:
        """The tenant whose turn it is: lowest work counter, then the one whose oldest job has waited longest."""
        return min(queues, key=lambda t: (served.get(t, 0.0), min(p.arrived_at for p in queues[t])))

    def _lead(self, now: float) -> Pending[T] | None:
        if not self._pending:
            return None
        queues = self._by_tenant(self._pending, now)
        return queues[self._next_tenant(queues, self._served)][0]

    def _group(self, lead: Pending[T]) -> list[Pending[T]]:
        return [p for p in self._pending if p.key == lead.key]

    def _fill(self, lead: Pending[T], now: float) -> list[Pending[T]]:
        """The lead, then compatible jobs of every tenant, lowest counter first, while they fit."""
        room = self.max_images
        if lead.images >= room:
            return [lead]
        chosen = [lead]
        room -= lead.images
        counters = dict(self._served)
        counters[lead.tenant] = counters.get(lead.tenant, 0.0) + lead.charge
        queues = self._by_tenant([p for p in self._group(lead) if p is not lead], now)
        while room > 0 and queues:
            tenant = self._next_tenant(queues, counters)
            fitting = next((p for p in queues[tenant] if p.images <= room), None)
            if fitting is None:
                del queues[tenant]
                continue
            chosen.append(fitting)
            room -= fitting.images
            counters[tenant] = counters.get(tenant, 0.0) + fitting.charge
            queues[tenant].remove(fitting)
            if not queues[tenant]:
                del queues[tenant]
        return chosen

    def seconds_until_ready(self, now: float) -> float | None:
        """0 when a batch can be taken now, None when nothing waits, else how long until the leading group's
        oldest job times out."""
        lead = self._lead(now)
        if lead is None:
            return None
        group = self._group(lead)
        if sum(p.images for p in group) >= self.max_images:
            return 0.0
        return max(0.0, min(p.arrived_at for p in group) + self.max_wait_s - now)

    def take(self, now: float, *, force: bool = False) -> list[T]:
        """Remove and return the next batch if it is ready (or ``force``), else an empty list; counts its work
        against each of its tenants."""
        wait = self.seconds_until_ready(now)
        if wait is None or (wait > 0 and not force):
            return []
        lead = self._lead(now)
        assert lead is not None  # something waits: seconds_until_ready said so
        chosen = self._fill(lead, now)
        self._level = max(self._level, self._served.get(lead.tenant, 0.0))
        for p in chosen:
            self._served[p.tenant] = self._served.get(p.tenant, 0.0) + p.charge
        ids = {id(p) for p in chosen}
        self._pending = [p for p in self._pending if id(p) not in ids]
        self._forget_idle()
        return [p.item for p in chosen]

    def _forget_idle(self) -> None:
        """Drop the counters of tenants with nothing waiting that would start level anyway."""
        waiting = {p.tenant for p in self._pending}
        self._served = {t: s for t, s in self._served.items() if t in waiting or s > self._level}

    # -- leaving the waiting room --------------------------------------------------------------------

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
