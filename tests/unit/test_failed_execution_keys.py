"""Which job a failed execution's log lines name (handlers/failed_execution.py appends it to each record's lines):
the job and tenant of its input, else the job its name carries, when EventBridge left the input out."""

from __future__ import annotations

import json

from workflows.failedexecution import execution_job

JOB = "01JF8ZQ3K2M4N5P6R7S8T9V0WX"


def test_a_job_run_or_a_notice_is_named_by_its_input() -> None:
    run = {"status": "FAILED", "name": f"{JOB}-2", "input": json.dumps({"job_id": JOB, "tenant": "acme", "attempt": 2})}
    assert execution_job(run) == (JOB, "acme")
    notice = {"status": "ABORTED", "input": json.dumps({"job_id": JOB, "tenant": "acme", "notify_only": True})}
    assert execution_job(notice) == (JOB, "acme")


def test_without_its_input_the_job_is_read_from_the_name() -> None:
    timed_out = {"status": "TIMED_OUT", "name": f"{JOB}-3", "inputDetails": {"included": False}}
    assert execution_job(timed_out) == (JOB, None)
    assert execution_job({"status": "FAILED", "name": f"{JOB}-cancelled-01M91VNE54H9XGDASE0M8TVYCD"}) == (JOB, None)


def test_an_execution_that_names_no_job_names_none() -> None:
    assert execution_job({"status": "FAILED", "name": "someone-elses"}) == (None, None)
    assert execution_job({"status": "FAILED", "input": json.dumps({"job_id": 7})}) == (None, None)
