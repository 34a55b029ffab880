"""Input images through the running service: POST /v1/uploads, the presigned POST, and jobs that name them."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
from typing import Any

import httpx
import pytest
from PIL import Image
from sdq_client import Client

from shared.apikeys import ApiKeyStore
from shared.contracts import JobStatus
from shared.jobs import JobsRepository
from shared.media import input_key
from tests.integration.conftest import RunningService, service_fixture
from tests.unit.test_preprocessing import declared_png, encoded

MAX_INPUT_BYTES = 300_000
# Uploads capped small, so the too-large case needs no 10 MB file.
service = service_fixture(
    "sdq-uploads",
    {"SDQ_LIMITS__MAX_INPUT_BYTES": str(MAX_INPUT_BYTES), "SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "1000"},
)


class Tenant:
    def __init__(self, service: RunningService, name: str) -> None:
        self.service = service
        self.name = f"{name}-{time.monotonic_ns()}"
        self.key = ApiKeyStore(service.boto("dynamodb"), service.table).create(self.name).plaintext
        self.http = httpx.Client(base_url=service.api_url, headers={"x-api-key": self.key}, timeout=30)

    def upload(self, data: bytes, content_type: str = "image/png") -> str:
        answer = self.http.post("/v1/uploads")
        assert answer.status_code == 201, answer.text
        ticket = answer.json()
        form = {**ticket["fields"], "Content-Type": content_type}
        sent = httpx.post(ticket["url"], data=form, files={"file": ("input", data, content_type)}, timeout=30)
        assert sent.status_code in (200, 201, 204), sent.text
        return str(ticket["id"])

    def submit(self, **fields: Any) -> httpx.Response:
        return self.http.post("/v1/jobs", json={"prompt": "a fox", **fields})

    def stored(self) -> list[str]:
        """Every object under this tenant's job folders."""
        s3 = self.service.boto("s3")
        listed = s3.list_objects_v2(Bucket=self.service.env["SDQ_BUCKET"], Prefix=f"outputs/{self.name}/")
        return [o["Key"] for o in listed.get("Contents", [])]

    def read(self, key: str) -> bytes:
        s3 = self.service.boto("s3")
        return bytes(s3.get_object(Bucket=self.service.env["SDQ_BUCKET"], Key=key)["Body"].read())


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_an_uploaded_image_is_checked_and_stored_for_the_worker(service: RunningService) -> None:
    tenant = Tenant(service, "upl")
    ticket = tenant.http.post("/v1/uploads").json()
    policy = json.loads(base64.b64decode(ticket["fields"]["policy"]))
    # What S3 enforces on AWS: this key only (under the tenant's folder), a size cap and an image content type.
    assert {"key": f"uploads/{tenant.name}/{ticket['id']}"} in policy["conditions"]
    assert ["content-length-range", 1, MAX_INPUT_BYTES] in policy["conditions"]
    assert ["starts-with", "$Content-Type", "image/"] in policy["conditions"]
    assert (ticket["max_bytes"], ticket["content_type"]) == (MAX_INPUT_BYTES, "image/")

    photo = Image.new("RGB", (1024, 768), (10, 200, 10))
    upload = tenant.upload(encoded(photo, "JPEG"), "image/jpeg")
    answer = tenant.submit(image=upload, width=512, height=384, strength=0.6, seed=7)
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["request"]["image"].startswith("sha256:")
    assert job["request"]["strength"] == 0.6

    stored = tenant.read(input_key("outputs/", tenant.name, job["id"], "image"))
    assert job["request"]["image"] == "sha256:" + hashlib.sha256(stored).hexdigest()
    image = Image.open(io.BytesIO(stored))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (512, 384))
    assert tenant.http.get(f"/v1/jobs/{job['id']}").json()["request"]["image"] == job["request"]["image"]


def test_the_client_uploads_and_submits_an_image_to_image_job(service: RunningService) -> None:
    tenant = Tenant(service, "client")
    with Client(service.api_url, tenant.key) as sdq:
        upload = sdq.upload(encoded(Image.new("RGB", (256, 256), "blue")), "image/png")
        job = sdq.submit({"prompt": "a fox", "image": upload.id, "width": 256, "height": 256})
    assert job.request.strength == 0.8  # diffusers' image-to-image default
    assert job.request.image is not None
    stored = tenant.read(input_key("outputs/", tenant.name, job.id, "image"))
    assert job.request.image == "sha256:" + hashlib.sha256(stored).hexdigest()


def test_a_data_url_inpainting_job_stores_image_and_mask(service: RunningService) -> None:
    tenant = Tenant(service, "dataurl")
    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (0, 0, 128, 256))
    answer = tenant.submit(
        image=data_url(encoded(Image.new("RGB", (256, 256), "red"))),
        mask=data_url(encoded(mask)),
        width=256,
        height=256,
    )
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["request"]["strength"] == 1.0  # diffusers' inpainting default
    assert job["request"]["mask"].startswith("sha256:")
    assert sorted(tenant.stored()) == sorted(
        input_key("outputs/", tenant.name, job["id"], name) for name in ("image", "mask")
    )


