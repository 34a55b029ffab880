"""The locks under requirements/ install what pyproject.toml declares, one version per package in all of them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==(\S+)$")


def pins(lock: str) -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in (REPO / "requirements" / lock).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{lock}: not an exact pin: {line!r}"
        found[canonicalize_name(match[1])] = Version(match[2])
    return found


def direct(*extras: str) -> list[Requirement]:
    declared = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in extras:
        declared += [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]
    return [r for r in declared if canonicalize_name(r.name) != "sdq"]


def assert_pinned_within_ranges(lock: str, declared: list[Requirement]) -> None:
    pinned = pins(lock)
    for req in declared:
        name = canonicalize_name(req.name)
        assert name in pinned, f"{lock} does not pin {req.name}"
        assert req.specifier.contains(pinned[name], prereleases=True), f"{lock}: {name}=={pinned[name]} not in {req}"


def test_lambda_lock_pins_every_runtime_dependency() -> None:
    assert_pinned_within_ranges("lambda.txt", direct())


def test_worker_lock_pins_the_worker_dependencies() -> None:
    assert_pinned_within_ranges("worker.txt", direct("worker"))


def test_dev_lock_pins_every_extra() -> None:
    assert_pinned_within_ranges("dev.txt", direct("worker", "local", "dev"))


def test_the_locks_agree_on_every_shared_package() -> None:
    dev, worker, lam = pins("dev.txt"), pins("worker.txt"), pins("lambda.txt")
    for name, version in [*worker.items(), *lam.items()]:
        if name in dev:
            # The CPU and CUDA builds of one torch release differ only in the local label (+cpu).
            assert dev[name].public == version.public, f"{name}: dev {dev[name]}, other lock {version}"
    assert set(lam) <= set(dev)


def test_dev_runs_the_cpu_build_of_the_image_torch() -> None:
    dev_in = (REPO / "requirements" / "dev.in").read_text()
    assert pins("dev.txt")["torch"] == Version(re.search(r"^torch==(\S+)$", dev_in, re.M)[1])  # type: ignore[index]
    assert pins("dev.txt")["torch"].local == "cpu"
    assert pins("worker.txt")["torch"].local is None
    # No CUDA runtime in the CPU build's lock; nvidia-ml-py (NVML's pure-Python bindings, the worker's GPU
    # utilisation metric) carries none.
    cuda = [n for n in pins("dev.txt") if (n.startswith("nvidia-") and n != "nvidia-ml-py") or n == "triton"]
    assert not cuda


def test_lambda_lock_holds_no_local_or_worker_package() -> None:
    assert not set(pins("lambda.txt")) & {"moto", "werkzeug", "torch", "diffusers", "transformers", "cfn-lint"}
