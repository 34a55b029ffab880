"""Compile artefacts in the stack's bucket (workflows/generation/compileartefacts.py), through real boto3 against
the local cloud's S3: a new instance's empty folders filled, only new files uploaded, two workers racing without
replacing each other's files, another fingerprint kept apart, an unreadable bucket falling back to compiling; and a
real `sdq worker` process that fetches before it loads and uploads at its warm stop.

Nothing is compiled here (minutes on a CPU): the folders hold real files in the layout of inductor's cache folder
and of the precompiled forwards.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from handlers.worker import models_to_load
from shared.settings import Settings
from tests.integration.conftest import REPO, RunningService, service_fixture, wait_until
from workflows.generation.compileartefacts import (
    FAILED_METRIC,
    FETCHED_METRIC,
    MISSED_METRIC,
    CompileArtefactStore,
    store_for,
)

service = service_fixture("sdq-artefacts", {})

PREFIX = "compile-artefacts/"
# What a compiled SD worker leaves in its folders, in their own layout (contents are stand-ins).
COMPILED = {
    "cache": {
        "fxgraph/xq/fxq7a2b/entry": b"fx graph " * 40,
        "aotautograd/aq5c/entry": b"aot autograd " * 30,
        "triton/0/6JXG3ZK/triton_poi_fused_add_0.cubin": bytes(range(256)) * 8,
        "triton/0/6JXG3ZK/__grp__triton_poi_fused_add_0.json": b'{"child_paths": {}}',
        "mega-cache.bin": b"\x00\x01" * 2000,
    },
    "precompile": {
        "unet-3f2a9c81d04b7e65-1x4x64x64-scalar-1x77x768.dynamo": b"unet artefact " * 100,
        "decoder-77be01c2a9d3f410-1x4x64x64.dynamo": b"decoder artefact " * 60,
    },
}


def folders(root: Path) -> dict[str, Path]:
    return {"cache": root / "cache", "precompile": root / "precompile"}


def write_compiled(root: Path, files: dict[str, dict[str, bytes]] = COMPILED) -> None:
    for folder, paths in files.items():
        for relative, data in paths.items():
            path = folders(root)[folder] / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def stored(service: RunningService, root: str) -> dict[str, bytes]:
    s3 = service.boto("s3")
    bucket = service.env["SDQ_BUCKET"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=root).get("Contents", [])]
    return {key[len(root) :]: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def store(service: RunningService, root: Path, key: str, bucket: str | None = None) -> CompileArtefactStore:
    return CompileArtefactStore(service.boto("s3"), bucket or service.env["SDQ_BUCKET"], PREFIX, key, folders(root))


def emitted(out: str) -> dict[str, float]:
    """The EMF metrics printed to stdout, name to value (summed over lines)."""
    found: dict[str, float] = {}
    for line in out.splitlines():
        if line.startswith('{"_aws"'):
            record = json.loads(line)
            for metric in record["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
                values = record[metric["Name"]]
                total = sum(values) if isinstance(values, list) else values
                found[metric["Name"]] = found.get(metric["Name"], 0) + total
    return found


def test_a_new_instance_fetches_every_stored_file_into_its_empty_folders(
    service: RunningService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_compiled(tmp_path / "first")
    assert store(service, tmp_path / "first", "k-fetch").upload_new().files == 7

    fresh = tmp_path / "new-instance"
    report = store(service, fresh, "k-fetch").fetch()

    assert (report.files, report.kept, report.error) == (7, 0, None)
    assert report.bytes == sum(len(d) for paths in COMPILED.values() for d in paths.values())
    for folder, paths in COMPILED.items():
        for relative, data in paths.items():
            assert (folders(fresh)[folder] / relative).read_bytes() == data
    assert list(fresh.rglob(".*")) == []  # no staging file left behind
    metrics = emitted(capsys.readouterr().out)
    assert metrics[FETCHED_METRIC] == report.bytes
    assert MISSED_METRIC not in metrics


def test_only_files_the_store_lacks_are_uploaded_and_local_files_are_kept(
    service: RunningService, tmp_path: Path
) -> None:
    write_compiled(tmp_path / "first")
    store(service, tmp_path / "first", "k-new").upload_new()
    worker = tmp_path / "worker"
    (folders(worker)["cache"] / "mega-cache.bin").parent.mkdir(parents=True)
    (folders(worker)["cache"] / "mega-cache.bin").write_bytes(b"this instance's own")  # a file on its volume
    second = store(service, worker, "k-new")
    fetched = second.fetch()
    assert (fetched.files, fetched.kept) == (6, 1)
    assert (folders(worker)["cache"] / "mega-cache.bin").read_bytes() == b"this instance's own"

    # A bucket compiled by a batch, beside files being written and a lock: only the finished file is new.
    new_kernel = folders(worker)["cache"] / "triton/0/Q7T2/triton_red_fused_1.cubin"
    new_kernel.parent.mkdir(parents=True)
    new_kernel.write_bytes(b"bucket 16's kernel")
    (folders(worker)["precompile"] / ".a1b2.unet-x-16x4x64x64.dynamo").write_bytes(b"half written")
    (folders(worker)["cache"] / "locks").mkdir()
    (folders(worker)["cache"] / "locks" / "fxq.lock").write_bytes(b"")
    (folders(worker)["cache"] / "triton/0/tmp.pid_42_9").mkdir()
    (folders(worker)["cache"] / "triton/0/tmp.pid_42_9/k.cubin").write_bytes(b"in flight")

    report = second.upload_new()

    assert (report.files, report.bytes, report.error) == (1, len(b"bucket 16's kernel"), None)
    files = stored(service, f"{PREFIX}k-new/")
    assert files["cache/triton/0/Q7T2/triton_red_fused_1.cubin"] == b"bucket 16's kernel"
    assert len(files) == 8
    assert files["cache/mega-cache.bin"] == COMPILED["cache"]["mega-cache.bin"]  # the first writer's, kept
    assert second.upload_new().files == 0  # nothing new since


def test_two_workers_racing_each_keep_what_the_other_wrote_first(service: RunningService, tmp_path: Path) -> None:
    names = [f"triton/0/K{i}/kernel.cubin" for i in range(12)]
    for who in ("a", "b"):
        write_compiled(tmp_path / who, {"cache": {name: f"{who}:{name}".encode() for name in names}})
    stores = [store(service, tmp_path / who, "k-race") for who in ("a", "b")]
    for s in stores:  # both started on an empty key: neither knows of the other's files
        assert s.fetch().files == 0
    start = threading.Barrier(2)
    reports: list[Any] = [None, None]

    def upload(i: int) -> None:
        start.wait()
        reports[i] = stores[i].upload_new()

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert all(r.error is None for r in reports)
    assert sum(r.files for r in reports) == len(names)  # each file written once
    assert sum(r.kept for r in reports) == len(names)  # and found taken by the other worker once
    files = stored(service, f"{PREFIX}k-race/")
    assert sorted(files) == sorted(f"cache/{n}" for n in names)
    for name in names:
        assert files[f"cache/{name}"] in {f"a:{name}".encode(), f"b:{name}".encode()}
    # What the loser found is its own file, still local: it runs with what it compiled.
    assert all((tmp_path / who / "cache" / names[0]).read_bytes() == f"{who}:{names[0]}".encode() for who in "ab")


def test_another_fingerprint_neither_sees_nor_touches_the_artefacts(
    service: RunningService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_compiled(tmp_path / "h100")
    store(service, tmp_path / "h100", "k-h100").upload_new()
    capsys.readouterr()
    other = tmp_path / "other-gpu"
    write_compiled(other, {"precompile": {"unet-0000-1x4x64x64.dynamo": b"built for another GPU"}})

    fetched = store(service, other, "k-l4").fetch()
    uploaded = store(service, other, "k-l4").upload_new()

    assert (fetched.files, fetched.kept, fetched.error) == (0, 0, None)
    assert emitted(capsys.readouterr().out)[MISSED_METRIC] == 1
    assert not (other / "cache").exists()
    assert uploaded.files == 1
    assert stored(service, f"{PREFIX}k-l4/") == {"precompile/unet-0000-1x4x64x64.dynamo": b"built for another GPU"}
    assert len(stored(service, f"{PREFIX}k-h100/")) == 7


def test_an_unreadable_store_means_compiling_as_before_never_a_failed_worker(
    service: RunningService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_compiled(tmp_path / "w")
    broken = store(service, tmp_path / "w", "k-any", bucket="no-such-bucket-sdq")

    fetched = broken.fetch()
    uploaded = broken.upload_new()

    assert "NoSuchBucket" in (fetched.error or "")
    assert uploaded.error is not None
    assert uploaded.files == 0
    metrics = emitted(capsys.readouterr().out)
    assert metrics[FAILED_METRIC] == 2
    assert metrics[MISSED_METRIC] == 1
    # Its own files are untouched: the worker compiles and runs with them as it would without a store.
    assert (tmp_path / "w" / "cache" / "mega-cache.bin").read_bytes() == COMPILED["cache"]["mega-cache.bin"]


def key_of_a_fresh_worker() -> str:
    """The artefact key a worker started now with this process's environment computes."""
    code = (
        "from handlers.worker import models_to_load; from shared.settings import Settings; "
        "from workflows.generation.compileartefacts import artefact_key, environment_facts; "
        "s = Settings(); print(artefact_key(environment_facts(s, models_to_load(s))))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout.split()[-1]


def test_a_worker_with_compile_on_fetches_before_it_loads_and_uploads_at_its_warm_stop(
    service: RunningService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Compile on with a cache folder: on a CPU the lever itself is skipped (nothing compiles), the store is not.
    env = {"SDQ_COMPILE": "1", "SDQ_COMPILE_CACHE_DIR": str(tmp_path / "inductor"), "SDQ_RECEIVE_WAIT_S": "1"}
    for name, value in {**service.env, **env}.items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # what the worker process reads from the same variables
    assert store_for(settings, service.boto("s3"), models_to_load(settings)) is not None  # compile on: it shares
    # Another worker of this image uploaded under the key that worker processes compute (a fresh interpreter with
    # the worker's environment: this test's process may have been changed by the tests before it).
    seeded = tmp_path / "another-worker"
    write_compiled(seeded, {"cache": COMPILED["cache"]})
    expected = CompileArtefactStore(
        service.boto("s3"), settings.bucket, PREFIX, key_of_a_fresh_worker(), folders(seeded)
    )
    expected.upload_new()

    # What this instance's volume already held (a warm-pool instance's last run) goes up once the model is loaded.
    on_volume = tmp_path / "inductor" / "aotautograd" / "av1" / "entry"
    on_volume.parent.mkdir(parents=True)
    on_volume.write_bytes(b"compiled on this instance before")

    worker = service.start_worker(env=env)
    log = service.state_dir / f"worker-{len(service.workers) - 1}.log"
    wait_until(lambda: b"worker started" in log.read_bytes(), 120, "the worker to start")
    wait_until(lambda: "cache/aotautograd/av1/entry" in stored(service, expected.root), 30, "the upload after load")
    for relative, data in COMPILED["cache"].items():
        assert (tmp_path / "inductor" / relative).read_bytes() == data
    text = log.read_text()
    assert text.index("compile artefacts fetched") < text.index("batch limit")  # before the model was loaded

    compiled_later = tmp_path / "inductor" / "fxgraph" / "b16" / "fxb16" / "entry"
    compiled_later.parent.mkdir(parents=True)
    compiled_later.write_bytes(b"bucket 16, compiled by a batch")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0

    files = stored(service, expected.root)
    assert files["cache/fxgraph/b16/fxb16/entry"] == b"bucket 16, compiled by a batch"
    assert files["cache/aotautograd/av1/entry"] == b"compiled on this instance before"
    assert len(files) == len(COMPILED["cache"]) + 2
