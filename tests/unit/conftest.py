"""Shared fixtures of the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the built-in ``tiny`` model, saved once per session and reloaded by each test module."""
    return tmp_path_factory.mktemp("models")
