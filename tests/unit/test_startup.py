"""The worker's entry point (``python -m handlers.worker``, the container's command) imports peft only when its
worker serves LoRAs: diffusers would import it at its own import, and only LoRAs use it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

# The entry point run as the container runs it, in a fresh interpreter; a model that cannot be found ends it right
# after its imports (exit status 2), and the interpreter then says whether peft was imported.
ENTRY = """
import runpy, sys
try:
    runpy.run_module("handlers.worker", run_name="__main__")
except SystemExit as exc:
    print("exit", exc.code)
print("peft", "imported" if sys.modules.get("peft") is not None else "off")
"""


def start_worker(**env: str) -> list[str]:
    environ = {k: v for k, v in os.environ.items() if k != "SDQ_LORA_REGISTRY"}
    environ.update(SDQ_MODEL="/nonexistent/model", **env)
    done = subprocess.run(
        [sys.executable, "-c", ENTRY], env=environ, capture_output=True, text=True, timeout=300, check=True
    )
    return done.stdout.split("\n")[-3:-1]


def test_a_worker_without_loras_starts_without_peft() -> None:
    assert start_worker() == ["exit 2", "peft off"]


def test_a_worker_serving_loras_has_peft() -> None:
    assert start_worker(SDQ_LORA_REGISTRY='{"loras": []}') == ["exit 2", "peft imported"]
