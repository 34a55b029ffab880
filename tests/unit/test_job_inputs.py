"""The worker's side of image-to-image and inpainting: a job's stored inputs read from the bucket (as submit stored
them), checked against the digests the job names, and handed to the pipeline with the batch's mode and strength;
a job whose inputs cannot be used fails with its own code while the rest of its batch runs."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from moto import mock_aws
from PIL import Image
from pydantic import ValidationError
from ulid import ULID

from shared.contracts import GenerationRequest, JobErrorCode
from shared.jobs import JobsRepository
from shared.media import MediaStore, input_key
from shared.settings import RequestLimits, Settings
from tests.unit.workerfakes import claimed, held
from workflows.generation.batcher import Batcher, Pending
from workflows.generation.batchreport import GpuUse
from workflows.generation.batchrun import BatchRunner
from workflows.generation.claims import ClaimedBatch
from workflows.generation.heldmessages import Held
from workflows.generation.inputs import InputReader, InputUnavailable
from workflows.generation.pipeline import BatchShape, ImageJob
from workflows.generation.progress import ProgressRecorder
from workflows.preprocessing import Inputs, normalise

BUCKET = "media"
PREFIX = "outputs/"
SIZE = 256


@pytest.fixture
def media(monkeypatch: pytest.MonkeyPatch) -> Iterator[MediaStore]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        yield MediaStore(s3, BUCKET)


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def submitted(media: MediaStore, *, colour: tuple[int, int, int], inpaint: bool = False, strength: float = 0.6) -> Held:
    """A claimed image job whose inputs were checked and stored as the submit path does (preprocessing's Inputs)."""
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, SIZE // 2, SIZE))
    prepared = normalise(
        png(Image.new("RGB", (SIZE, SIZE), colour)),
        png(mask) if inpaint else None,
        width=SIZE,
        height=SIZE,
        limits=RequestLimits(),
    )
    h = claimed(held(strength=strength, **{i.name: i.digest for i in prepared.inputs}))  # as the job stores them
    Inputs(media, Settings(outputs_prefix=PREFIX)).store(prepared, h.tenant, h.job_id)
    return h


class RecordingGenerator:
    model_name = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[BatchShape, list[ImageJob]]] = []

    def generate(
        self, jobs: Sequence[ImageJob], shape: BatchShape, on_step: Callable[[int, int], None] | None = None
    ) -> dict[str, list[Image.Image]]:
        self.calls.append((shape, list(jobs)))
        return {j.key: [Image.new("RGB", (shape.width, shape.height))] * j.num_images for j in jobs}


class RecordingHandOff:
    def __init__(self, media: MediaStore) -> None:
        self.media = media  # as HandOff names its bucket: the batch run reads the inputs from it
        self.completed: list[str] = []
        self.failed: list[tuple[str, str]] = []

    def complete_later(
        self, last_write: Future[None] | None, held: Held, images: list[Image.Image], use: GpuUse | None = None
    ) -> None:
        self.completed.append(held.job_id)

    def fail_later(self, held: Held, code: JobErrorCode, message: str) -> None:
        self.failed.append((held.job_id, code))

    def drop_later(self, held: Held) -> None:
        raise AssertionError("nothing is cancelled here")

    def drop(self, held: Held) -> None:
        raise AssertionError("nothing is cancelled here")


def run_batch(
    media: MediaStore, jobs: list[Held], monkeypatch: pytest.MonkeyPatch
) -> tuple[RecordingGenerator, RecordingHandOff]:
    monkeypatch.setenv("SDQ_OUTPUTS_PREFIX", PREFIX)
    gpu, handoff, hard_stop = RecordingGenerator(), RecordingHandOff(media), threading.Event()
    with ThreadPoolExecutor(1) as writers, ThreadPoolExecutor(1) as table:
        progress = ProgressRecorder(
            JobsRepository(boto3.client("dynamodb", region_name="us-east-1"), "unused"),  # the fake makes no steps
            worker_id="w",
            interval_s=1.0,
            hard_stop=hard_stop,
            writers=writers,
            table_pool=table,
        )
        BatchRunner(gpu, progress, handoff, hard_stop).run(ClaimedBatch(jobs, seconds=0.0))
    return gpu, handoff


