"""`client/` is a distribution of its own: it builds and installs offline from what the environment has, and the
installed package imports with nothing of the service beside it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_client_builds_and_installs_offline_and_imports_on_its_own(tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    # Offline: no index, no build isolation (the environment's setuptools builds it).
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-index", "--no-build-isolation", "-w", str(tmp_path),
                    str(REPO / "client")], check=True, timeout=300, cwd=tmp_path)  # fmt: skip
    (wheel,) = tmp_path.glob("sdq_client-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sdq_client/py.typed" in names
    assert {n.split("/")[0] for n in names} == {
        "sdq_client",
        wheel.name.removesuffix("-py3-none-any.whl") + ".dist-info",
    }
    target = tmp_path / "site"
    subprocess.run([*pip, "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                   check=True, timeout=300, cwd=tmp_path)  # fmt: skip
    # Only the installed copy and the environment's third-party packages: not the repository, not the service.
    probe = "\n".join(
        [
            "import sys",
            f"sys.path[:] = [{str(target)!r}] + [p for p in sys.path if p and p != {str(REPO)!r}]",
            "import sdq_client",
            f"assert sdq_client.__file__.startswith({str(target)!r}), sdq_client.__file__",
            "assert not {m.split('.')[0] for m in sys.modules} & {'shared', 'handlers', 'workflows', 'cli', 'boto3'}",
            "print(sdq_client.__version__)",
        ]
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    meta = tomllib.loads((REPO / "client" / "pyproject.toml").read_text())["project"]
    assert done.stdout.strip() == "0.1.0"
    assert sorted(d.split(">")[0] for d in meta["dependencies"]) == ["httpx", "pydantic", "standardwebhooks"]
