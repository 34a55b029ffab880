"""The `sdq` client commands (cli/main.py) against a scripted API on loopback (tests/client/fakeapi.py): what
they print on stdout and stderr and the exit codes docs/cli.md promises, where the local stack cannot produce the
answer (a lost answer, a gateway's 502, a job that never finishes). tests/integration/test_client.py runs them
against the local stack."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from rich.console import Console

import cli.main
from cli.main import main
from tests.client.fakeapi import LOST, FakeApi, Reply, Slow, gateway_502, running


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeApi]:
    with running() as fake:
        monkeypatch.setenv("SDQ_API_URL", fake.url)
        monkeypatch.setenv("SDQ_API_KEY", "sdq_test")
        monkeypatch.setenv("SDQ_STATE_DIR", str(tmp_path / "state"))
        yield fake


def words(text: str) -> str:
    """stderr as one line: rich wraps long messages at the console's width."""
    return " ".join(text.split())


def test_a_submit_that_got_no_answer_says_so_and_how_to_repeat_it_without_a_duplicate(
    api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    api.fault("POST", "/v1/jobs", LOST, times=100)  # the API makes the job each time; no answer ever comes back
    assert main(["submit", "a red fox"]) == 3
    err = words(capsys.readouterr().err)
    sent = {s.headers.get("idempotency-key") for s in api.requests("POST")}
    (key,) = sent  # every try carried the same key: one job, however many tries
    assert len(api.jobs) == 1
    assert "cannot reach" not in err  # it was reached: only the answer was lost
    assert "no answer from" in err
    assert f"--idempotency-key {key}" in err
    api.faults.clear()
    assert main(["submit", "a red fox", "--idempotency-key", str(key)]) == 0
    assert capsys.readouterr().out.strip() == next(iter(api.jobs))  # the job the first command made
    assert len(api.jobs) == 1


def test_an_api_that_is_not_there_cannot_be_reached(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running() as gone:
        url = gone.url
    monkeypatch.setenv("SDQ_API_URL", url)
    monkeypatch.setenv("SDQ_API_KEY", "sdq_test")
    monkeypatch.setenv("SDQ_STATE_DIR", str(tmp_path))
    assert main(["status", "01KAXAAAAAAAAAAAAAAAAAAAAA"]) == 3
    assert "cannot reach" in words(capsys.readouterr().err)


def test_a_refused_scheduler_is_a_refused_field_with_the_422_line_on_stdout(
    api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", "a red fox", "--scheduler", "foo", "--json"]) == 4  # docs/cli.md: a refused field
    out, err = capsys.readouterr()
    (line,) = out.splitlines()  # --json: one line of JSON on stdout, nothing else
    refusal = json.loads(line)
    assert refusal["status"] == 422
    assert refusal["body"]["error"]["code"] == "validation_error"
    assert [d["loc"] for d in refusal["body"]["error"]["details"]] == [["body", "scheduler"]]
    assert "scheduler" in err
    assert "Traceback" not in err
    assert api.seen == []


def test_the_choices_are_listed_and_a_listed_one_is_sent(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["submit", "--help"])
    assert "{ddim,euler,euler_a,dpmpp_2m,pndm,lms}" in capsys.readouterr().out
    assert main(["submit", "a red fox", "--scheduler", "dpmpp_2m", "--format", "webp"]) == 0
    assert api.requests("POST")[0].json() == {
        "prompt": "a red fox",
        "scheduler": "dpmpp_2m",
        "output_format": "webp",
    }


def test_submit_sends_a_priority_the_cache_and_webhook_events(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    """A tenant granted `--max-priority high` (README) asks for it from the command line, as from the client."""
    with pytest.raises(SystemExit):
        main(["submit", "--help"])
    assert "{low,normal,high}" in capsys.readouterr().out  # the request model's Priority
    argv = ["submit", "a red fox", "--priority", "high", "--no-cache", "--callback-url", "https://example.com/hook"]
    assert main([*argv, "--webhook-event", "started", "--webhook-event", "completed"]) == 0
    assert api.requests("POST")[0].json() == {
        "prompt": "a red fox",
        "priority": "high",
        "cache": False,
        "callback_url": "https://example.com/hook",
        "webhook_events": ["started", "completed"],
    }
    assert main(["submit", "a red fox"]) == 0  # none of them: the API's defaults, nothing sent
    assert api.requests("POST")[1].json() == {"prompt": "a red fox"}


@pytest.mark.parametrize(
    ("flags", "loc"),
    [(["--priority", "urgent"], ["body", "priority"]), (["--webhook-event", "done"], ["body", "webhook_events", "0"])],
    ids=["priority", "webhook-event"],
)
def test_a_priority_or_webhook_event_outside_the_choices_is_a_refused_field(
    api: FakeApi, capsys: pytest.CaptureFixture[str], flags: list[str], loc: list[str]
) -> None:
    assert main(["submit", "a red fox", *flags, "--json"]) == 4
    refusal = json.loads(capsys.readouterr().out)
    assert [d["loc"] for d in refusal["body"]["error"]["details"]] == [loc]
    assert api.seen == []


def listed(api: FakeApi, cursor: str) -> list[str]:
    prompts = [f"a fox\tnumber {n}, " + "very " * 20 + "red" for n in range(3)]
    ids = [api.add_job("SUCCEEDED", request={"prompt": prompt}) for prompt in prompts]
    api.route("GET", "/v1/jobs", lambda _: Reply(200, {"jobs": [api.jobs[i] for i in ids], "next_cursor": cursor}))
    return ids


CURSOR = "eyJqb2JfaWQiOiAiMDFNOTdaWEtZNEQ2QUdBNVg1QjI1NEZNWjciLCAicGsiOiAiSk9CIzAxTTk3WlhL" * 3


def test_jobs_piped_prints_only_tab_separated_lines_and_the_cursor_line_on_stderr(
    api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = listed(api, CURSOR)
    assert main(["jobs", "--status", "SUCCEEDED", "--limit", "3"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 4  # a header and one job a line: every line of stdout is the table's
    assert all(len(line.split("\t")) == 7 for line in lines)
    assert lines[0].split("\t")[:2] == ["id", "status"]
    assert [line.split("\t")[0] for line in lines[1:4]] == ids  # whole, 26 characters each
    assert lines[1].split("\t")[-1] == "a fox number 0, " + "very " * 20 + "red"  # one line, not cut
    more = f"more: sdq jobs --status SUCCEEDED --limit 3 --cursor {CURSOR}"
    assert err.splitlines() == [more]  # one line, never wrapped
    # The command it names continues the same listing: a cursor is valid only with its status filter.
    assert main(more.split()[2:]) == 0
    query = parse_qs(urlsplit(api.requests("GET")[-1].path).query)
    assert query == {"status": ["SUCCEEDED"], "limit": ["3"], "cursor": [CURSOR]}


def test_jobs_on_a_narrow_terminal_keeps_ids_and_the_cursor_line_whole(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(cli.main, "out", Console(file=screen, force_terminal=True, width=60, color_system=None))
    ids = listed(api, CURSOR)
    assert main(["jobs"]) == 0
    text = screen.getvalue()
    assert all(job_id in text for job_id in ids)
    assert f"more: sdq jobs --cursor {CURSOR}\n" in text  # the terminal may fold it on screen; a copy is one line


def test_jobs_on_an_80_column_terminal_shows_status_and_size_whole(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prompt gives way (wrapped; the columns `sdq status` shows left out first), not the status or the size."""
    screen = io.StringIO()
    monkeypatch.setattr(cli.main, "out", Console(file=screen, force_terminal=True, width=80, color_system=None))
    ids = listed(api, CURSOR)
    api.jobs[ids[0]]["status"] = "POSTPROCESSING"  # the longest status
    api.jobs[ids[1]]["request"].update(width=1024, height=1024)
    assert main(["jobs"]) == 0
    lines = screen.getvalue().splitlines()
    rows = {job_id: next(line for line in lines if job_id in line) for job_id in ids}  # each job's first line
    assert "POSTPROCESSING" in rows[ids[0]]
    assert "SUCCEEDED" in rows[ids[2]]
    assert "1024x1024" in rows[ids[1]]
    assert "256x256" in rows[ids[0]]
    assert "a fox" in rows[ids[0]]  # the prompt's start, beside its job
    assert all(len(line) <= 80 for line in lines if not line.startswith("more:"))  # the cursor line: never wrapped


@pytest.mark.parametrize("failure", ["out-is-a-file", "download-refused"])
def test_images_that_cannot_be_saved_come_after_the_job_with_their_own_exit_code(
    api: FakeApi, capsys: pytest.CaptureFixture[str], tmp_path: Path, failure: str
) -> None:
    api.route("GET", "/files/0.png", lambda _: Reply(200, b"\x89PNG0000", {"Content-Type": "image/png"}))
    api.outputs = [api.output(0, "/files/0.png"), api.output(1, "/files/expired.png")]  # the second is a 404
    out = tmp_path / "images"
    if failure == "out-is-a-file":
        out.write_text("not a folder")
    code = main(["submit", "a red fox", "--wait", "--json", "--out", str(out), "--timeout", "30"])
    stdout, stderr = capsys.readouterr()
    assert code == 7  # docs/cli.md: SUCCEEDED, images not saved
    job = json.loads(stdout)  # the finished job is printed all the same
    assert job["status"] == "SUCCEEDED"
    assert "Traceback" not in stderr
    assert "not saved" in words(stderr)
    assert f"sdq wait {job['id']} --out FOLDER" in words(stderr)
    if failure == "download-refused":
        assert (out / f"{job['id']}-0.png").read_bytes() == b"\x89PNG0000"  # what could be saved was
        assert "404" in stderr


def test_a_job_whose_images_are_saved_exits_0(api: FakeApi, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    api.route("GET", "/files/0.png", lambda _: Reply(200, b"\x89PNG0000", {"Content-Type": "image/png"}))
    api.outputs = [api.output(0, "/files/0.png")]
    assert main(["submit", "a red fox", "--wait", "--out", str(tmp_path)]) == 0
    job_id = next(iter(api.jobs))
    assert (tmp_path / f"{job_id}-0.png").exists()
    assert f"saved {tmp_path / f'{job_id}-0.png'}" in words(capsys.readouterr().err)


REPO = Path(__file__).resolve().parents[2]


def interrupted_submit(api: FakeApi, tmp_path: Path, *, once: Callable[[], bool]) -> tuple[int, str, str]:
    """``sdq submit --wait --json`` in a process of its own, sent SIGINT (Ctrl-C) once ``once()`` holds."""
    env = {
        "SDQ_API_URL": api.url,
        "SDQ_API_KEY": "sdq_test",
        "SDQ_STATE_DIR": str(tmp_path),
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'client'}",
        "PATH": "/usr/bin:/bin",
    }
    # Ctrl-C as an interactive shell delivers it (a shell's background job would inherit SIGINT ignored).
    start = "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
    start += "sys.argv = ['sdq', *sys.argv[1:]]; runpy.run_module('cli.main', run_name='__main__')"
    command = [sys.executable, "-c", start, "submit", "a red fox", "--wait", "--json", "--timeout", "120"]
    with subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as sdq:
        deadline = time.monotonic() + 60
        while not once() and time.monotonic() < deadline:
            time.sleep(0.05)
        sdq.send_signal(signal.SIGINT)
        stdout, stderr = sdq.communicate(timeout=60)
    return sdq.returncode, stdout, stderr


def test_ctrl_c_while_waiting_names_the_job_and_how_to_follow_or_cancel_it(api: FakeApi, tmp_path: Path) -> None:
    api.gets_until_done, api.poll_after = None, "1"  # the job runs on and on
    code, stdout, stderr = interrupted_submit(api, tmp_path, once=lambda: bool(api.requests("GET")))
    (job_id,) = api.jobs
    assert code == 130
    assert stdout == ""
    assert "Traceback" not in stderr
    assert f"job {job_id}" in stderr
    assert f"sdq wait {job_id}" in stderr
    assert f"sdq cancel {job_id}" in stderr


def test_ctrl_c_before_the_submit_was_answered_names_its_idempotency_key(api: FakeApi, tmp_path: Path) -> None:
    api.fault("POST", "/v1/jobs", Slow(30))
    code, _, stderr = interrupted_submit(api, tmp_path, once=lambda: bool(api.requests("POST")))
    (sent,) = api.requests("POST")
    assert code == 130
    assert "Traceback" not in stderr
    assert f"--idempotency-key {sent.headers['idempotency-key']}" in words(stderr)


def test_an_answer_that_is_not_the_apis_is_an_api_failure_not_a_usage_error(
    api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = api.add_job("SUCCEEDED")
    api.route("GET", f"/v1/jobs/{job_id}", lambda _: Reply(200, b"<html>a proxy's page</html>"))
    assert main(["status", job_id]) == 5
    err = words(capsys.readouterr().err)
    assert "unexpected answer" in err
    assert "invalid request" not in err
    assert "Traceback" not in err


def test_an_empty_job_id_is_a_usage_error(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["status", ""])
    assert exited.value.code == 2
    assert "job id" in capsys.readouterr().err
    assert api.seen == []


def local_stack(state: Path, url: str, key: str = "sdq_local_key") -> None:
    """The file `sdq up` writes: where the local stack's API is, and its development key."""
    state.mkdir(parents=True, exist_ok=True)
    (state / "local.json").write_text(json.dumps({"api_url": url, "api_key": key}))


def test_the_local_key_goes_only_to_the_local_stack(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = api.add_job("SUCCEEDED")
    monkeypatch.delenv("SDQ_API_KEY")
    with running() as local:
        local_stack(tmp_path / "state", local.url)
        # SDQ_API_URL names another deployment (api): the local stack's key is not sent there.
        with pytest.raises(SystemExit) as exited:
            main(["status", job_id])
        assert exited.value.code == 2  # a usage error: no key for that URL
        assert f"No API key for {api.url}" in words(capsys.readouterr().err)
        assert api.seen == []
        # The local stack's own URL (however written) gets its key.
        monkeypatch.setenv("SDQ_API_URL", local.url + "/")
        local.jobs = api.jobs
        assert main(["status", job_id]) == 0
        monkeypatch.delenv("SDQ_API_URL")
        assert main(["status", job_id]) == 0
    assert [s.headers["x-api-key"] for s in local.seen] == ["sdq_local_key", "sdq_local_key"]


def test_a_gateway_failure_is_a_server_error_that_says_what_the_gateway_said(
    api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = api.add_job("SUCCEEDED")
    api.fault("GET", "/v1/jobs/", gateway_502(), times=100)
    assert main(["status", job_id, "--json"]) == 5
    out, err = capsys.readouterr()
    assert json.loads(out) == {"status": 502, "body": {"message": "Internal server error"}}
    assert "server error 502: Bad Gateway: Internal server error" in words(err)
    assert "refused" not in err


def test_admin_against_a_local_stack_that_stopped_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The state file `sdq up` left behind names a local cloud no longer running: the operator is told that, with
    the exit code of an unreachable API, not an AWS error of a refusal's code."""
    (tmp_path / "local.json").write_text(
        json.dumps(
            {
                "env": {
                    "SDQ_TABLE_NAME": "sdq-jobs",
                    "SDQ_BUCKET": "sdq-media",
                    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}",
                    "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing",
                }
            }
        )
    )
    monkeypatch.setenv("SDQ_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert main(["admin", "tenants", "show", "acme"]) == 3
    assert "is `sdq up` running?" in capsys.readouterr().err


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_wait_against_an_api_that_never_answers_times_out_at_its_timeout_naming_the_key(
    api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    api.fault("POST", "/v1/jobs", Slow(20), times=100)  # the request arrives; no answer ever comes
    started = time.monotonic()
    assert main(["submit", "a red fox", "--wait", "--timeout", "1.5", "--json"]) == 6  # docs/cli.md: timed out
    assert time.monotonic() - started < 4
    out, err = capsys.readouterr()
    assert out == ""  # no job was seen
    (sent,) = {s.headers["idempotency-key"] for s in api.requests("POST")}
    assert f"--idempotency-key {sent}" in words(err)
    assert "Traceback" not in err
    job_id = api.add_job("RUNNING")
    api.fault("GET", "/v1/jobs/", Slow(20), times=100)
    started = time.monotonic()
    assert main(["wait", job_id, "--timeout", "1.5"]) == 6
    assert time.monotonic() - started < 4


@pytest.mark.parametrize("where", ["flag", "environment"])
def test_a_command_against_an_api_that_never_answers_gives_up_after_its_http_timeout(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    job_id = api.add_job("SUCCEEDED")
    api.fault("GET", "/v1/jobs/", Slow(20), times=100)
    argv = ["status", job_id]
    if where == "flag":
        argv += ["--http-timeout", "0.5"]
    else:
        monkeypatch.setenv("SDQ_HTTP_TIMEOUT", "0.5")
    started = time.monotonic()
    assert main(argv) == 3  # no answer, after the client's retries
    assert time.monotonic() - started < 8  # 4 tries of 0.5 s and the pauses between them
    assert len(api.requests("GET")) == 4
    assert "no answer from" in words(capsys.readouterr().err)


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan"])
def test_an_http_timeout_that_is_not_seconds_is_a_usage_error(
    api: FakeApi, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["status", "01KAXAAAAAAAAAAAAAAAAAAAAA", "--http-timeout", value])
    assert exited.value.code == 2
    assert "--http-timeout" in capsys.readouterr().err
    assert api.seen == []


@pytest.mark.parametrize(
    ("url", "said"),
    [("http://[::1", "is not a URL"), ("127.0.0.1:8951", "http://127.0.0.1:8951?"), ("ftp://host", "http://")],
    ids=["unclosed-bracket", "no-scheme", "ftp"],
)
@pytest.mark.parametrize("where", ["flag", "environment"])
def test_an_api_url_that_is_not_an_http_url_is_a_usage_error_naming_it(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str, said: str, where: str
) -> None:
    """Nothing is sent, so nothing may have arrived: not exit 3, nor a submit's advice to repeat it with its key."""
    if where == "flag":
        argv = ["submit", "a red fox", "--api-url", url, "--api-key", "x"]
    else:
        monkeypatch.setenv("SDQ_API_URL", url)
        argv = ["submit", "a red fox"]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = words(capsys.readouterr().err)
    assert ("--api-url" if where == "flag" else "SDQ_API_URL") in err
    assert said in err
    assert "Traceback" not in err
    assert "idempotency-key" not in err
    assert api.seen == []


@pytest.mark.parametrize(
    "content", ["{bad", "[]", '{"api_url": 7}', "\udcff"], ids=["not-json", "list", "number", "bytes"]
)
@pytest.mark.parametrize("command", [["jobs"], ["up"], ["admin", "tenants", "show", "acme"]])
def test_a_local_state_file_that_cannot_be_read_is_a_usage_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str,
    command: list[str],
) -> None:
    monkeypatch.delenv("SDQ_API_URL", raising=False)
    monkeypatch.delenv("SDQ_API_KEY", raising=False)
    monkeypatch.setenv("SDQ_STATE_DIR", str(tmp_path))
    (tmp_path / "local.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    try:
        code = main(command)
    except SystemExit as exited:
        code = exited.code  # type: ignore[assignment]
    assert code == 2
    err = words(capsys.readouterr().err)
    assert str(tmp_path / "local.json") in err
    assert "delete it" in err
    assert "Traceback" not in err


def test_a_non_ascii_idempotency_key_is_a_usage_error(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["submit", "a red fox", "--idempotency-key", "ordér-1"])
    assert exited.value.code == 2
    assert "Idempotency-Key" in capsys.readouterr().err
    assert api.seen == []
