"""Fixtures for the playground's browser test: `sdq up` with a worker, a webhook receiver and headless Chromium.

The browser is Debian's chromium (`.ci/install-browser`), driven by Playwright through its executable path;
Playwright's own browser download is never used. Every request the page makes must stay on loopback.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import RunningService, start_service, stop_service

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "test-output"
CHROMIUM = Path(os.environ.get("SDQ_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Small, quick jobs whose progress is still visible at the page's 1 s poll: progress written every 0.2 s, and
# one torch thread so a job takes about as long on a big CI machine as on a laptop (and leaves the browser a core).
FAST_WORKER = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "SDQ_PROGRESS_INTERVAL_S": "0.2",
    "SDQ_RECEIVE_WAIT_S": "1",
    "SDQ_MAX_BATCH_WAIT_MS": "200",
    "SDQ_HEARTBEAT_S": "2",
    "SDQ_GRACE_S": "5",
}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}


def _require_browser() -> None:
    """Skip on a laptop without the browser; fail in CI, where `.ci/install-browser` must have run."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (run .ci/install-browser)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI") or os.environ.get("SDQ_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="package")
def playground(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """`sdq up` (local cloud + API + the playground) and one fast worker, for the whole package; it serves the
    tiny model (the default: the tests' jobs) and the shapes model (another default size for the model list)."""
    running = start_service(
        tmp_path_factory.mktemp("sdq-playground"),
        {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "20"},
        args=("--model", "tiny", "--model", "shapes"),
    )
    try:
        running.start_worker(env=FAST_WORKER)
        yield running
    finally:
        stop_service(running)


@dataclass
class WebhookReceiver:
    url: str
    bodies: list[bytes] = field(default_factory=list)


@pytest.fixture(scope="package")
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A loopback HTTP endpoint that accepts every webhook with 204 (the local profile allows http to loopback)."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield WebhookReceiver(url=f"http://127.0.0.1:{server.server_port}/hooks/sdq", bodies=bodies)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class BrowserPage:
    """A page plus what the test checks at the end: script errors, console errors, every request's URL and
    those that tried to leave loopback."""

    page: Any
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def browser_page(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BrowserPage]:
    _require_browser()
    from playwright.sync_api import sync_playwright

    OUTPUT.mkdir(exist_ok=True)
    profile = tmp_path / "chromium-profile"  # a fresh --user-data-dir
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1360, "height": 960},
            color_scheme="dark",
        )
        result = BrowserPage(page=context.pages[0] if context.pages else context.new_page())

        def only_loopback(route: Any) -> None:
            url = route.request.url
            parts = urlsplit(url)
            if parts.scheme in {"http", "https"} and parts.hostname not in LOOPBACK_HOSTS:
                result.blocked.append(url)
                route.abort()
            else:
                route.continue_()

        context.route("**/*", only_loopback)
        result.page.on("request", lambda req: result.requests.append(req.url))
        result.page.on("pageerror", lambda exc: result.page_errors.append(str(exc)))
        result.page.on("console", lambda msg: result.console_errors.append(msg.text) if msg.type == "error" else None)
        try:
            yield result
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                result.page.screenshot(path=str(OUTPUT / "playground-failure.png"), full_page=True)
        finally:
            context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """Keep the call phase's report on the item, so the browser fixture can save a screenshot on failure."""
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
