"""Reading `Prefer: wait` (RFC 7240) in the API handler: what is honoured, what is ignored."""

from __future__ import annotations

import pytest

from handlers.api import _fold_list_header, wait_preference
from workflows.waiting import MAX_WAIT_S


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("wait", MAX_WAIT_S),
        ("wait=5", 5),
        ("WAIT = 7", 7),
        ("wait=0", 0),
        ("wait=007", 7),
        ('wait="3"', 3),
        ("wait=26", MAX_WAIT_S),
        ("wait=" + "9" * 5000, MAX_WAIT_S),  # no int() of a huge number
        ("respond-async, wait=4", 4),
        ("handling=lenient; x, wait=3;foo=bar", 3),
        ("wait=2, wait=9", 2),  # the first one counts
        ("wait=soon", None),
        ("wait=-1", None),
        ("wait=1.5", None),
        ("wait=\u0663", None),  # a non-ASCII digit is not a number of seconds
        ("respond-async", None),
        ("waiting=3", None),
    ],
)
def test_wait_preference(header: str | None, seconds: int | None) -> None:
    assert wait_preference(header) == seconds


def test_several_prefer_lines_become_one_list() -> None:
    event = {
        "headers": {"prefer": "wait=1", "Accept": "*/*"},
        "multiValueHeaders": {"prefer": ["respond-async"], "PREFER": ["wait=1"], "Accept": ["*/*"]},
    }
    _fold_list_header(event, "Prefer")
    assert event["multiValueHeaders"] == {"Accept": ["*/*"], "Prefer": ["respond-async, wait=1"]}
    assert event["headers"] == {"Accept": "*/*", "Prefer": "respond-async, wait=1"}
    single = {"headers": {"Prefer": "wait"}, "multiValueHeaders": {"Prefer": ["wait"]}}
    _fold_list_header(single, "Prefer")
    assert single == {"headers": {"Prefer": "wait"}, "multiValueHeaders": {"Prefer": ["wait"]}}
