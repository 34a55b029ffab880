"""A FAILED job's ``error.code`` has one owner, ``JobErrorCode``: the API reference lists exactly its members, and
the state machine, which writes one code itself, writes only members."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.contracts import JobErrorCode

ROOT = Path(__file__).resolve().parents[2]


def _documented_codes() -> list[str]:
    """The first column of docs/api.md's `error.code` table."""
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    table = text.split("| `error.code` | meaning |", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^\| `([A-Z_]+)` \|", table, flags=re.MULTILINE)


def _asl_codes(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "code" and isinstance(value, str):
                yield value
            yield from _asl_codes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _asl_codes(item)


def test_the_api_reference_lists_every_error_code_once() -> None:
    documented = _documented_codes()
    assert sorted(documented) == sorted(code.value for code in JobErrorCode)


def test_the_state_machine_writes_only_known_codes() -> None:
    asl = json.loads((ROOT / "statemachine.asl.json").read_text(encoding="utf-8"))
    written = set(_asl_codes(asl))
    assert written, "the state machine writes POSTPROCESS_FAILED itself: the walk found no code"
    assert written <= {code.value for code in JobErrorCode}


def test_the_service_spells_no_error_code_by_hand() -> None:
    # A code written as a literal (JobError(code="...")) would be a second owner of the list.
    literal = re.compile(r"""code=["'][A-Z_]+["']""")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for package in ("shared", "workflows", "handlers")
        for path in sorted((ROOT / package).rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if literal.search(line)
    ]
    assert found == []
