"""The batcher's grouping and limits."""

from __future__ import annotations

from workflows.generation.batcher import Batcher, Pending

A = ("tiny", 512, 512, 30, 7.5, "euler_a")
B = ("tiny", 256, 256, 30, 7.5, "euler_a")


def make(max_images: int = 4, max_wait_s: float = 0.5) -> Batcher[str]:
    return Batcher(max_images=max_images, max_wait_s=max_wait_s)


def test_nothing_waiting_means_no_batch() -> None:
    b = make()
    assert b.seconds_until_ready(0.0) is None
    assert b.take(0.0) == []


def test_full_group_is_released_at_once() -> None:
    b = make(max_images=4)
    for i in range(4):
        b.add(Pending(A, 1, float(i) / 100, f"a{i}"))
    assert b.seconds_until_ready(0.05) == 0.0
    assert b.take(0.05) == ["a0", "a1", "a2", "a3"]
    assert len(b) == 0


def test_partial_group_waits_until_max_wait_after_oldest() -> None:
    b = make(max_images=8, max_wait_s=0.5)
    b.add(Pending(A, 1, 10.0, "a0"))
    b.add(Pending(A, 1, 10.3, "a1"))
    assert b.take(10.4) == []
    assert abs((b.seconds_until_ready(10.4) or 0) - 0.1) < 1e-9
    assert b.take(10.5) == ["a0", "a1"]


def test_incompatible_jobs_never_share_a_batch_and_oldest_group_goes_first() -> None:
    b = make(max_images=4)
    b.add(Pending(B, 1, 1.0, "b0"))
    b.add(Pending(A, 1, 2.0, "a0"))
    b.add(Pending(B, 1, 3.0, "b1"))
    b.add(Pending(A, 1, 4.0, "a1"))
    assert b.take(100.0) == ["b0", "b1"]
    assert b.take(100.0) == ["a0", "a1"]


def test_image_counts_cap_the_batch_and_what_does_not_fit_waits() -> None:
    b = make(max_images=4)
    b.add(Pending(A, 2, 1.0, "two"))
    b.add(Pending(A, 3, 2.0, "three"))
    b.add(Pending(A, 2, 3.0, "two-b"))
    assert b.take(1.1) == ["two", "two-b"]  # 2 + 2 = 4 images; the 3-image job waits
    assert b.take(100.0) == ["three"]


def test_job_larger_than_limit_runs_alone() -> None:
    b = make(max_images=2)
    b.add(Pending(A, 4, 1.0, "big"))
    b.add(Pending(A, 1, 1.5, "small"))
    assert b.take(1.6) == ["big"]
    assert b.take(100.0) == ["small"]


def test_force_takes_a_partial_batch_and_drain_empties() -> None:
    b = make(max_images=8, max_wait_s=60)
    b.add(Pending(A, 1, 0.0, "a0"))
    assert b.take(0.1) == []
    assert b.take(0.1, force=True) == ["a0"]
    b.add(Pending(B, 1, 0.0, "b0"))
    b.add(Pending(A, 1, 0.0, "a1"))
    assert sorted(b.drain()) == ["a1", "b0"]
    assert len(b) == 0


def test_remove_drops_matching_items() -> None:
    b = make()
    for name in ["x1", "y1", "x2"]:
        b.add(Pending(A, 1, 0.0, name))
    assert b.remove(lambda item: item.startswith("x")) == ["x1", "x2"]
    assert b.items() == ["y1"]
