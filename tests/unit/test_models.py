"""Model loading: the tiny model's folder, its reload through from_pretrained, the real architectures' configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from shared.settings import get_settings
from shared.tinymodel import TINY_MODEL_NOTE
from workflows.generation import models
from workflows.generation.models import (
    ModelNotFoundError,
    build_random_pipeline,
    build_tiny_pipeline,
    ensure_tiny_model,
    load_model,
    model_cache_root,
    resolve_dtype,
    tiny_model_dir,
)


def test_the_model_cache_setting_decides_where_tiny_is_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("SDQ_MODEL_CACHE", raising=False)
    assert model_cache_root() == tmp_path / "xdg" / "sdq" / "models"
    monkeypatch.setenv("SDQ_MODEL_CACHE", str(tmp_path / "models"))
    get_settings.cache_clear()  # settings are read once per process
    assert model_cache_root() == tmp_path / "models"
    assert tiny_model_dir().parent == tmp_path / "models"


def test_tiny_is_saved_once_as_a_normal_diffusers_folder(tmp_path: Path) -> None:
    folder = ensure_tiny_model(tmp_path)

    assert folder == tiny_model_dir(tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None]
    for component in ("unet", "vae", "text_encoder"):
        assert list((folder / component).glob("*.safetensors")), component
    assert (folder / "tokenizer").is_dir()
    assert (folder / "scheduler" / "scheduler_config.json").is_file()
    # Only the finished folder remains: the staging copy was renamed into place.
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]

    before = (folder / "model_index.json").stat()
    assert ensure_tiny_model(tmp_path) == folder
    after = (folder / "model_index.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_tiny_loads_through_from_pretrained_without_rebuilding(tmp_path: Path) -> None:
    first = load_model("tiny", device="cpu", cache_root=tmp_path)
    stamp = (Path(first.source) / "model_index.json").stat().st_mtime_ns
    second = load_model("tiny", device="cpu", cache_root=tmp_path)

    assert (Path(second.source) / "model_index.json").stat().st_mtime_ns == stamp
    assert second.source == str(tiny_model_dir(tmp_path))
    pipe = second.pipeline
    assert issubclass(type(pipe), StableDiffusionPipeline)
    assert pipe.vae_scale_factor == 8  # request sizes map to latents as in real SD
    assert pipe.tokenizer.model_max_length == 77
    assert second.is_noise_model
    assert second.note == TINY_MODEL_NOTE
    assert second.dtype == torch.float32
    assert pipe.unet.device.type == "cpu"
    # The weights read back are the seeded ones that were saved.
    fresh = build_tiny_pipeline()
    for name, tensor in fresh.unet.state_dict().items():
        assert torch.equal(tensor, pipe.unet.state_dict()[name]), name


def test_tiny_weights_are_seeded_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = build_tiny_pipeline()
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_tiny_pipeline()
    for name, tensor in a.text_encoder.state_dict().items():
        assert torch.equal(tensor, b.text_encoder.state_dict()[name]), name


def test_a_builder_that_loses_the_race_keeps_the_winners_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    winner = ensure_tiny_model(tmp_path / "winner")
    target = tiny_model_dir(tmp_path / "loser")
    real_build = models.build_tiny_pipeline

    def build_while_another_process_finishes() -> object:
        shutil.copytree(winner, target)  # the other process renames its copy into place meanwhile
        return real_build()

    monkeypatch.setattr(models, "build_tiny_pipeline", build_while_another_process_finishes)

    assert ensure_tiny_model(tmp_path / "loser") == target
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # the loser's staging copy is gone
    assert load_model("tiny", device="cpu", cache_root=tmp_path / "loser").pipeline.unet is not None


def test_the_tokenizer_pads_prompts_to_77_tokens() -> None:
    tokenizer = models.build_byte_level_clip_tokenizer()
    ids = tokenizer("A photo of a café", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.eos_token_id in ids
    assert max(ids) < len(tokenizer)


@pytest.mark.parametrize(
    ("name", "reason_part"),
    [
        ("/nonexistent/sdq-model", "no such folder"),
        ("./no-such-sdq-model-dir", "no such folder"),
        ("sdq-tests/no-such-model", "HF_HUB_OFFLINE"),
    ],
)
def test_an_unknown_model_raises_model_not_found(
    name: str, reason_part: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    with pytest.raises(ModelNotFoundError) as caught:
        load_model(name, device="cpu", cache_root=tmp_path)
    assert caught.value.name == name
    assert reason_part in caught.value.reason
    assert name in str(caught.value)


def test_a_folder_that_is_not_a_pipeline_raises_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"model_index\.json"):
        load_model(str(tmp_path), device="cpu")


def test_a_saved_pipeline_folder_loads_by_path(tmp_path: Path) -> None:
    folder = ensure_tiny_model(tmp_path)
    loaded = load_model(str(folder), device="cpu")
    assert issubclass(type(loaded.pipeline), StableDiffusionPipeline)
    assert not loaded.is_noise_model  # by path it is an ordinary model: sdq cannot know its weights are random


def test_precision_defaults() -> None:
    assert resolve_dtype(torch.device("cpu")) == torch.float32
    assert resolve_dtype(torch.device("cuda")) == torch.float16
    assert resolve_dtype(torch.device("cuda"), "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        resolve_dtype(torch.device("cpu"), "int8")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arch", "pipeline_class", "expected"),
    [
        # Parameter counts of the published checkpoints (runwayml SD 1.5, stabilityai SDXL base 1.0).
        (
            "sd15",
            StableDiffusionPipeline,
            {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
        ),
        (
            "sdxl",
            StableDiffusionXLPipeline,
            {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
        ),
    ],
)
def test_random_architectures_match_the_published_models(
    arch: str, pipeline_class: type, expected: dict[str, int]
) -> None:
    # On the meta device: the real shapes without allocating gigabytes.
    pipe = build_random_pipeline(arch, torch.device("meta"), torch.float16)  # type: ignore[arg-type]
    assert issubclass(type(pipe), pipeline_class)
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in expected}
    assert counts == expected
    assert pipe.unet.dtype == torch.float16
    assert pipe.vae_scale_factor == 8