def test_an_image_batch_gets_each_jobs_stored_input_with_its_mode_and_strength(
    media: MediaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [submitted(media, colour=(200, 0, 0)), submitted(media, colour=(0, 0, 200))]
    gpu, handoff = run_batch(media, jobs, monkeypatch)
    [(shape, work)] = gpu.calls
    assert (shape.mode, shape.strength, shape.width, shape.height) == ("image", 0.6, SIZE, SIZE)
    assert [w.image.getpixel((5, 5)) if w.image else None for w in work] == [(200, 0, 0), (0, 0, 200)]
    assert [w.mask for w in work] == [None, None]
    assert handoff.completed == [h.job_id for h in jobs]


def test_an_inpaint_batch_gets_the_mask_too(media: MediaStore, monkeypatch: pytest.MonkeyPatch) -> None:
    job = submitted(media, colour=(10, 200, 10), inpaint=True, strength=1.0)
    gpu, handoff = run_batch(media, [job], monkeypatch)
    [(shape, [work])] = gpu.calls
    assert (shape.mode, shape.strength) == ("inpaint", 1.0)
    assert work.mask is not None
    assert work.mask.mode == "L"
    assert (work.mask.getpixel((5, 5)), work.mask.getpixel((SIZE - 5, 5))) == (255, 0)
    assert handoff.completed == [job.job_id]


def test_a_job_whose_input_is_gone_fails_alone(media: MediaStore, monkeypatch: pytest.MonkeyPatch) -> None:
    kept, gone = submitted(media, colour=(1, 2, 3)), submitted(media, colour=(4, 5, 6))
    media.delete([input_key(PREFIX, gone.tenant, gone.job_id, "image")])
    gpu, handoff = run_batch(media, [kept, gone], monkeypatch)
    assert [[w.key for w in work] for _, work in gpu.calls] == [[kept.job_id]]
    assert handoff.failed == [(gone.job_id, "INPUT_NOT_FOUND")]
    assert handoff.completed == [kept.job_id]


def test_stored_bytes_other_than_those_the_job_names_are_refused(media: MediaStore) -> None:
    job = submitted(media, colour=(9, 9, 9), inpaint=True)
    reader = InputReader(media, PREFIX)
    assert reader.read(job.tenant, job.job_id, job.request).mask is not None
    key = input_key(PREFIX, job.tenant, job.job_id, "mask")
    media.put(key, png(Image.new("L", (SIZE, SIZE), 255)), "image/png")  # replaced behind the job's back
    with pytest.raises(InputUnavailable) as caught:
        reader.read(job.tenant, job.job_id, job.request)
    assert (caught.value.name, caught.value.code) == ("mask", "INPUT_CORRUPT")


@pytest.mark.parametrize(
    ("steps", "strength", "accepted"), [(2, 0.3, False), (4, 0.3, True), (1, None, False), (1, 1.0, True)]
)
def test_a_strength_that_leaves_no_step_is_refused_at_submit(
    steps: int, strength: float | None, accepted: bool
) -> None:
    """Image-to-image runs int(steps x strength) steps (diffusers): none would fail the job on the GPU."""
    fields = {"prompt": "x", "image": str(ULID()), "num_inference_steps": steps, "strength": strength}
    body = {k: v for k, v in fields.items() if v is not None}
    if accepted:
        GenerationRequest.model_validate(body)
        return
    with pytest.raises(ValidationError, match="num_inference_steps x strength must be at least 1"):
        GenerationRequest.model_validate(body)


def test_the_batcher_groups_jobs_by_mode_and_strength() -> None:
    """Same size, steps and model: text, image at two strengths and inpaint still make four batches."""
    digest = "sha256:" + "0" * 64
    kinds: dict[str, dict[str, Any]] = {
        "text": {},
        "image": {"image": digest, "strength": 0.6},
        "image-0.9": {"image": digest, "strength": 0.9},
        "inpaint": {"image": digest, "mask": digest, "strength": 1.0},
    }
    batcher: Batcher[str] = Batcher(max_images=16, max_wait_s=0.0)
    for n in range(2):
        for name, fields in kinds.items():
            request = held(**fields).request
            batcher.add(Pending.of(request, tenant="t", arrived_at=float(n), item=f"{name}#{n}"))
    batches = []
    while batch := batcher.take(now=10.0):
        batches.append(sorted(batch))
    assert sorted(batches) == sorted([f"{name}#0", f"{name}#1"] for name in kinds)


def test_a_strength_is_checked_with_the_operators_default_steps_when_steps_are_left_out() -> None:
    """The request runs the operator's default steps (SDQ_LIMITS__DEFAULT_STEPS): 4 x 0.2 leaves no step, though
    the field's own default (30) would; the refusal names the steps it will run."""
    settings = Settings(limits=RequestLimits(default_steps=4))
    body = {"prompt": "x", "image": str(ULID()), "strength": 0.2}
    with pytest.raises(ValidationError, match=r"at least 1 \(4 x 0.2\)"):
        GenerationRequest.model_validate(body, context={"settings": settings})
    GenerationRequest.model_validate({**body, "num_inference_steps": 5}, context={"settings": settings})
    GenerationRequest.model_validate({**body, "strength": 0.25}, context={"settings": settings})
