"""The key of a worker's compile artefacts in the bucket: what makes them valid changes it, where they are kept
does not; and which folders a worker shares."""

from __future__ import annotations

from pathlib import Path

import torch

from shared.settings import Settings
from workflows.generation.compileartefacts import artefact_key, environment_facts, installed_packages, shared_folders


def key(models: list[str] | None = None, **settings: object) -> str:
    return artefact_key(environment_facts(Settings(compile=True, **settings), models or ["tiny"]))  # type: ignore[arg-type]


def test_the_key_holds_the_versions_the_device_the_models_and_their_revisions() -> None:
    facts = environment_facts(Settings(compile=True), ["tiny", "shapes"])
    assert facts["torch"] == torch.__version__
    assert facts["device"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    registry = Settings().registry
    assert facts["models"] == {m: registry.get(m).revision for m in ("shapes", "tiny")}  # type: ignore[union-attr]
    assert facts["python"].count(".") == 2
    # The whole image's packages: an artefact may refer to any of them (peft, in one H100 run).
    assert facts["packages"] == installed_packages()
    assert artefact_key({**facts, "packages": "another image"}) != artefact_key(facts)


def test_levers_that_change_the_compiled_code_change_the_key_and_folders_do_not() -> None:
    base = key()
    assert key(compile_cache_dir="/srv/inductor", precompile_dir="/srv/pre", compile_warmup=False) == base
    assert key(fuse_qkv=False) != base
    assert key(batch_buckets="1,16") != base
    assert key(precision="bf16") != base
    assert key(["shapes"]) != base


def test_a_worker_shares_the_folders_it_has_only_with_compile_on_and_a_prefix(tmp_path: Path) -> None:
    cache, pre = str(tmp_path / "c"), str(tmp_path / "p")
    assert shared_folders(Settings(compile=True, compile_cache_dir=cache, precompile_dir=pre)) == {
        "cache": Path(cache),
        "precompile": Path(pre),
    }
    assert shared_folders(Settings(compile=True, compile_cache_dir=cache)) == {"cache": Path(cache)}
    assert shared_folders(Settings(compile=False, compile_cache_dir=cache)) == {}
    assert shared_folders(Settings(compile=True, compile_cache_dir=cache, compile_artefacts_prefix="")) == {}
