"""Image-to-image and inpainting jobs through the running service: submitted with an upload or data URLs, run by a
`sdq worker` process (tiny model on CPU) that reads their stored inputs, finished SUCCEEDED with images of the
job's size; an inpainted image keeps the input's pixels where the mask is black.

A bad upload refused at submit: test_uploads.py."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from cli.client import SdqClient
from tests.integration.conftest import RunningService, service_fixture
from tests.integration.test_worker import FAST_WORKER

service = service_fixture("sdq-image-jobs", {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "1000"})


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()


def picture(width: int, height: int) -> Image.Image:
    """Shapes and colours: a picture no pipeline keeps by luck."""
    image = Image.new("RGB", (width, height), (30, 90, 160))
    draw = ImageDraw.Draw(image)
    for i in range(8):
        x, y = 23 * i % (width - 60), 37 * i % (height - 60)
        draw.rectangle((x, y, x + 60, y + 60), fill=(40 * i % 256, 200 - 20 * i, 90 + 15 * i))
    return image


def finished(client: SdqClient, job_id: str, timeout_s: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(job_id, wait=5)
        if job["status"] in {"SUCCEEDED", "FAILED", "CANCELLED"}:
            return job
    raise AssertionError(f"job {job_id} did not finish in {timeout_s}s")


def test_image_to_image_and_inpainting_jobs_succeed_and_inpainting_keeps_the_unmasked_pixels(
    service: RunningService,
) -> None:
    service.start_worker(env=FAST_WORKER)
    client = service.new_tenant("modes")
    source = picture(320, 256)
    upload = client.api.upload(png(source), "image/png")  # the presigned POST, as a client sends one
    image_job = client.submit(
        {"prompt": "a harbour", "image": upload.id, "width": 320, "height": 256, "num_inference_steps": 4}
    )
    square = picture(256, 256)
    mask = Image.new("L", (256, 256), 0)
    ImageDraw.Draw(mask).ellipse((64, 64, 192, 192), fill=255)
    inpaint_job = client.submit(
        {
            "prompt": "a cat",
            "image": data_url(square),
            "mask": data_url(mask),
            "width": 256,
            "height": 256,
            "num_inference_steps": 2,
            "num_images": 2,
        }
    )

    done = finished(client, image_job["id"])
    assert done["status"] == "SUCCEEDED", done.get("error")
    [output] = [Image.open(io.BytesIO(client.download(o["url"]))) for o in done["outputs"]]
    assert output.size == (320, 256)
    # Image-to-image runs int(4 x 0.8) = 3 of the schedule's 4 steps (the default strength), and is counted so.
    assert done["usage"]["pixel_steps"] == 320 * 256 * 3

    done = finished(client, inpaint_job["id"])
    assert done["status"] == "SUCCEEDED", done.get("error")
    outputs = [Image.open(io.BytesIO(client.download(o["url"]))).convert("RGB") for o in done["outputs"]]
    assert [o.size for o in outputs] == [(256, 256)] * 2
    assert done["usage"]["pixel_steps"] == 256 * 256 * 2 * 2  # inpainting's default strength 1.0: every step
    kept = np.asarray(mask) == 0
    want = np.asarray(square).astype(np.int16)
    for out in outputs:
        diff = np.abs(np.asarray(out).astype(np.int16) - want)
        assert diff[kept].mean() < 1.0, f"unmasked pixels moved by {diff[kept].mean():.2f} on average"
        assert diff[~kept].mean() > 10.0, "the masked area was not repainted"
    assert np.abs(np.asarray(outputs[0]).astype(np.int16) - np.asarray(outputs[1])).max() > 1  # seeds differ