def test_a_replayed_submission_keeps_the_first_jobs_inputs_only(service: RunningService) -> None:
    tenant = Tenant(service, "replay")
    body = {"image": tenant.upload(encoded(Image.new("RGB", (256, 256), "green"))), "width": 256, "height": 256}
    first = tenant.http.post("/v1/jobs", json={"prompt": "a fox", **body}, headers={"Idempotency-Key": "k-1"})
    again = tenant.http.post("/v1/jobs", json={"prompt": "a fox", **body}, headers={"Idempotency-Key": "k-1"})
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert tenant.stored() == [input_key("outputs/", tenant.name, first.json()["id"], "image")]


def test_a_cache_hit_keeps_no_inputs_of_its_own(service: RunningService) -> None:
    """An image request answered by an identical earlier job's images never runs: its normalised inputs, stored
    before the cache answered, are deleted, not left in the bucket until the outputs' lifecycle."""
    tenant = Tenant(service, "hit")
    body = {"image": data_url(encoded(Image.new("RGB", (256, 256), "blue"))), "width": 256, "height": 256, "seed": 11}
    first = tenant.submit(**body).json()
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    for status in (JobStatus.RUNNING, JobStatus.POSTPROCESSING, JobStatus.SUCCEEDED):
        repo.transition(first["id"], status, tenant=tenant.name)  # as the worker and the state machine do
    output = {"index": 0, "key": f"outputs/{tenant.name}/{first['id']}/0.png", "content_type": "image/png"}
    output |= {"width": 256, "height": 256, "bytes": 3, "sha256": "abc"}
    service.boto("dynamodb").update_item(
        TableName=service.table,
        Key={"pk": {"S": f"JOB#{first['id']}"}},
        UpdateExpression="SET outputs = :o",
        ExpressionAttributeValues={":o": {"S": json.dumps([output])}},
    )
    hit = tenant.submit(**body).json()
    assert (hit["status"], hit["cache"]["hit"], hit["cache"]["source_job"]) == ("SUCCEEDED", True, first["id"])
    assert tenant.stored() == [input_key("outputs/", tenant.name, first["id"], "image")]  # the hit's are gone


def test_a_replay_answers_its_job_after_the_upload_is_gone(service: RunningService) -> None:
    """Uploads are deleted after a day, jobs and their keys kept longer: a client retrying with its
    Idempotency-Key gets its job, not a 422 for the upload it no longer needs."""
    tenant = Tenant(service, "late-replay")
    upload = tenant.upload(encoded(Image.new("RGB", (256, 256), "green")))
    body = {"prompt": "a fox", "image": upload, "width": 256, "height": 256}
    first = tenant.http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-late"})
    assert first.status_code == 202, first.text
    service.boto("s3").delete_object(Bucket=service.env["SDQ_BUCKET"], Key=f"uploads/{tenant.name}/{upload}")
    again = tenant.http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-late"})
    assert again.status_code == 202, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    fresh = tenant.http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-new"})
    assert fresh.status_code == 422  # a new job still needs its upload
    assert "image" in json.dumps(fresh.json())


def test_bad_inputs_are_422_naming_the_field_and_change_nothing(service: RunningService) -> None:
    tenant, other = Tenant(service, "bad"), Tenant(service, "other")
    repo = JobsRepository(service.boto("dynamodb"), service.table)
    depth = service.queue_depth()
    square = encoded(Image.new("RGB", (512, 512), "white"))
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"image": tenant.upload(b"plain text, sent as a PNG")}, "not_an_image", "image"),
        ({"image": data_url(declared_png(100_000, 100_000))}, "input_dimensions", "image"),
        ({"image": other.upload(square)}, "upload_not_found", "image"),
        (
            {"image": data_url(square), "mask": data_url(encoded(Image.new("L", (256, 256))))},
            "mask_size_mismatch",
            "mask",
        ),
        ({"image": data_url(encoded(Image.new("RGB", (512, 256))))}, "input_aspect_ratio", "image"),
    ]
    for fields, code, field in cases:
        answer = tenant.submit(**fields)
        assert answer.status_code == 422, (code, answer.text)
        error = answer.json()["error"]
        assert error["code"] == code
        assert [d["loc"] for d in error["details"]] == [["body", field]]
    assert repo.count_active(tenant.name) == 0
    assert tenant.stored() == []
    assert service.queue_depth() == depth


def test_an_upload_over_the_cap_never_reaches_a_job(service: RunningService) -> None:
    tenant = Tenant(service, "big")
    big = encoded(Image.effect_noise((512, 512), 100).convert("RGB"))
    assert len(big) > MAX_INPUT_BYTES
    ticket = tenant.http.post("/v1/uploads").json()
    form = {**ticket["fields"], "Content-Type": "image/png"}
    sent = httpx.post(ticket["url"], data=form, files={"file": ("input", big, "image/png")}, timeout=30)
    if sent.status_code == 400:  # S3 enforces the policy's content-length-range (AWS does)
        assert "EntityTooLarge" in sent.text
        return
    # The local cloud's S3 (moto) takes POSTs without checking their policy: the bounded read at submit refuses it.
    assert sent.status_code == 204
    answer = tenant.submit(image=ticket["id"])
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "input_too_large"
    assert tenant.stored() == []


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_uploads_take_only_post(service: RunningService, method: str) -> None:
    answer = Tenant(service, "verbs").http.request(method, "/v1/uploads")
    assert (answer.status_code, answer.headers["Allow"]) == (405, "POST")
