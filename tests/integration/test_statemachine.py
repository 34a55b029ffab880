"""The real ASL executed by the local cloud: postprocessing, terminal writes and signed webhooks.

Executions are started the way the worker starts them (S3 staging keys + job facts), on jobs put in RUNNING
through the repository's own claim; the webhook receiver is a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from PIL import Image
from sdq_client import ApiError
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from localcloud.receiver import ScriptedReceiver
from shared.apikeys import ApiKeyStore
from shared.contracts import Job, JobStatus, WorkflowInput
from shared.jobs import JobsRepository
from shared.media import MediaStore
from shared.settings import Settings
from shared.webhooksecrets import SecretCipher, WebhookSecrets
from tests.integration.conftest import RunningService, service_fixture, wait_until
from tests.integration.executions import ServiceHarness as Harness
from workflows.postprocess import PostprocessInput, Postprocessor
from workflows.webhooks import Notifier

service = service_fixture("sdq-sfn", {"SDQ_MAX_UNFINISHED_JOBS_PER_TENANT": "1000"})


@pytest.fixture
def harness(service: RunningService) -> tuple[Harness, Any]:
    tenant, client = service.new_named_tenant("sfn")
    return Harness(service, tenant), client


def test_happy_path_with_callback_delivers_one_signed_job_succeeded(
    harness: tuple[Harness, Any], receiver: ScriptedReceiver
) -> None:
    h, client = harness
    receiver.secret = client.webhook_secret()
    job = h.running_job(receiver.url, num_images=2, output_format="webp", quality=80)
    arn = h.start(job, h.stage(job, 2))
    assert h.wait(arn) == "SUCCEEDED"
    assert h.entered_states(arn) == [
        "Route",
        "Postprocess",
        "Postprocessed",
        "MarkSucceeded",
        "CountSucceeded",
        "HasCallback",
        "Notify",
        "WebhookRetryDue",
        "Done",
    ]
    view = client.get(job.job_id)
    assert view["status"] == "SUCCEEDED"
    assert [o["content_type"] for o in view["outputs"]] == ["image/webp", "image/webp"]
    image = Image.open(io.BytesIO(client.download(view["outputs"][1]["url"])))
    assert image.size == (256, 256)
    assert json.loads(image.getexif().get_ifd(0x8769)[0x9286][8:])["seed"] == job.request.seed + 1
    thumb = Image.open(io.BytesIO(client.download(view["outputs"][0]["thumbnail_url"])))
    assert max(thumb.size) <= 256
    # Staging objects are gone once outputs exist.
    assert "Contents" not in h.s3.list_objects_v2(Bucket=h.bucket, Prefix=f"staging/{job.job_id}/")
    [delivery] = receiver.deliveries
    assert delivery.verified
    assert delivery.webhook_id == f"msg_{job.job_id}_job_succeeded"
    body = delivery.json()
    assert body["type"] == "job.succeeded"
    assert body["data"]["id"] == job.job_id
    assert len(body["data"]["outputs"]) == 2
    assert view["webhook"]["state"] == "delivered"
    assert view["webhook"]["attempts"] == 1


def test_happy_path_without_callback_sends_nothing(harness: tuple[Harness, Any], receiver: ScriptedReceiver) -> None:
    h, client = harness
    job = h.running_job(None)
    arn = h.start(job, h.stage(job))
    assert h.wait(arn) == "SUCCEEDED"
    assert h.entered_states(arn) == [
        "Route",
        "Postprocess",
        "Postprocessed",
        "MarkSucceeded",
        "CountSucceeded",
        "HasCallback",
        "Done",
    ]
    assert client.get(job.job_id)["status"] == "SUCCEEDED"
    assert client.get(job.job_id)["webhook"] is None
    assert receiver.deliveries == []


def test_postprocess_failure_marks_failed_and_sends_job_failed(
    harness: tuple[Harness, Any], receiver: ScriptedReceiver
) -> None:
    h, client = harness
    receiver.secret = client.webhook_secret()
    job = h.running_job(receiver.url)
    arn = h.start(job, [f"staging/{job.job_id}/missing.png"])
    assert h.wait(arn) == "SUCCEEDED"
    assert "MarkFailed" in h.entered_states(arn)
    view = client.get(job.job_id)
    assert view["status"] == "FAILED"
    assert view["error"] == {
        "code": "POSTPROCESS_FAILED",
        "message": "Generated image 0 was lost before it was stored.",
    }
    [delivery] = receiver.deliveries
    assert delivery.verified
    assert delivery.json()["type"] == "job.failed"


def test_worker_reported_failure_takes_the_failure_path(
    harness: tuple[Harness, Any], receiver: ScriptedReceiver
) -> None:
    h, client = harness
    receiver.secret = client.webhook_secret()
    job = h.running_job(receiver.url)
    arn = h.start(job, [], worker_error={"code": "OUT_OF_MEMORY", "message": "CUDA out of memory"})
    assert h.wait(arn) == "SUCCEEDED"
    assert h.entered_states(arn)[:3] == ["Route", "WorkerFailure", "MarkFailed"]
    assert client.get(job.job_id)["error"] == {"code": "OUT_OF_MEMORY", "message": "CUDA out of memory"}
    assert [d.json()["type"] for d in receiver.deliveries] == ["job.failed"]


def test_receiver_500_500_200_is_delivered_on_the_third_attempt_with_one_webhook_id(
    harness: tuple[Harness, Any], receiver: ScriptedReceiver
) -> None:
    h, client = harness
    receiver.secret = client.webhook_secret()
    receiver.script = [500, 500, 200]
    job = h.running_job(receiver.url)
    assert h.wait(h.start(job, h.stage(job))) == "SUCCEEDED"
    assert [d.answered for d in receiver.deliveries] == [500, 500, 200]
    assert len({d.webhook_id for d in receiver.deliveries}) == 1
    assert all(d.verified for d in receiver.deliveries)
    webhook = client.get(job.job_id)["webhook"]
    assert webhook["state"] == "delivered"
    assert webhook["attempts"] == 3
    assert webhook["delivered_at"] is not None


def test_hanging_receiver_times_out_then_the_retry_delivers(
    harness: tuple[Harness, Any], receiver: ScriptedReceiver
) -> None:
    h, client = harness
    receiver.secret = client.webhook_secret()
    receiver.script = ["hang", 200]
    job = h.running_job(receiver.url)
    assert h.wait(h.start(job, h.stage(job)), timeout_s=90) == "SUCCEEDED"
    assert len(receiver.deliveries) == 2
    webhook = client.get(job.job_id)["webhook"]
    assert webhook["state"] == "delivered"
    assert webhook["attempts"] == 2


@pytest.mark.parametrize(("answer", "expected_error"), [(410, "HTTP 410"), ("redirect", "redirect not followed")])
def test_410_and_redirects_give_up_without_retrying(
    harness: tuple[Harness, Any], receiver: ScriptedReceiver, answer: int | str, expected_error: str
) -> None:
    h, client = harness
    receiver.script = [answer]
    job = h.running_job(receiver.url)
    assert h.wait(h.start(job, h.stage(job))) == "SUCCEEDED"
    assert len(receiver.deliveries) == 1
    view = client.get(job.job_id)
    assert view["status"] == "SUCCEEDED"  # webhook trouble never changes the job
    assert view["webhook"]["state"] == "failed"
    assert expected_error in view["webhook"]["last_error"]


def test_receiver_down_for_the_whole_schedule_then_redeliver_works(
    harness: tuple[Harness, Any], receiver: ScriptedReceiver
) -> None:
    h, client = harness
    receiver.secret = client.webhook_secret()
    receiver.default = 503
    job = h.running_job(receiver.url)
    assert h.wait(h.start(job, h.stage(job)), timeout_s=120) == "SUCCEEDED"
    attempts = len(receiver.deliveries)
    assert attempts == 1 + len(json.loads(h.service.env["SDQ_WEBHOOK_RETRY_SCHEDULE_S"]))  # the first, then each retry
    view = client.get(job.job_id)
    assert view["status"] == "SUCCEEDED"
    assert view["webhook"]["state"] == "failed"
    receiver.default = 200
    client.redeliver(job.job_id)
    wait_until(lambda: client.get(job.job_id)["webhook"]["state"] == "delivered", 60, "the redelivery")
    ids = {d.webhook_id for d in receiver.deliveries}
    assert ids == {f"msg_{job.job_id}_job_succeeded"}
    assert receiver.deliveries[-1].verified


def test_a_job_whose_webhook_events_leave_out_completed_gets_no_terminal_webhook(
    harness: tuple[Harness, Any], receiver: ScriptedReceiver
) -> None:
    """A request names the events it wants: one that asked only for started/progress is never sent its terminal
    event, by its own execution or by a notice (a cancel's, a redelivery's), and its record says none was asked."""
    h, client = harness
    job = h.running_job(receiver.url, webhook_events=["started"])
    arn = h.start(job, h.stage(job))
    assert h.wait(arn) == "SUCCEEDED"
    assert "Notify" not in h.entered_states(arn)  # the worker's has_callback says no terminal webhook is wanted
    notice = h.sfn.start_execution(
        stateMachineArn=h.machine,
        name=f"{job.job_id}-succeeded",
        input=json.dumps(WorkflowInput.notice(job, reason="succeeded").payload()),
    )["executionArn"]
    assert h.wait(notice) == "SUCCEEDED"
    view = client.get(job.job_id)
    assert (view["status"], view["webhook"]) == ("SUCCEEDED", None)
    with pytest.raises(ApiError) as refused:
        client.redeliver(job.job_id)
    assert refused.value.status == 409
    assert "completed" in refused.value.message
    assert receiver.deliveries == []


def test_metadata_service_callback_is_blocked_at_send_time(harness: tuple[Harness, Any]) -> None:
    h, client = harness
    # Written straight to the table: the API refuses such a URL at submit.
    job = h.running_job("https://169.254.169.254/latest/meta-data/")
    assert h.wait(h.start(job, h.stage(job))) == "SUCCEEDED"
    view = client.get(job.job_id)
    assert view["status"] == "SUCCEEDED"
    assert view["webhook"]["state"] == "blocked"


def test_cancel_racing_postprocessing_stays_cancelled(harness: tuple[Harness, Any], receiver: ScriptedReceiver) -> None:
    h, client = harness
    receiver.secret = client.webhook_secret()
    job = h.running_job(receiver.url)
    keys = h.stage(job)
    client.cancel(job.job_id)
    arn = h.start(job, keys)
    assert h.wait(arn) == "SUCCEEDED"
    assert "AlreadyFinal" in h.entered_states(arn)
    view = client.get(job.job_id)
    assert view["status"] == "CANCELLED"
    assert view["outputs"] == []
    wait_until(lambda: len(receiver.deliveries) == 1, 30, "the cancel webhook")
    assert receiver.deliveries[0].json()["type"] == "job.cancelled"


def test_an_execution_started_twice_runs_its_side_effects_once(
    harness: tuple[Harness, Any], receiver: ScriptedReceiver
) -> None:
    h, _client = harness
    job = h.running_job(receiver.url)
    keys = h.stage(job)
    arn = h.start(job, keys)
    with pytest.raises(h.sfn.exceptions.ExecutionAlreadyExists):
        h.start(job, keys, retried=True)
    assert h.wait(arn) == "SUCCEEDED"
    time.sleep(1)
    assert len(receiver.deliveries) == 1
    names = [
        e["name"] for e in h.sfn.list_executions(stateMachineArn=h.service.env["SDQ_STATE_MACHINE_ARN"])["executions"]
    ]
    assert names.count(f"{job.job_id}-{job.attempt}") == 1


def rotate_via_api(service: RunningService, tenant: str) -> dict[str, Any]:
    """``POST /v1/webhook-secret/rotate`` as the tenant (a fresh API key of its own): the whole response body."""
    key = ApiKeyStore(service.boto("dynamodb"), service.table).create(tenant).plaintext
    with service.http() as http:
        resp = http.post("/v1/webhook-secret/rotate", headers={"x-api-key": key})
    assert resp.status_code == 200
    return dict(resp.json())


def secrets_at(
    service: RunningService, at: float, overlap_s: int = Settings.model_fields["webhook_secret_overlap_s"].default
) -> WebhookSecrets:
    """The secret store the Notify task uses, on the same table, with its clock stopped at ``at`` (by default with
    the overlap the stack runs with: the setting's default)."""
    cipher = SecretCipher(service.boto("kms"), service.env["SDQ_WEBHOOK_SECRETS_KEY"])  # the stack's own key
    return WebhookSecrets(service.boto("dynamodb"), service.table, overlap_s=overlap_s, now=lambda: at, cipher=cipher)


def signatures(delivery: Any) -> list[str]:
    return str(delivery.headers["webhook-signature"]).split(" ")


def test_after_a_rotation_webhooks_verify_with_the_old_and_the_new_secret(
    harness: tuple[Harness, Any], receiver: ScriptedReceiver
) -> None:
    h, client = harness
    old = client.webhook_secret()
    assert old.startswith("whsec_")
    assert client.webhook_secret() == old
    new = rotate_via_api(h.service, h.tenant)["secret"]
    assert new != old
    assert client.webhook_secret() == new
    receiver.secret = old  # a receiver that has not deployed the new secret yet
    job = h.running_job(receiver.url)
    assert h.wait(h.start(job, h.stage(job))) == "SUCCEEDED"
    [delivery] = receiver.deliveries
    assert delivery.verified
    assert len(signatures(delivery)) == 2
    for secret in (new, old):
        assert Webhook(secret).verify(delivery.body, delivery.headers)["data"]["id"] == job.job_id
    assert delivery.headers["webhook-id"] == f"msg_{job.job_id}_job_succeeded"


def test_once_the_overlap_is_over_webhooks_verify_only_with_the_new_secret(
    harness: tuple[Harness, Any], receiver: ScriptedReceiver
) -> None:
    h, client = harness
    old = client.webhook_secret()
    until = datetime.fromisoformat(rotate_via_api(h.service, h.tenant)["previous_secret_valid_until"]).timestamp()
    new = client.webhook_secret()
    job = h.running_job(receiver.url)
    assert h.wait(h.start(job, h.stage(job))) == "SUCCEEDED"  # its webhook, sent within the overlap
    settings = Settings(allow_loopback_callbacks=True)
    media = MediaStore(h.s3, h.bucket)
    # The same job's webhook sent again by the Notify task's code, against the same cloud, with the secret
    # store's clock stopped one second before the overlap ends, then at its end.
    for at in (until - 1, until):
        Notifier(h.repo, media, secrets_at(h.service, at), settings).notify(job.job_id, h.tenant)
    in_overlap, last_second, after = receiver.deliveries
    assert len(signatures(in_overlap)) == len(signatures(last_second)) == 2
    Webhook(old).verify(last_second.body, last_second.headers)
    assert signatures(after) == [Webhook(new).sign(after.webhook_id, _sent_at(after), after.body)]
    Webhook(new).verify(after.body, after.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(after.body, after.headers)
    # Same message identity as before the overlap ended: receivers dedupe across the rotation.
    assert {d.webhook_id for d in receiver.deliveries} == {f"msg_{job.job_id}_job_succeeded"}


def _sent_at(delivery: Any) -> datetime:
    return datetime.fromtimestamp(int(delivery.headers["webhook-timestamp"]), UTC)


def test_rotating_without_an_overlap_or_twice_keeps_at_most_the_immediately_previous_secret(
    harness: tuple[Harness, Any],
) -> None:
    h, client = harness
    now = time.time()
    first = client.webhook_secret()
    store = secrets_at(h.service, now, overlap_s=600)
    second = store.rotate(h.tenant)
    assert second.previous_valid_until == datetime.fromtimestamp(math.ceil(now) + 600, UTC)
    third = store.rotate(h.tenant)
    assert store.signing_secrets(h.tenant) == [third.secret, second.secret]  # `first` no longer signs
    assert first not in store.signing_secrets(h.tenant)
    # Without an overlap the replaced secret stops signing at once, and nothing says it still does.
    unlapped = secrets_at(h.service, now, overlap_s=0).rotate(h.tenant)
    assert unlapped.previous_valid_until is None
    assert store.signing_secrets(h.tenant) == [unlapped.secret]
    assert client.webhook_secret() == unlapped.secret


def test_postprocess_rerun_for_the_same_job_gives_the_same_outputs(harness: tuple[Harness, Any]) -> None:
    h, _client = harness
    job = h.running_job(None, num_images=2, output_format="jpeg", quality=70)
    keys = h.stage(job, 2)
    lam = h.service.boto("lambda")
    name = next(
        f["FunctionName"] for f in lam.list_functions()["Functions"] if "PostprocessFunction" in f["FunctionName"]
    )
    payload = json.dumps({"job_id": job.job_id, "tenant": job.tenant, "attempt": job.attempt, "staging_keys": keys})
    first = json.loads(lam.invoke(FunctionName=name, Payload=payload.encode())["Payload"].read())
    again = json.loads(lam.invoke(FunctionName=name, Payload=payload.encode())["Payload"].read())
    assert len(first["outputs"]) == 2
    assert again["outputs"] == first["outputs"]  # same keys, sizes and sha256 although staging is gone now
    body = h.s3.get_object(Bucket=h.bucket, Key=first["outputs"][0]["key"])["Body"].read()
    assert hashlib.sha256(body).hexdigest() == first["outputs"][0]["sha256"]


class _WorkerMarksDuringRead(JobsRepository):
    """The race from the soak: the worker marks its hand-off POSTPROCESSING just after Postprocess read the
    job as RUNNING, so Postprocess's own RUNNING -> POSTPROCESSING write loses."""

    def get(self, job_id: str, *, tenant: str | None = None, within_retention: bool = True) -> Job:
        job = super().get(job_id, tenant=tenant, within_retention=within_retention)
        if job.status == JobStatus.RUNNING:
            self.transition(job_id, JobStatus.POSTPROCESSING, tenant=job.tenant, sources=[JobStatus.RUNNING])
        return job


def test_postprocess_finishes_a_job_the_worker_marked_postprocessing_meanwhile(harness: tuple[Harness, Any]) -> None:
    h, _client = harness
    job = h.running_job(None, num_images=2)
    keys = h.stage(job, 2)
    racing = _WorkerMarksDuringRead(h.service.boto("dynamodb"), h.service.table)
    result = Postprocessor(racing, MediaStore(h.s3, h.bucket)).run(
        PostprocessInput(job_id=job.job_id, tenant=job.tenant, attempt=job.attempt, staging_keys=keys)
    )
    assert not result.skipped
    assert [o.index for o in result.outputs] == [0, 1]
    for output in result.outputs:
        body = h.s3.get_object(Bucket=h.bucket, Key=output.key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == output.sha256
    assert h.repo.get(job.job_id).status == JobStatus.POSTPROCESSING


def end_retention(h: Harness, job: Job) -> None:
    """The job's retention ends now (its TTL a second ago), before DynamoDB's sweep removes it."""
    h.service.boto("dynamodb").update_item(
        TableName=h.service.table,
        Key={"pk": {"S": f"JOB#{job.job_id}"}},
        UpdateExpression="SET expires_at = :past",
        ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 1)}},
    )


