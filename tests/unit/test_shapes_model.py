"""The built-in ``shapes`` model: shipped in the repository, served offline, refused if its weights differ."""

from __future__ import annotations

import pytest

from shared.modelregistry import BUILTIN_REGISTRY, ModelEntry, ModelRegistry, weight_checksums, weight_files
from shared.shapesmodel import SHAPES_MODEL, SHAPES_MODEL_NOTE, SHAPES_MODEL_REVISION
from workflows.generation.models import SHAPES_MODEL_DIR, ChecksumMismatch, load_model


def test_the_builtin_registry_pins_every_shipped_weight_file() -> None:
    entry = BUILTIN_REGISTRY.get(SHAPES_MODEL)
    assert entry is not None
    assert entry.source == "builtin:shapes"
    assert entry.revision == SHAPES_MODEL_REVISION
    assert entry.checksums == weight_checksums(SHAPES_MODEL_DIR)
    # The repository carries it: small enough to ship (the bound is about 20 MB).
    assert sum(path.stat().st_size for path in weight_files(SHAPES_MODEL_DIR)) < 20 * 1024 * 1024


def test_shapes_loads_offline_from_the_shipped_folder_and_says_what_it_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model(SHAPES_MODEL, device="cpu", registry=BUILTIN_REGISTRY)
    assert model.source == str(SHAPES_MODEL_DIR)
    assert model.revision == SHAPES_MODEL_REVISION
    assert not model.is_noise_model
    assert model.note == SHAPES_MODEL_NOTE
    assert "circle" in SHAPES_MODEL_NOTE
    assert "noise" not in SHAPES_MODEL_NOTE


def test_shapes_weights_that_differ_from_the_pinned_checksums_are_refused() -> None:
    entry = BUILTIN_REGISTRY.get(SHAPES_MODEL)
    assert entry is not None
    wrong = {path: "0" * 64 for path in entry.checksums}
    registry = ModelRegistry(models=(ModelEntry.model_validate({**entry.model_dump(), "checksums": wrong}),))
    with pytest.raises(ChecksumMismatch) as raised:
        load_model(SHAPES_MODEL, device="cpu", registry=registry)
    assert set(raised.value.problems) == set(entry.checksums)
