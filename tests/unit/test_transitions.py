"""The status machine: every (from, to) pair is either legal or refused, and terminal states never move."""

from __future__ import annotations

import itertools

import pytest

from shared.contracts import TERMINAL, TRANSITIONS, JobStatus, allowed_sources

LEGAL = {
    (JobStatus.QUEUED, JobStatus.RUNNING),
    (JobStatus.QUEUED, JobStatus.CANCELLED),
    (JobStatus.QUEUED, JobStatus.FAILED),
    (JobStatus.RUNNING, JobStatus.POSTPROCESSING),
    (JobStatus.RUNNING, JobStatus.SUCCEEDED),
    (JobStatus.RUNNING, JobStatus.FAILED),
    (JobStatus.RUNNING, JobStatus.CANCELLED),
    (JobStatus.POSTPROCESSING, JobStatus.SUCCEEDED),
    (JobStatus.POSTPROCESSING, JobStatus.FAILED),
    (JobStatus.POSTPROCESSING, JobStatus.CANCELLED),
}


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(JobStatus, JobStatus)))
def test_every_pair(src: JobStatus, dst: JobStatus) -> None:
    assert (dst in TRANSITIONS[src]) == ((src, dst) in LEGAL)
    assert (src in allowed_sources(dst)) == ((src, dst) in LEGAL)


def test_terminal_states_never_change() -> None:
    assert {s for s in JobStatus if s.terminal} == set(TERMINAL)
    for status in TERMINAL:
        assert not TRANSITIONS[status]


def test_cancel_is_reachable_from_every_non_terminal_state() -> None:
    assert allowed_sources(JobStatus.CANCELLED) == {s for s in JobStatus if not s.terminal}
