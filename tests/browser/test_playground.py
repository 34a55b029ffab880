"""The playground in headless Chromium against a real `sdq up` and worker: submit, watch, look, cancel, fix.

Saves `test-output/playground.png` (and `playground-lightbox.png`); with SDQ_UPDATE_DOCS_SCREENSHOT=1 it
also refreshes `docs/playground.png`, the README's picture.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from typing import Any

import httpx
import pytest

from tests.browser.conftest import OUTPUT, REPO, BrowserPage, WebhookReceiver
from tests.integration.conftest import RunningService

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# What the page shows for one job: its status and progress bar, read straight from the DOM.
JOB_STATE_JS = """
(id) => {
  const li = document.querySelector(`#jobs li[data-job-id="${id}"]`);
  if (!li) return null;
  const bar = li.querySelector('[role=progressbar]');
  return {status: li.dataset.status, step: Number(bar.getAttribute('aria-valuenow')),
          total: Number(bar.getAttribute('aria-valuemax'))};
}
"""
RUNNING_MIDWAY_JS = """
(id) => {
  const li = document.querySelector(`#jobs li[data-job-id="${id}"]`);
  if (!li) return false;
  const bar = li.querySelector('[role=progressbar]');
  const step = Number(bar.getAttribute('aria-valuenow')), total = Number(bar.getAttribute('aria-valuemax'));
  return li.dataset.status === 'RUNNING' && total > 0 && step >= 0.25 * total && step <= 0.75 * total;
}
"""
IMAGE_LOADED_JS = "(img) => img.complete && img.naturalWidth > 0"
# The running job's preview (progress.preview_url): shown and loaded.
PREVIEW_LOADED_JS = """
(id) => {
  const img = document.querySelector(`#jobs li[data-job-id="${id}"] .job-preview`);
  return !!img && !img.hidden && img.complete && img.naturalWidth > 0;
}
"""


def watch_job(page: Any, job_id: str, until: set[str], timeout_s: float) -> list[dict[str, Any]]:
    """Sample the job's card every 100 ms (the page itself polls every second) until a status in ``until``."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = page.evaluate(JOB_STATE_JS, job_id)
        if current is not None and (not seen or current != seen[-1]):
            seen.append(current)
        if current is not None and current["status"] in until:
            return seen
        page.wait_for_timeout(100)
    raise AssertionError(f"job {job_id} did not reach {until} in {timeout_s} s; the page showed {seen}")