def test_postprocess_finishes_a_job_whose_retention_ends_mid_execution(harness: tuple[Harness, Any]) -> None:
    """A job past its retention is gone for its client, but one that crosses it while its execution runs still
    gets its outputs (not POSTPROCESS_FAILED)."""
    h, _client = harness
    job = h.running_job(None, num_images=1)
    keys = h.stage(job, 1)
    end_retention(h, job)
    result = Postprocessor(h.repo, MediaStore(h.s3, h.bucket)).run(
        PostprocessInput(job_id=job.job_id, tenant=job.tenant, attempt=job.attempt, staging_keys=keys)
    )
    assert result.failure is None
    assert [o.index for o in result.outputs] == [0]


def test_postprocess_finishes_a_job_past_its_retention_after_losing_the_race_to_the_worker(
    harness: tuple[Harness, Any],
) -> None:
    """The two above at once: a job past its retention whose worker marked it POSTPROCESSING between
    Postprocess's read and its write still gets its outputs; the re-read does not take it for gone."""
    h, _client = harness
    job = h.running_job(None, num_images=1)
    keys = h.stage(job, 1)
    end_retention(h, job)
    racing = _WorkerMarksDuringRead(h.service.boto("dynamodb"), h.service.table)
    result = Postprocessor(racing, MediaStore(h.s3, h.bucket)).run(
        PostprocessInput(job_id=job.job_id, tenant=job.tenant, attempt=job.attempt, staging_keys=keys)
    )
    assert (result.failure, result.skipped) == (None, False)
    assert [o.index for o in result.outputs] == [0]
    assert h.repo.get(job.job_id).status == JobStatus.POSTPROCESSING


