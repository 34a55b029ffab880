"""The model registry: its contract, its setting, and a worker loading an entry only when its weights check out.

Models are the built-in tiny model and copies of its folder served as local paths (no hub)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from moto import mock_aws
from pydantic import ValidationError

from handlers.worker import models_to_load
from shared.contracts import GenerationRequest
from shared.modelregistry import BUILTIN_REGISTRY, ModelRegistry, parse_registry, weight_checksums
from shared.settings import Settings
from workflows.generation.models import (
    ChecksumMismatch,
    ModelNotFoundError,
    WrongArchitecture,
    ensure_tiny_model,
    load_model,
)
from workflows.generation.pipeline import BatchShape, ImageJob, ModelNotServed, PipelineRunner

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def variant(tiny_folder: Path, tmp_path: Path) -> Path:
    """A second local model: a copy of the tiny model's folder."""
    return Path(shutil.copytree(tiny_folder, tmp_path / "variant"))


def entry(folder: Path, **fields: Any) -> dict[str, Any]:
    return {
        "id": "variant",
        "source": str(folder),
        "revision": "2026-12-06",
        "checksums": weight_checksums(folder),
        "architecture": "tiny",
        "default_width": 256,
        "default_height": 256,
        "schedulers": ["euler", "ddim"],
        **fields,
    }


def test_a_registry_is_read_from_inline_json_or_from_a_file(variant: Path, tmp_path: Path) -> None:
    body = json.dumps({"models": [entry(variant)]})
    path = tmp_path / "registry.json"
    path.write_text(body)

    for value in (body, str(path)):
        registry = parse_registry(value)
        [model] = registry.models
        assert (model.id, model.source_kind, model.revision, model.schedulers) == (
            "variant",
            "local",
            "2026-12-06",
            ("euler", "ddim"),
        )
        assert set(model.checksums) == {
            "text_encoder/model.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.safetensors",
        }


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"source": "relative/folder"}, "absolute path"),
        ({"checksums": {}}, "checksums"),
        ({"checksums": {"../unet.safetensors": "0" * 64}}, "relative to the model folder"),
        ({"checksums": {"unet/x.safetensors": "not-a-sha"}}, "pattern"),
        ({"schedulers": ["warp"]}, "unknown schedulers"),
        ({"source": "hub:just-a-name"}, "hub:<org>/<name>"),
        ({"source": "builtin:sd15"}, "only built-in model"),
        ({"default_width": 500}, "multiple of 8"),
        ({"revision": ""}, "revision"),
        ({"retired_revisions": ["2026-12-06"]}, "pinned, so it cannot be retired too"),
    ],
)
def test_an_invalid_entry_is_refused_with_what_is_wrong(variant: Path, change: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        ModelRegistry.model_validate({"models": [entry(variant, **change)]})


def test_model_ids_are_unique(variant: Path) -> None:
    with pytest.raises(ValidationError, match="unique"):
        ModelRegistry.model_validate({"models": [entry(variant), entry(variant, revision="other")]})


def test_the_setting_holds_the_registry_and_every_allowed_model_must_be_in_it(
    variant: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings().registry == BUILTIN_REGISTRY  # unset: the built-in tiny model alone
    monkeypatch.setenv("SDQ_MODEL_REGISTRY", json.dumps({"models": [entry(variant)]}))
    monkeypatch.setenv("SDQ_MODELS", '["variant"]')
    monkeypatch.setenv("SDQ_DEFAULT_MODEL", "variant")
    assert Settings().registry.ids == ["variant"]
    monkeypatch.setenv("SDQ_MODELS", '["variant", "tiny"]')
    with pytest.raises(ValidationError, match=r"\['tiny'\] are not in the model registry"):
        Settings()


def test_a_request_may_name_only_the_schedulers_of_its_model(variant: Path) -> None:
    settings = Settings(
        model_registry=json.dumps({"models": [entry(variant)]}), models=["variant"], default_model="variant"
    )
    body = {"prompt": "a fox", "scheduler": "ddim"}
    assert GenerationRequest.model_validate(body, context={"settings": settings}).scheduler == "ddim"
    with pytest.raises(ValidationError, match="model 'variant' takes the schedulers euler, ddim"):
        GenerationRequest.model_validate({**body, "scheduler": "lms"}, context={"settings": settings})


def test_a_registered_model_loads_with_its_revision_once_its_checksums_match(variant: Path) -> None:
    registry = ModelRegistry.model_validate({"models": [entry(variant)]})
    loaded = load_model("variant", device="cpu", registry=registry)
    assert (loaded.name, loaded.revision, loaded.source, loaded.is_noise_model) == (
        "variant",
        "2026-12-06",
        str(variant),
        False,
    )
    runner = PipelineRunner(loaded)
    images = runner.generate([ImageJob("a", "a fox", "", 1, 1)], BatchShape(64, 64, 2, 7.5, "euler", "variant"))
    assert images["a"][0].size == (64, 64)
    # A batch for another model is refused, never generated with this one.
    with pytest.raises(ModelNotServed):
        runner.generate([ImageJob("b", "a fox", "", 1, 1)], BatchShape(64, 64, 2, 7.5, "euler", "tiny"))


def test_a_changed_weight_file_refuses_the_model_naming_the_file(variant: Path) -> None:
    registry = ModelRegistry.model_validate({"models": [entry(variant)]})
    unet = variant / "unet" / "diffusion_pytorch_model.safetensors"
    with unet.open("r+b") as f:  # one flipped byte near the end (in the tensor data, past the header)
        f.seek(-3, 2)
        byte = f.read(1)
        f.seek(-3, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ChecksumMismatch, match=r"unet/diffusion_pytorch_model\.safetensors: sha256") as caught:
        load_model("variant", device="cpu", registry=registry)
    assert caught.value.problems.keys() == {"unet/diffusion_pytorch_model.safetensors"}


def test_a_missing_or_unlisted_weight_file_refuses_the_model(variant: Path) -> None:
    registry = ModelRegistry.model_validate({"models": [entry(variant)]})
    (variant / "vae" / "diffusion_pytorch_model.safetensors").rename(variant / "vae" / "extra.safetensors")
    with pytest.raises(ChecksumMismatch) as caught:
        load_model("variant", device="cpu", registry=registry)
    assert caught.value.problems == {
        "vae/diffusion_pytorch_model.safetensors": "missing",
        "vae/extra.safetensors": "a weight file the registry entry does not list",
    }


def test_a_model_registered_as_another_architecture_is_refused(variant: Path) -> None:
    registry = ModelRegistry.model_validate({"models": [entry(variant, architecture="sdxl")]})
    with pytest.raises(WrongArchitecture, match="registered as 'sdxl' but its folder holds a StableDiffusionPipeline"):
        load_model("variant", device="cpu", registry=registry)


def test_the_built_in_registry_loads_tiny_with_its_revision(tiny_folder: Path) -> None:
    loaded = load_model("tiny", device="cpu", cache_root=tiny_folder.parent)
    assert (loaded.revision, loaded.is_noise_model, loaded.source) == ("1", True, str(tiny_folder))


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Client]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="weights")
        yield client


