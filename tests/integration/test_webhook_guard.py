"""Webhook SSRF guard at send time, with the local profile's loopback allowance switched off."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator

import pytest
from PIL import Image

from localcloud.receiver import ScriptedReceiver
from shared.jobs import JobsRepository
from tests.integration.conftest import RunningService, start_service, stop_service, store_queued_job


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    running = start_service(tmp_path_factory.mktemp("sdq-guard"), {"SDQ_ALLOW_LOOPBACK_CALLBACKS": "false"})
    yield running
    stop_service(running)


def test_loopback_callbacks_are_refused_at_submit_and_at_send_time(service: RunningService) -> None:
    receiver = ScriptedReceiver().start()
    try:
        tenant, client = service.new_named_tenant("guard")
        with service.http() as http:
            resp = http.post(
                "/v1/jobs",
                json={"prompt": "x", "callback_url": receiver.url},
                headers={"x-api-key": service.api_key},
            )
        assert resp.status_code == 422
        assert resp.json()["error"]["details"][0]["loc"] == ["body", "callback_url"]

        # A job that carries such a URL anyway (written straight to the table) is still never delivered.
        repo = JobsRepository(service.boto("dynamodb"), service.table)
        job = store_queued_job(repo, tenant, callback_url=receiver.url)
        job = repo.claim(job.job_id, tenant, worker_id="test", lease_s=60, now=time.time())
        buf = io.BytesIO()
        Image.new("RGB", (256, 256)).save(buf, format="PNG")
        key = f"staging/{job.job_id}/1/0.png"
        service.boto("s3").put_object(Bucket=service.env["SDQ_BUCKET"], Key=key, Body=buf.getvalue())
        sfn = service.boto("stepfunctions")
        arn = sfn.start_execution(
            stateMachineArn=service.env["SDQ_STATE_MACHINE_ARN"],
            name=f"{job.job_id}-1",
            input=json.dumps(
                {"job_id": job.job_id, "tenant": tenant, "attempt": 1, "staging_keys": [key], "has_callback": True}
            ),
        )["executionArn"]
        deadline = time.monotonic() + 60
        while sfn.describe_execution(executionArn=arn)["status"] == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.3)
        view = client.get(job.job_id)
        assert view["status"] == "SUCCEEDED"
        assert view["webhook"]["state"] == "blocked"
        assert receiver.deliveries == []
    finally:
        receiver.stop()