def test_a_skipped_postprocess_never_records_success(harness: tuple[Harness, Any]) -> None:
    h, _client = harness
    job = h.running_job(None)
    keys = h.stage(job)
    # Handed back unstarted (RUNNING -> QUEUED): the execution finds nothing of its own to finish.
    assert h.repo.release_claim(job.job_id, job.tenant, worker_id="test", attempt=job.attempt)
    arn = h.start(job, keys)
    assert h.wait(arn) == "SUCCEEDED"
    assert "AlreadyFinal" in h.entered_states(arn)
    stored = h.repo.get(job.job_id)
    assert stored.status == JobStatus.QUEUED
    assert stored.outputs == []


def test_an_execution_of_an_earlier_attempt_never_finishes_the_job(harness: tuple[Harness, Any]) -> None:
    h, _client = harness
    first = h.running_job(None)
    stale_keys = h.stage(first)
    # The first worker's lease lapsed before its hand-off went through; another worker claimed the job again.
    second = h.repo.claim(first.job_id, first.tenant, worker_id="other", lease_s=60, now=time.time() + 120)
    assert second.attempt == first.attempt + 1

    stale = h.start(first, stale_keys)
    assert h.wait(stale) == "SUCCEEDED"
    assert "AlreadyFinal" in h.entered_states(stale)
    job = h.repo.get(first.job_id)
    assert (job.status, job.attempt, job.outputs) == (JobStatus.RUNNING, second.attempt, [])

    # The same once the second worker marked its own hand-off: POSTPROCESSING, but not the stale attempt's.
    h.repo.transition(first.job_id, JobStatus.POSTPROCESSING, tenant=first.tenant, sources=[JobStatus.RUNNING])
    again = h.sfn.start_execution(
        stateMachineArn=h.service.env["SDQ_STATE_MACHINE_ARN"],
        name=f"{first.job_id}-{first.attempt}-again",
        input=json.dumps(
            {"job_id": first.job_id, "tenant": first.tenant, "attempt": first.attempt, "staging_keys": stale_keys}
        ),
    )["executionArn"]
    assert h.wait(again) == "SUCCEEDED"
    assert "AlreadyFinal" in h.entered_states(again)
    job = h.repo.get(first.job_id)
    assert (job.status, job.outputs) == (JobStatus.POSTPROCESSING, [])

    fresh = h.start(second, h.stage(second))
    assert h.wait(fresh) == "SUCCEEDED"
    done = h.repo.get(first.job_id)
    assert done.status == JobStatus.SUCCEEDED
    assert [o.index for o in done.outputs] == [0]


