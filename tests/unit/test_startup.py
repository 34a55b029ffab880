"""The worker's entry point (``python -m handlers.worker``, the container's command) imports peft only when its
worker serves LoRAs: diffusers would import it at its own import, and only LoRAs use it. Its start says nothing
of torchvision, which the worker image leaves out."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

# The entry point run as the container runs it (or as `sdq worker`: cli.main with those arguments), in a fresh
# interpreter; a model that cannot be found ends it right after its imports (exit status 2), and the interpreter
# then says whether peft was imported.
ENTRY = """
import runpy, sys
sys.argv = ["sdq", "worker"]
try:
    runpy.run_module({module!r}, run_name="__main__")
except SystemExit as exc:
    print("exit", exc.code)
print("peft", "imported" if sys.modules.get("peft") is not None else "off")
"""


def run_entry(module: str = "handlers.worker", **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "SDQ_LORA_REGISTRY"}
    environ.update(SDQ_MODEL="/nonexistent/model", **env)
    return subprocess.run(
        [sys.executable, "-c", ENTRY.format(module=module)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )


def start_worker(**env: str) -> list[str]:
    return run_entry(**env).stdout.split("\n")[-3:-1]


def test_a_worker_without_loras_starts_without_peft() -> None:
    assert start_worker() == ["exit 2", "peft off"]


def test_a_worker_serving_loras_has_peft() -> None:
    assert start_worker(SDQ_LORA_REGISTRY='{"loras": []}') == ["exit 2", "peft imported"]


@pytest.mark.parametrize("module", ["handlers.worker", "cli.main"])
def test_a_worker_start_does_not_warn_of_the_torchvision_it_has_no_use_for(module: str) -> None:
    # Without torchvision (as in the worker image and here) transformers serves its PIL image processors and said
    # so in three warnings while diffusers imported; the start's own lines are all that is left. `sdq worker`
    # (cli.main) starts as the container's command does, peft off too.
    done = run_entry(module)
    assert done.stdout.split("\n")[-3:-1] == ["exit 2", "peft off"]
    assert "model not found" in done.stdout + done.stderr
    assert "torchvision" not in done.stderr


def test_a_worker_that_must_have_a_gpu_and_finds_none_exits_at_once_saying_why() -> None:
    """The template's workers set SDQ_REQUIRE_GPU: on a host whose driver the image's CUDA cannot use, the task
    fails at start (and ECS says so) instead of generating on CPU. This machine has no GPU."""
    done = run_entry(SDQ_REQUIRE_GPU="true")
    assert done.stdout.split("\n")[-3:-1] == ["exit 3", "peft off"]
    assert "no CUDA GPU is usable" in done.stdout + done.stderr
    assert "model not found" not in done.stdout + done.stderr  # it stopped before loading anything
