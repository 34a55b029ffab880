"""Secrets stay secret: API keys stored only hashed, presigned URLs short-lived, no secret in any log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from localcloud.receiver import ScriptedReceiver
from tests.integration.conftest import RunningService, start_service, stop_service

PRESIGN_EXPIRY_S = 120


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    running = start_service(tmp_path_factory.mktemp("sdq-secrets"), {"SDQ_PRESIGN_EXPIRY_S": str(PRESIGN_EXPIRY_S)})
    yield running
    stop_service(running)


def test_keys_hashed_urls_short_lived_and_logs_free_of_secrets(service: RunningService) -> None:
    receiver = ScriptedReceiver().start()
    try:
        client = service.new_tenant("hygiene")
        secret = client.webhook_secret()
        receiver.secret = secret
        worker = service.start_worker(env={"SDQ_RECEIVE_WAIT_S": "1", "SDQ_MAX_BATCH_WAIT_MS": "100"})
        job = client.submit(
            {
                "prompt": "secret fox",
                "width": 256,
                "height": 256,
                "num_inference_steps": 2,
                "callback_url": receiver.url,
            }
        )
        deadline = time.monotonic() + 120
        while client.get(job["id"])["status"] != "SUCCEEDED" and time.monotonic() < deadline:
            time.sleep(0.5)
        view = client.get(job["id"])
        assert view["status"] == "SUCCEEDED"
        deadline = time.monotonic() + 30
        while not receiver.deliveries and time.monotonic() < deadline:
            time.sleep(0.3)
        assert receiver.deliveries[0].verified

        # Presigned URLs expire within the configured time.
        query = parse_qs(urlsplit(view["outputs"][0]["url"]).query)
        expires = int(query["Expires"][0]) if "Expires" in query else int(time.time()) + int(query["X-Amz-Expires"][0])
        assert 0 < expires - time.time() <= PRESIGN_EXPIRY_S + 5

        # The table holds API keys only as their SHA-256.
        items = service.boto("dynamodb").scan(TableName=service.table)["Items"]
        stored = " ".join(str(item) for item in items)
        assert service.api_key not in stored
        assert any(k["pk"]["S"].startswith("APIKEY#") for k in items)

        worker.terminate()
        worker.wait(timeout=60)
        # Every structured log line of the API, the Lambdas and the worker (the `sdq up` banner, which shows
        # the development key on purpose, is console output, not a log).
        text = service.log_path.read_text(errors="replace") + "".join(
            p.read_text(errors="replace") for p in service.state_dir.glob("worker-*.log")
        )
        logs = "\n".join(line for line in text.splitlines() if line.startswith("{"))
        assert "webhook attempt" in logs  # the logs did record the delivery ...
        for leaked in (service.api_key, secret, secret.removeprefix("whsec_"), "Signature=", "X-Amz-Signature"):
            assert leaked not in logs  # ... but no key, secret or presigned URL
    finally:
        receiver.stop()
