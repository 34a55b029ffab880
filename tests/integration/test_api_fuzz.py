"""API fuzzing: schemathesis generates requests from /openapi.json and checks every response.

All checks run except ``positive_data_acceptance``: some rules cannot be written in JSON Schema (a callback
URL must not point at a private address; a cursor must be one the API issued), so schema-valid requests may be
rightly refused with 4xx. Everything else holds: no 5xx, every response matches its documented schema, status
and content type, schema-invalid requests are rejected, and undeclared methods get 405.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest

from localcloud.api import STREAM_TIMEOUT_VARIABLE
from tests.integration.conftest import RunningService, start_service, stop_service


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    # No worker runs here, so no job finishes: each events stream the fuzzer opens would run its whole 15 minutes
    # (held about 30 s each by schemathesis's timeouts). 12 s leaves each a 2 s stream (10 s is the end margin).
    env = {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "100000", STREAM_TIMEOUT_VARIABLE: "12"}
    running = start_service(tmp_path_factory.mktemp("sdq-fuzz"), env)
    yield running
    stop_service(running)


def test_schemathesis_finds_no_server_errors_or_schema_violations(service: RunningService, tmp_path: Path) -> None:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{service.api_url}/openapi.json",
            "--header",
            f"x-api-key: {service.api_key}",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "40",
            "--seed",
            "20261125",
            "--request-timeout",
            "20",
            "--report",
            "junit",
            "--report-junit-path",
            str(tmp_path / "junit.xml"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    # Every operation in the spec was exercised, and none failed.
    paths = httpx.get(f"{service.api_url}/openapi.json").json()["paths"]
    operations = {f"{method.upper()} {path}" for path, methods in paths.items() for method in methods}
    cases = list(ElementTree.parse(tmp_path / "junit.xml").getroot().iter("testcase"))  # noqa: S314 - our own report
    assert operations <= {c.get("name") for c in cases if c.find("skipped") is None}, [c.get("name") for c in cases]
    assert not [c.get("name") for c in cases if c.find("failure") is not None or c.find("error") is not None]
