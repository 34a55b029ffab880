"""``sdq admin models import``: a model folder into the stack's bucket, whose printed registry entry a worker's loader
fetches and verifies (the local cloud's bucket here; a deployed stack's with ``--stack``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cli.main import main
from shared.modelregistry import ModelEntry, weight_checksums
from tests.integration.conftest import RunningService
from workflows.generation.models import ensure_tiny_model, registered_folder, verify_architecture, verify_weights


def test_an_imported_model_is_fetched_and_verified_from_the_bucket(
    service: RunningService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = ensure_tiny_model(tmp_path / "source")
    model_id = f"tiny-copy-{time.monotonic_ns()}"
    monkeypatch.setenv("SDQ_STATE_DIR", str(service.state_dir))
    args = ["admin", "models", "import", model_id, "--from", str(folder), "--revision", "r1", "--architecture", "tiny"]
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    entry = ModelEntry.model_validate(json.loads(capsys.readouterr().out))

    bucket = service.env["SDQ_BUCKET"]
    assert entry.source == f"s3://{bucket}/models/{model_id}/r1"
    assert entry.revision == "r1"
    assert entry.checksums == weight_checksums(folder)
    assert entry.checksums  # the tiny model has weight files, and each one is listed
    keys = {
        o["Key"] for o in service.boto("s3").list_objects_v2(Bucket=bucket, Prefix=f"models/{model_id}/")["Contents"]
    }
    assert f"models/{model_id}/r1/model_index.json" in keys

    # The worker's loader takes it from the bucket and accepts its checksums and architecture.
    fetched = registered_folder(entry, tmp_path / "cache", s3=service.boto("s3"))
    verify_architecture(entry, fetched)
    verify_weights(entry, fetched)
    assert weight_checksums(fetched) == entry.checksums

    # A revision is never overwritten: importing it again is refused and changes nothing.
    assert main([*args, "--json"]) == 1
    again = {
        o["Key"] for o in service.boto("s3").list_objects_v2(Bucket=bucket, Prefix=f"models/{model_id}/")["Contents"]
    }
    assert again == keys
