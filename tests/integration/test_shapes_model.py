"""The built-in ``shapes`` model draws what the prompt says, through the whole local stack: `sdq up --model
shapes`, real HTTP submits, a worker process that loads the shipped weights (checked against their checksums),
the state machine, S3 outputs read back through presigned URLs. Three prompts go into one batch (one pipeline
call) and each job gets its own picture back: the colours at the centre and in the corners, and the shape's
fill of its bounding box, are measured on the PNGs (``training/shapes_measure.py``).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from PIL import Image

from shared.shapesmodel import SHAPES_MODEL_REVISION, shapes_caption
from tests.integration.conftest import RunningService, start_service, stop_service, wait_until
from tests.integration.test_worker import all_terminal, statuses
from training.shapes_measure import read_picture

# The service's default scheduler and guidance; 20 steps, where the model was measured (fewer blur its colours).
SHAPE_JOB = {"width": 256, "height": 256, "num_inference_steps": 20, "scheduler": "euler_a", "guidance_scale": 7.5}
WORKER = {
    "SDQ_VISIBILITY_TIMEOUT_S": "60",
    "SDQ_HEARTBEAT_S": "2",
    "SDQ_RECEIVE_WAIT_S": "1",
    "SDQ_MAX_BATCH_WAIT_MS": "1500",
    "SDQ_MAX_BATCH_IMAGES": "8",
    "SDQ_GRACE_S": "60",
    "HF_HUB_OFFLINE": "1",
}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """`sdq up --model shapes` (control plane only; the test starts the worker once its jobs are queued)."""
    running = start_service(
        tmp_path_factory.mktemp("sdq-shapes"), {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "100"}, args=("--model", "shapes")
    )
    yield running
    stop_service(running)


def test_each_job_of_a_mixed_batch_gets_the_picture_its_prompt_asks_for(service: RunningService) -> None:
    client = service.new_tenant("shapes")
    asks = {
        "red circle": ("red", "circle", "blue"),
        "green square": ("green", "square", "white"),
        "white triangle": ("white", "triangle", "black"),
    }
    ids = {
        name: client.submit({"prompt": shapes_caption(*ask), "seed": 1, **SHAPE_JOB})["id"]
        for name, ask in asks.items()
    }
    # Queued before the worker starts, so its first receive takes all three into one batch.
    service.start_worker(env=WORKER)
    wait_until(all_terminal(client, list(ids.values())), 240, "three shapes jobs to finish")
    assert set(statuses(client, list(ids.values())).values()) == {"SUCCEEDED"}

    for name, (colour, shape, background) in asks.items():
        job = client.get(ids[name])
        assert (job["request"]["model"], job["model_revision"]) == ("shapes", SHAPES_MODEL_REVISION)
        assert job["model_note"] is None  # not noise
        assert job["usage"]["batch_jobs"] == 3, "the three prompts shared one pipeline call"
        picture = Image.open(io.BytesIO(client.download(job["outputs"][0]["url"])))
        reading = read_picture(picture)
        assert (reading.colour, reading.background) == (colour, background), (name, reading)
        assert reading.shape == shape, (name, reading)