def test_a_failure_reported_for_an_earlier_attempt_does_not_fail_the_job(harness: tuple[Harness, Any]) -> None:
    h, _client = harness
    first = h.running_job(None)
    second = h.repo.claim(first.job_id, first.tenant, worker_id="other", lease_s=60, now=time.time() + 120)
    arn = h.start(first, [], worker_error={"code": "OUT_OF_MEMORY", "message": "stale report"})
    assert h.wait(arn) == "SUCCEEDED"
    assert "AlreadyFinal" in h.entered_states(arn)
    job = h.repo.get(first.job_id)
    assert (job.status, job.attempt, job.error) == (JobStatus.RUNNING, second.attempt, None)


def test_a_stale_failure_report_does_not_fail_a_job_handed_back_to_the_queue(harness: tuple[Harness, Any]) -> None:
    h, client = harness
    first = h.running_job(None)
    # The first worker's lease lapsed; a second worker claimed the job, then handed it back unstarted, which
    # gives the attempt back: the job is QUEUED at the first worker's attempt number again.
    second = h.repo.claim(first.job_id, first.tenant, worker_id="other", lease_s=60, now=time.time() + 120)
    assert h.repo.release_claim(first.job_id, first.tenant, worker_id="other", attempt=second.attempt)
    assert (h.repo.get(first.job_id).status, h.repo.get(first.job_id).attempt) == (JobStatus.QUEUED, first.attempt)
    # The first worker's late failure report names that attempt.
    arn = h.start(first, [], worker_error={"code": "OUT_OF_MEMORY", "message": "stale report"})
    assert h.wait(arn) == "SUCCEEDED"
    assert "AlreadyFinal" in h.entered_states(arn)
    view = client.get(first.job_id)
    assert (view["status"], view["error"]) == ("QUEUED", None)
