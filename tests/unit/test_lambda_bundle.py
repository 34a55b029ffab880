"""The Lambda bundle `sam build` deploys holds the service code and its locked wheels, and nothing of the tools.

It is built by the Makefile target SAM runs (template.yaml: BuildMethod makefile) for this interpreter's Python
version, then every handler the template names is imported by a bare interpreter (no site-packages) that sees
only the bundle, as the Lambda runtime does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TOOLS = (
    "moto", "werkzeug", "torch", "diffusers", "transformers", "localcloud", "cli", "benchmarks", "pytest", "sdq_client",
    "client",
)  # fmt: skip


class _Loader(yaml.SafeLoader):
    """Reads CloudFormation's short-form tags (!Ref, !Sub, ...) as plain values."""


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _functions() -> dict[str, dict]:
    template = yaml.load((REPO / "template.yaml").read_text(), Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    return {k: r for k, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    artifacts = tmp_path_factory.mktemp("lambda-bundle")
    first = next(iter(_functions()))
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run(
        ["make", "-s", f"build-{first}", f"ARTIFACTS_DIR={artifacts}", f"LAMBDA_PYTHON={python}",
         f"LAMBDA_PIP={sys.executable} -m pip"],
        cwd=REPO, check=True, timeout=600,
    )  # fmt: skip
    return artifacts


def test_every_function_is_built_by_the_makefile() -> None:
    for logical_id, resource in _functions().items():
        assert resource["Metadata"]["BuildMethod"] == "makefile", logical_id
        dry = subprocess.run(
            ["make", "-n", f"build-{logical_id}", "ARTIFACTS_DIR=/nonexistent"],
            cwd=REPO, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert dry.returncode == 0, dry.stderr
        assert "requirements/lambda.txt" in dry.stdout


def test_bundle_holds_the_service_and_no_tool(bundle: Path) -> None:
    top = {p.name for p in bundle.iterdir()}
    assert {"shared", "handlers", "workflows", "playground"} <= top
    assert not top & set(TOOLS)
    assert not top & {"tests", ".venv", "template.yaml", "Makefile", "requirements"}
    assert not (bundle / "workflows" / "generation").exists()
    assert not list(bundle.glob("*/__pycache__"))


def test_every_handler_imports_from_the_bundle_alone(bundle: Path) -> None:
    handlers = sorted({resource["Properties"]["Handler"] for resource in _functions().values()})
    probe = f"""
import importlib, json, sys
sys.path.insert(0, {str(bundle)!r})
for handler in {handlers!r}:
    module, _, name = handler.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name)), handler
print(json.dumps(sorted(sys.modules)))
"""
    env = {"PATH": os.environ["PATH"], "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
    # -I -S: no site-packages, no PYTHONPATH, no user site: the bundle is the only place packages come from.
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe], cwd=bundle, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loaded = {name.partition(".")[0] for name in json.loads(done.stdout)}
    assert {"handlers", "shared", "workflows"} <= loaded
    assert not loaded & set(TOOLS)
    assert not [name for name in json.loads(done.stdout) if name.startswith("workflows.generation")]
