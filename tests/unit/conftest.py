"""Shared fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import get_settings


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the built-in ``tiny`` model, saved once per session and reloaded by each test module."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(autouse=True)
def settings_read_per_test() -> Iterator[None]:
    """Settings are read once per process; each test reads them afresh, after its own environment changes."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
