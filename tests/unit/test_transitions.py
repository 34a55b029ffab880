"""The status machine: every (from, to) pair is either legal or refused, and terminal states never move; the
worker's own claim writes (a hand-back, a takeover) make only moves the table lists."""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

import pytest

from shared.contracts import TERMINAL, TRANSITIONS, JobStatus, allowed_sources
from shared.jobs import JobsRepository
from tests.unit.conftest import JOBS_TABLE, make_job

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

LEGAL = {
    (JobStatus.QUEUED, JobStatus.RUNNING),
    (JobStatus.QUEUED, JobStatus.CANCELLED),
    (JobStatus.QUEUED, JobStatus.FAILED),
    (JobStatus.RUNNING, JobStatus.QUEUED),  # a claim handed back unstarted (release_claim)
    (JobStatus.RUNNING, JobStatus.RUNNING),  # a takeover once the lease lapsed (claim)
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


def test_the_workers_claim_writes_make_only_legal_moves(jobs_table: DynamoDBClient) -> None:
    repo = JobsRepository(jobs_table, JOBS_TABLE)
    job = make_job()
    repo.create(job)
    moves: list[tuple[JobStatus, JobStatus]] = []
    now = time.time()
    claimed = repo.claim(job.job_id, job.tenant, worker_id="w-1", lease_s=60, now=now)
    moves.append((JobStatus.QUEUED, claimed.status))
    # A warm stop hands back the batch it claimed ahead: RUNNING -> QUEUED.
    before = repo.get(job.job_id).status
    assert repo.release_claim(job.job_id, job.tenant, worker_id="w-1", attempt=claimed.attempt)
    moves.append((before, repo.get(job.job_id).status))
    # A worker dies holding the job; another takes it over once the lease lapses: RUNNING -> RUNNING.
    repo.claim(job.job_id, job.tenant, worker_id="w-1", lease_s=1, now=now)
    before = repo.get(job.job_id).status
    taken = repo.claim(job.job_id, job.tenant, worker_id="w-2", lease_s=60, now=now + 5)
    moves.append((before, taken.status))
    assert moves == [
        (JobStatus.QUEUED, JobStatus.RUNNING),
        (JobStatus.RUNNING, JobStatus.QUEUED),
        (JobStatus.RUNNING, JobStatus.RUNNING),
    ]
    for src, dst in moves:
        assert dst in TRANSITIONS[src], (src, dst)