def test_an_s3_model_is_fetched_once_per_revision_and_checked_at_every_load(
    variant: Path, s3: S3Client, tmp_path: Path
) -> None:
    for path in variant.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "weights", f"models/variant/r1/{path.relative_to(variant).as_posix()}")
    registry = ModelRegistry.model_validate({"models": [entry(variant, source="s3://weights/models/variant/r1")]})
    cache = tmp_path / "cache"

    loaded = load_model("variant", device="cpu", registry=registry, cache_root=cache, s3=s3)
    assert loaded.revision == "2026-12-06"
    assert Path(loaded.source).parent == cache / "registry"
    assert weight_checksums(Path(loaded.source)) == weight_checksums(variant)

    # The copy is reused: the bucket is not read again ...
    for obj in s3.list_objects_v2(Bucket="weights")["Contents"]:
        s3.delete_object(Bucket="weights", Key=obj["Key"])
    assert load_model("variant", device="cpu", registry=registry, cache_root=cache, s3=s3).source == loaded.source
    # ... but checked again: a copy changed on disk is refused.
    (Path(loaded.source) / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(ChecksumMismatch):
        load_model("variant", device="cpu", registry=registry, cache_root=cache, s3=s3)


def test_an_s3_prefix_without_a_model_is_not_found(variant: Path, s3: S3Client, tmp_path: Path) -> None:
    registry = ModelRegistry.model_validate({"models": [entry(variant, source="s3://weights/models/nothing")]})
    with pytest.raises(ModelNotFoundError, match="no diffusers folder"):
        load_model("variant", device="cpu", registry=registry, cache_root=tmp_path, s3=s3)
    assert not list((tmp_path / "registry").iterdir())  # no half copy left behind


def test_a_worker_loads_the_models_named_else_its_fleets_else_sdq_models(
    variant: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SDQ_FLEET", "default")
    with pytest.raises(SystemExit):  # never the built-in registry's tiny in place of a fleet's models
        models_to_load(Settings())
    assert "fleet 'default' needs the model registry (SDQ_MODEL_REGISTRY)" in capsys.readouterr().err
    monkeypatch.delenv("SDQ_FLEET")
    large = entry(variant, id="large", fleet="large")
    monkeypatch.setenv("SDQ_MODEL_REGISTRY", json.dumps({"models": [entry(variant), large, entry(variant, id="tiny")]}))
    monkeypatch.setenv("SDQ_MODEL", "tiny, variant")
    settings = Settings()
    assert models_to_load(settings) == ["tiny", "variant"]  # SDQ_MODEL, comma-separated
    assert models_to_load(settings, ["large", "large"]) == ["large"]  # named (sdq worker --model ...)
    assert models_to_load(settings, fleet="default") == ["variant", "tiny"]
    monkeypatch.setenv("SDQ_FLEET", "large")  # the template sets it for each fleet's workers
    assert models_to_load(Settings()) == ["large"]
    with pytest.raises(SystemExit):
        models_to_load(settings, fleet="none")
    assert "the model registry assigns no model to fleet 'none'" in capsys.readouterr().err
