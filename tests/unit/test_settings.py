"""Settings grouped by concern still read the flat ``SDQ_<NAME>`` variables the template and local cloud set."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.settings import AccelerationSettings, Settings, WorkerSettings, environment_variables, get_settings


def test_grouped_settings_read_their_flat_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDQ_MAX_BATCH_IMAGES", "3")
    monkeypatch.setenv("SDQ_HEARTBEAT_S", "7.5")
    monkeypatch.setenv("SDQ_COMPILE", "true")
    monkeypatch.setenv("SDQ_COMPILE_AUTOTUNE", "true")  # the option `autotune` keeps its older variable name
    monkeypatch.setenv("SDQ_BATCH_BUCKETS", "1,4")
    monkeypatch.setenv("SDQ_LIMITS__MAX_STEPS", "10")
    monkeypatch.setenv("SDQ_TABLE_NAME", "jobs-here")
    settings = get_settings()
    assert (settings.worker.max_batch_images, settings.worker.heartbeat_s) == (3, 7.5)
    assert (settings.acceleration.compile, settings.acceleration.autotune) == (True, True)
    assert settings.acceleration.buckets == "1,4"
    assert settings.limits.max_steps == 10
    assert settings.table_name == "jobs-here"
    assert get_settings() is settings  # read once


def test_no_grouped_variable_takes_a_group_prefix() -> None:
    variables = environment_variables()
    assert {"SDQ_MAX_BATCH_IMAGES", "SDQ_XRAY", "SDQ_COMPILE_WARMUP", "SDQ_PRECISION"} <= variables
    assert not {v for v in variables if v.startswith(("SDQ_WORKER", "SDQ_ACCELERATION"))}


def test_a_grouped_setting_given_flat_reaches_its_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDQ_GRACE_S", "5")
    # Keyword names are the variables' (compile_autotune for SDQ_COMPILE_AUTOTUNE); the rest still comes from env.
    settings = Settings(max_batch_images=2, compile_autotune=True, bucket="b")
    assert settings.worker == WorkerSettings(max_batch_images=2, grace_s=5)
    assert settings.acceleration == AccelerationSettings(autotune=True)
    assert settings.bucket == "b"
    with pytest.raises(ValidationError, match="not both"):
        Settings(max_batch_images=2, worker=WorkerSettings())


def test_the_default_model_is_one_a_request_may_name_and_the_model_list_says_so() -> None:
    """An allowlist that leaves out the default model (AllowedModels without ModelId) still accepts it by name, as
    it runs it for requests that name none: GET /v1/models lists only models a request may name."""
    from shared.contracts import GenerationRequest
    from workflows.modelcatalog import model_catalog

    settings = Settings(models=["shapes"], default_model="tiny")
    assert settings.models == ["shapes", "tiny"]
    named = GenerationRequest.model_validate({"prompt": "a fox", "model": "tiny"}, context={"settings": settings})
    assert named.model == "tiny"
    assert [(m.id, m.default) for m in model_catalog(settings).models] == [("tiny", True), ("shapes", False)]
