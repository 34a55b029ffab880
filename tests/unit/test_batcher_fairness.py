"""The batcher's fair choice between tenants (by GPU work, with priority shares) and priority aging within one."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from shared.contracts import GenerationRequest, Priority, pixel_steps
from tests.unit.workerfakes import RecordingQueue, received
from workflows.generation.batcher import AGING_S, Batcher, Pending
from workflows.generation.heldmessages import HeldMessages

SMALL = {"width": 256, "height": 256, "num_inference_steps": 10}
LARGE = {"width": 512, "height": 512, "num_inference_steps": 30}


def request(**fields: Any) -> GenerationRequest:
    return GenerationRequest.model_validate({"prompt": "a fox", "model": "tiny", **fields}, context={"trusted": True})


class Jobs:
    """Jobs of named tenants, numbered in arrival order, queued into one batcher."""

    def __init__(self, max_images: int = 4, max_wait_s: float = 0.5) -> None:
        self.batcher: Batcher[str] = Batcher(max_images=max_images, max_wait_s=max_wait_s)
        self.requests: dict[str, GenerationRequest] = {}
        self.count = 0

    def add(self, tenant: str, at: float, **fields: Any) -> str:
        self.count += 1
        name = f"{tenant}{self.count}"
        req = request(**{**SMALL, **fields})
        self.requests[name] = req
        self.batcher.add(Pending.of(req, tenant=tenant, arrived_at=at, item=name))
        return name

    def work(self, names: list[str]) -> Counter[str]:
        """GPU work per tenant of these jobs."""
        done: Counter[str] = Counter()
        for name in names:
            done[name.rstrip("0123456789")] += pixel_steps(self.requests[name])
        return done


def test_a_tenant_arriving_behind_a_backlog_is_in_the_next_batch() -> None:
    jobs = Jobs(max_images=4)
    backlog = [jobs.add("a", 0.0) for _ in range(16)]
    assert jobs.batcher.take(1.0) == backlog[:4]  # alone, a tenant goes oldest first
    b = jobs.add("b", 1.0)
    nxt = jobs.batcher.take(1.0)
    assert b in nxt  # a full batch: b's job and three of a's older ones
    assert len(nxt) == 4
    assert all(jobs.batcher.take(2.0) for _ in range(3))
    assert len(jobs.batcher) == 0


def test_a_tenant_of_another_shape_leads_the_next_batch() -> None:
    jobs = Jobs(max_images=4, max_wait_s=0.5)
    for _ in range(12):
        jobs.add("a", 0.0)
    jobs.batcher.take(1.0)
    b = jobs.add("b", 1.0, width=320)
    # b's group (one image) is the next batch's: it waits for company up to max_wait_s after b arrived.
    assert jobs.batcher.seconds_until_ready(1.1) == pytest.approx(0.4)
    assert jobs.batcher.take(1.1) == []
    assert jobs.batcher.take(1.5) == [b]


def test_the_gpu_work_is_shared_by_work_not_by_message_count() -> None:
    # "big" sends 4-image 512x512x30 jobs, "small" 1-image 256x256x10 ones (36x less work per message), both
    # backlogged. Over a run, each gets about the same GPU work, so "small" runs far more jobs.
    jobs = Jobs(max_images=4)
    taken: list[str] = []
    now = 0.0
    for _ in range(200):
        for tenant, shape in (("big", {**LARGE, "num_images": 4}), ("small", SMALL)):
            while sum(1 for p in jobs.batcher.items() if p.startswith(tenant)) < 8:
                jobs.add(tenant, now, **shape)
        now += 1.0
        taken += jobs.batcher.take(now)
    work = jobs.work(taken)
    big_job = pixel_steps(request(**LARGE, num_images=4))
    assert abs(work["big"] - work["small"]) <= big_job
    counts = Counter(name.rstrip("0123456789") for name in taken)
    assert counts["small"] > 20 * counts["big"]


def test_priority_shares_split_a_contended_gpu_and_low_is_never_starved() -> None:
    jobs = Jobs(max_images=1)
    taken: list[str] = []
    for step in range(300):
        for tenant, priority in (("hi", Priority.HIGH), ("norm", Priority.NORMAL), ("lo", Priority.LOW)):
            if not any(p.startswith(tenant) for p in jobs.batcher.items()):
                jobs.add(tenant, float(step), priority=priority)
        taken += jobs.batcher.take(float(step))
    counts = Counter(name.rstrip("0123456789") for name in taken)
    for tenant, share in (("hi", 4), ("norm", 2), ("lo", 1)):
        assert abs(counts[tenant] - 300 * share / 7) <= 1, counts  # 4 : 2 : 1 of the 300 batches
    first_low = next(i for i, name in enumerate(taken) if name.startswith("lo"))
    assert first_low < 7  # a low job waits for at most one round of the others' shares


def test_a_tenant_back_from_idle_starts_level_and_banks_no_credit() -> None:
    jobs = Jobs(max_images=1)
    # "a" runs alone for 50 batches; "b" was idle all along, then arrives with a backlog of its own.
    for i in range(50):
        jobs.add("a", float(i))
        assert jobs.batcher.take(float(i)) == [f"a{jobs.count}"]
    for _ in range(20):
        jobs.add("a", 50.0)
        jobs.add("b", 50.0)
    order = [jobs.batcher.take(60.0)[0].rstrip("0123456789") for _ in range(20)]
    assert order[:2] == ["b", "a"]  # b's turn first (a led last), then they alternate: no run of b's
    assert order.count("b") == 10
    assert "bb" not in "".join(order)


def test_a_low_job_ages_past_its_own_tenants_fresh_high_jobs() -> None:
    jobs = Jobs(max_images=1)
    low = jobs.add("t", 0.0, priority=Priority.LOW)
    # Fresh high jobs keep coming; each goes ahead of the waiting low one until it has aged two levels.
    for now in (1.0, AGING_S, 2 * AGING_S - 1):
        fresh = jobs.add("t", now, priority=Priority.HIGH)
        assert jobs.batcher.take(now) == [fresh]
    jobs.add("t", 2 * AGING_S, priority=Priority.HIGH)
    assert jobs.batcher.take(2 * AGING_S) == [low]  # level with high now, and older


def test_batches_group_only_compatible_jobs_whatever_the_tenant_or_priority() -> None:
    jobs = Jobs(max_images=4)
    shapes: list[dict[str, Any]] = [
        SMALL,
        {**SMALL, "width": 320},
        {**SMALL, "num_inference_steps": 12},
        {**SMALL, "scheduler": "ddim"},
    ]
    for i in range(40):
        jobs.add(f"t{i % 3}x", float(i) / 10, priority=list(Priority)[i % 3], **shapes[i % 4])
    while len(jobs.batcher):
        batch = jobs.batcher.take(100.0)
        assert batch
        assert len({jobs.requests[name].batch_key() for name in batch}) == 1


def test_held_messages_queue_each_job_under_its_tenant_and_priority() -> None:
    held = HeldMessages(RecordingQueue(), max_batch_images=2, max_batch_wait_s=60.0)
    held.accept([received(tenant="a") for _ in range(6)])
    assert {h.tenant for h in held.next_batch()} == {"a"}
    held.accept([received(tenant="b", priority="low"), received(tenant="b")])
    # b has had no GPU work: both its jobs go before a's older ones, its normal job first.
    assert [(h.tenant, h.request.priority) for h in held.next_batch()] == [("b", Priority.NORMAL), ("b", Priority.LOW)]
    assert {h.tenant for h in held.take_waiting()} == {"a"}