def statuses(seen: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for s in seen:
        if not out or out[-1] != s["status"]:
            out.append(s["status"])
    return out


def submit(page: Any) -> Any:
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/v1/jobs")) as answer:
        page.click("#submit")
    return answer.value


def fill_job(page: Any, **fields: str) -> None:
    for name, value in fields.items():
        selector = f"#f-{name}"
        if page.locator(selector).evaluate("el => el.tagName") == "SELECT":
            page.select_option(selector, value)
        else:
            page.fill(selector, value)


def save_docs_screenshot(png: bytes) -> None:
    """docs/playground.png for the README: the same picture in 128 colours (a fraction of the bytes)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    small = image.quantize(colors=128, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    (REPO / "docs").mkdir(exist_ok=True)
    small.save(REPO / "docs" / "playground.png", optimize=True)


def test_playground_submit_watch_open_cancel_and_validate(
    playground: RunningService, webhook_receiver: WebhookReceiver, browser_page: BrowserPage
) -> None:
    from playwright.sync_api import expect

    page = browser_page.page
    key = playground.api_key

    # The API's own address serves the page; "/" leads to it.
    page.goto(playground.api_url + "/")
    expect(page).to_have_url(re.compile(r"/playground/$"))
    expect(page.locator("#connect")).to_be_visible()

    # The key is entered once, kept in session storage, never in the URL.
    page.fill("#api-key", key)
    page.click("#connect-submit")
    expect(page.locator("#app")).to_be_visible()
    assert key not in page.url
    assert page.evaluate("sessionStorage.getItem('sdq.apiKey')") == key
    page.reload()
    expect(page.locator("#app")).to_be_visible()  # still connected from session storage
    # Bounds come from the published schema, the models from GET /v1/models: an empty size is the model's.
    expect(page.locator("#hint-width")).to_have_text("256\u20131024, \u00d78")  # en dash, multiplication sign
    expect(page.locator("#f-model option")).to_have_text(["server default (tiny)", "tiny", "shapes"])
    expect(page.locator("#f-width")).to_have_attribute("placeholder", "512 (the model's)")
    page.select_option("#f-model", "shapes")
    expect(page.locator("#f-height")).to_have_attribute("placeholder", "256 (the model's)")

    # 1. A small job with the tiny model: QUEUED -> RUNNING (bar moving) -> SUCCEEDED, labelled as noise.
    fill_job(
        page,
        prompt="a lighthouse on a cliff at dusk, oil painting",
        negative_prompt="blurry",
        width="256",
        height="256",
        # Long enough (about 5 s on one CPU thread) that the page's 1 s poll sees the bar at two steps at least;
        # at 24 steps a fast machine finished between two polls.
        num_inference_steps="60",
        guidance_scale="7",
        seed="1234",
        num_images="2",
        scheduler="euler_a",
        output_format="webp",
        model="tiny",
        callback_url=webhook_receiver.url,
    )
    answer = submit(page)
    assert answer.status == 202, answer.text()
    job_id = answer.json()["id"]
    card = page.locator(f"#jobs li[data-job-id='{job_id}']")
    seen = watch_job(page, job_id, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout_s=180)
    (OUTPUT / "playground-observed.json").write_text(json.dumps(seen, indent=1))  # what the page showed
    order = statuses(seen)
    assert order[-1] == "SUCCEEDED", seen
    assert order[0] == "QUEUED", order
    assert "RUNNING" in order, order
    assert order.index("QUEUED") < order.index("RUNNING") < order.index("SUCCEEDED"), order
    running_steps = [s["step"] for s in seen if s["status"] == "RUNNING" and 0 < s["step"] < s["total"]]
    assert running_steps, f"no intermediate progress observed: {seen}"
    assert len(set(running_steps)) >= 2, f"the progress bar did not move: {seen}"
    assert running_steps == sorted(running_steps), seen
    expect(card.locator(".noise-label")).to_be_visible()
    expect(card.locator(".noise-label")).to_have_attribute("title", re.compile("noise"))
    expect(card.locator(".job-cancel")).to_be_hidden()
    expect(card.locator(".job-timings")).to_contain_text(re.compile(r"queue .* run .* total"))

    # 2. Its two images in the gallery, with the seed that reproduces each and the webhook's delivery state.
    tiles = page.locator(f"#gallery .tile[data-job-id='{job_id}']")
    expect(tiles).to_have_count(2)
    expect(tiles.nth(0).locator(".params")).to_contain_text("1234")
    expect(tiles.nth(1).locator(".params")).to_contain_text("1235")
    expect(tiles.nth(0).locator(".params")).to_contain_text("60 · cfg 7")
    expect(tiles.nth(0).locator(".params")).to_contain_text("euler_a")
    expect(tiles.nth(0).locator(".tile-noise")).to_be_visible()
    expect(page.locator("#noise-note")).to_contain_text("noise")
    for i in range(2):
        page.wait_for_function(IMAGE_LOADED_JS, arg=tiles.nth(i).locator("img").element_handle())
    expect(tiles.nth(0).locator(".webhook")).to_have_text(
        re.compile(r"^delivered · HTTP 204 · 1 attempt$"), timeout=60_000
    )
    assert any(job_id in json.dumps(json.loads(body)) for body in webhook_receiver.bodies)

    # 3. Click the thumbnail: the full image (its presigned URL) opens and loads.
    tiles.nth(0).locator(".tile-thumb").click()
    lightbox = page.locator("#lightbox")
    expect(lightbox).to_be_visible()
    full = page.locator("#lightbox-img")
    expect(full).to_have_attribute("src", re.compile(rf"/{job_id}/0\.webp\?"))
    page.wait_for_function(IMAGE_LOADED_JS, arg=full.element_handle())
    assert full.evaluate("img => img.naturalWidth") == 256
    page.screenshot(path=str(OUTPUT / "playground-lightbox.png"))
    page.keyboard.press("Escape")
    expect(lightbox).to_be_hidden()

    # "Reuse settings" fills the form with what reproduces that one image: its own seed, one image.
    tiles.nth(1).locator(".tile-reuse").click()
    expect(page.locator("#f-seed")).to_have_value("1235")
    expect(page.locator("#f-num_images")).to_have_value("1")
    expect(page.locator("#f-num_inference_steps")).to_have_value("60")

    # 4. A bigger, slower job, cancelled from its card while it runs.
    fill_job(
        page,
        prompt="a slow one: a city at night",
        negative_prompt="",
        width="512",
        height="512",
        num_inference_steps="100",
        seed="",
        num_images="1",
        output_format="png",
        callback_url="",
    )
    answer = submit(page)
    assert answer.status == 202, answer.text()
    slow_id = answer.json()["id"]
    slow = page.locator(f"#jobs li[data-job-id='{slow_id}']")
    watch_job(page, slow_id, {"RUNNING", "POSTPROCESSING", "SUCCEEDED", "FAILED", "CANCELLED"}, timeout_s=60)
    with page.expect_response(lambda r: r.url.endswith(f"/v1/jobs/{slow_id}/cancel")) as cancelled:
        slow.locator(".job-cancel").click()
    assert cancelled.value.status == 200, cancelled.value.text()
    expect(slow).to_have_attribute("data-status", "CANCELLED", timeout=15_000)
    expect(slow.locator(".status")).to_have_text("CANCELLED")
    expect(slow.locator(".job-cancel")).to_be_hidden()
    expect(page.locator(f"#gallery .tile[data-job-id='{slow_id}']")).to_have_count(0)
    expect(slow.locator(".job-preview")).to_be_hidden()  # a preview is shown only while a job runs

    # 5. A job left running for the picture, then an invalid width: the API's 422 shows next to the field.
    # 512 px: about four times the 256 px job above, so the page's 1 s poll finds the bar between a quarter and
    # three quarters (at 256 px a fresh CI run finished it in 1.7 s and the page never saw it midway).
    fill_job(page, prompt="a red fox in the snow, watercolor", width="512", height="512", num_inference_steps="60")
    answer = submit(page)
    assert answer.status == 202, answer.text()
    running_id = answer.json()["id"]
    page.fill("#f-width", "513")
    answer = submit(page)
    assert answer.status == 422, answer.text()
    assert answer.json()["error"]["details"][0]["loc"] == ["body", "width"]
    expect(page.locator("#err-width")).to_have_text("must be a multiple of 8")
    expect(page.locator("#f-width")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#err-height")).to_be_empty()
    expect(page.locator("#form-error")).to_be_empty()
    expect(page.locator("#jobs li")).to_have_count(3)  # the 422 created nothing

    # The picture for people: the whole page with a bar half way, the 422, the gallery.
    page.wait_for_function(RUNNING_MIDWAY_JS, arg=running_id, timeout=120_000, polling=50)
    # Its preview: a small JPEG of the image as it forms, from the job's presigned preview URL, while it runs.
    page.wait_for_function(PREVIEW_LOADED_JS, arg=running_id, timeout=20_000, polling=50)
    preview = page.locator(f"#jobs li[data-job-id='{running_id}'] .job-preview")
    assert 0 < preview.evaluate("(img) => img.naturalWidth") <= 256
    expect(preview).to_have_attribute("alt", re.compile(rf"preview of {running_id} at step \d+ of \d+"))
    page.wait_for_timeout(400)  # the bar's width transition
    shot = page.screenshot(path=str(OUTPUT / "playground.png"), full_page=True)
    if os.environ.get("SDQ_UPDATE_DOCS_SCREENSHOT"):
        save_docs_screenshot(shot)

    assert browser_page.page_errors == []
    # Chromium logs every non-2xx fetch; the 422 above is the one the test provoked.
    unexpected = [m for m in browser_page.console_errors if "status of 422" not in m]
    assert unexpected == []
    assert browser_page.blocked == [], "the page tried to reach beyond loopback"
    assert browser_page.requests, "no requests were recorded"
    assert not [url for url in browser_page.requests if key in url], "the API key appeared in a URL"


def test_playground_files_are_served_beside_the_api(playground: RunningService) -> None:
    """`sdq up` serves the playground folder read-only on the API's own address; the API is unchanged."""
    with httpx.Client(base_url=playground.api_url, timeout=10) as http:
        root = http.get("/")
        assert root.status_code == 302
        assert root.headers["location"] == "/playground/"
        bare = http.get("/playground?x=1")
        assert bare.status_code == 308
        assert bare.headers["location"] == "/playground/?x=1"
        # A query that decodes to line breaks is encoded again: a redirect, never a broken header or a 500.
        crlf = http.get("/playground?a=%0d%0aSet-Cookie:%20x=y")
        assert (crlf.status_code, crlf.headers["location"]) == (308, "/playground/?a=%0D%0ASet-Cookie%3A+x%3Dy")
        assert "set-cookie" not in crlf.headers
        index = http.get("/playground/")
        assert index.status_code == 200
        assert index.headers["content-type"].startswith("text/html")
        assert "sdq playground" in index.text
        assert not re.search(r"(src|href)=\"(https?:)?//", index.text)  # nothing from elsewhere
        script = http.get("/playground/app.js")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]
        assert script.headers["x-content-type-options"] == "nosniff"
        assert http.head("/playground/style.css").status_code == 200
        for path in ("/playground/missing.js", "/playground/%2e%2e/pyproject.toml", "/playground/.gitignore"):
            assert http.get(path).status_code == 404, path
        assert http.get("/health").json() == {"status": "ok"}
        assert http.post("/playground/", json={}).status_code in {404, 405}  # not served: reaches the API
