"""LoRAs per job: the registry's contract, a job's ``loras`` checked at submit, the batch key, and the worker's
adapters (loaded once, verified, least recently used out past the memory bound, the same pixels alone or batched).

The LoRAs are the project's own for the tiny model (tests/loraasset.py), served from local folders and S3 (moto)."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import boto3
import numpy as np
import pytest
from boto3.exceptions import RetriesExceededError
from botocore.exceptions import ClientError
from huggingface_hub import constants as hub_constants
from moto import mock_aws
from PIL import Image
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from shared.contracts import GenerationRequest
from shared.loraregistry import LoraRegistry, parse_lora_registry
from shared.modelregistry import weight_checksums
from shared.settings import Settings
from tests.loraasset import WEIGHT_FILE, build_tiny_lora, lora_entry
from workflows.generation.loras import (
    LoraAdapters,
    LoraChecksumMismatch,
    LoraNotFound,
    LoraNotServed,
    LorasNotSupported,
    LoraUnavailable,
    lora_folder,
)
from workflows.generation.models import load_model
from workflows.generation.pipeline import BatchShape, ImageJob, PipelineRunner

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SHAPE = BatchShape(64, 64, 2, 7.5, "euler")


@pytest.fixture(scope="module")
def ink(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lora(tmp_path_factory.mktemp("loras") / "ink", seed=1)


@pytest.fixture(scope="module")
def wash(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lora(tmp_path_factory.mktemp("loras") / "wash", seed=2)


@pytest.fixture(scope="module")
def registry(ink: Path, wash: Path) -> LoraRegistry:
    return LoraRegistry.model_validate({"loras": [lora_entry(ink, "ink"), lora_entry(wash, "wash")]})


@pytest.fixture(scope="module")
def runner(registry: LoraRegistry) -> PipelineRunner:
    return PipelineRunner(load_model("tiny", device="cpu"), lora_registry=registry)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def differs(a: Image.Image, b: Image.Image) -> int:
    """The largest difference of one channel of one pixel."""
    return int(np.abs(pixels(a) - pixels(b)).max())


def one(runner: PipelineRunner, loras: tuple[tuple[str, float], ...] = (), seed: int = 5) -> Image.Image:
    shape = BatchShape(**{**SHAPE.__dict__, "loras": loras})
    return runner.generate([ImageJob("a", "a red circle", "", seed, 1)], shape)["a"][0]


# --- the registry -------------------------------------------------------------------------------------------


def test_the_lora_is_built_the_same_byte_for_byte_from_its_seed(ink: Path, tmp_path: Path) -> None:
    again = build_tiny_lora(tmp_path / "again", seed=1)
    assert weight_checksums(again) == weight_checksums(ink)
    assert weight_checksums(build_tiny_lora(tmp_path / "other", seed=3)) != weight_checksums(ink)


def test_a_lora_registry_is_read_from_inline_json_or_a_file_and_checks_its_entries(ink: Path, tmp_path: Path) -> None:
    body = json.dumps({"loras": [lora_entry(ink)]})
    (tmp_path / "loras.json").write_text(body)
    assert parse_lora_registry(body) == parse_lora_registry(str(tmp_path / "loras.json"))
    assert Settings(lora_registry=body).loras.ids == ["ink"]
    assert Settings().loras.ids == []  # unset: no LoRA is allowed
    bad: dict[str, dict[str, Any]] = {
        "relative source": {"source": "loras/ink"},
        "no checksums": {"checksums": {}},
        "not safetensors": {"checksums": {"ink.bin": "0" * 64}},
        "several files, none named": {"checksums": {"a.safetensors": "0" * 64, "b.safetensors": "1" * 64}},
        "no base model": {"base_models": []},
    }
    for case, fields in bad.items():
        with pytest.raises(ValidationError):
            parse_lora_registry({"loras": [lora_entry(ink, **fields)]})
        assert case
    with pytest.raises(ValidationError, match="unique"):
        parse_lora_registry({"loras": [lora_entry(ink), lora_entry(ink)]})


# --- a job's loras at submit --------------------------------------------------------------------------------


def settings_with(ink: Path, **fields: Any) -> Settings:
    entries = [lora_entry(ink, "ink"), lora_entry(ink, "other-model", base_models=["variant"])]
    return Settings(lora_registry=json.dumps({"loras": entries}), **fields)


def refusal(settings: Settings, **fields: Any) -> tuple[tuple[str | int, ...], str]:
    with pytest.raises(ValidationError) as caught:
        GenerationRequest.model_validate({"prompt": "a fox", **fields}, context={"settings": settings})
    error = caught.value.errors()[0]
    return tuple(error["loc"]), str(error["msg"])


def test_a_jobs_loras_are_checked_at_submit_and_each_refusal_names_its_field(ink: Path) -> None:
    settings = settings_with(ink)
    ok = GenerationRequest.model_validate(
        {"prompt": "a fox", "loras": [{"id": "ink", "scale": 0.8}]}, context={"settings": settings}
    )
    assert ok.lora_set == (("ink", 0.8),)
    loc, msg = refusal(settings, loras=[{"id": "nope"}])
    assert loc == ("loras", 0, "id")
    assert "unknown LoRA" in msg
    assert "ink" in msg
    loc, msg = refusal(settings, loras=[{"id": "ink", "scale": 2.5}])
    assert loc == ("loras", 0, "scale")
    assert "between -2 and 2" in msg
    loc, msg = refusal(settings, loras=[{"id": "ink", "scale": 10**400}])  # too large for a float
    assert loc == ("loras", 0, "scale")
    loc, msg = refusal(settings, loras=[{"id": "other-model"}])
    assert loc == ("loras",)
    assert "applies to variant, not model 'tiny'" in msg
    loc, msg = refusal(settings_with(ink, limits={"max_loras": 1}), loras=[{"id": "ink"}, {"id": "other-model"}])
    assert loc == ("loras",)
    assert "at most 1" in msg
    loc, msg = refusal(settings, loras=[{"id": "ink"}, {"id": "ink", "scale": 0.5}])
    assert loc == ("loras",)
    assert "repeat" in msg


def test_jobs_batch_only_with_the_same_lora_set_and_scales(ink: Path) -> None:
    settings = settings_with(ink)

    def request(*loras: dict[str, Any]) -> GenerationRequest:
        return GenerationRequest.model_validate({"prompt": "a", "loras": list(loras)}, context={"settings": settings})

    plain, inked = request(), request({"id": "ink", "scale": 0.5})
    assert plain.batch_key() != inked.batch_key()
    assert inked.batch_key() != request({"id": "ink", "scale": 0.6}).batch_key()
    assert inked.batch_key() == request({"id": "ink", "scale": 0.5}).batch_key()
    # The stored images of a LoRA job are another LoRA revision's no longer.
    assert inked.cache_key("1", {"ink": "r1"}) != inked.cache_key("1", {"ink": "r2"})
    assert inked.cache_key("1", {"ink": "r1"}) != plain.cache_key("1")


# --- the worker's adapters ----------------------------------------------------------------------------------


def test_a_lora_changes_the_image_and_a_batch_without_it_gets_the_models_own_pixels(runner: PipelineRunner) -> None:
    before = one(runner)
    inked = one(runner, (("ink", 1.0),))
    assert differs(inked, before) > 8
    assert differs(one(runner, (("ink", 0.5),)), inked) > 0  # the scale counts
    assert differs(one(runner, (("ink", 1.0), ("wash", 1.0))), inked) > 0
    assert differs(one(runner), before) == 0  # adapters loaded, but off for a batch without LoRAs
    assert differs(one(runner, (("ink", 1.0),)), inked) == 0


def test_a_lora_jobs_images_are_the_same_alone_or_batched_with_another_job_of_its_set(
    runner: PipelineRunner,
) -> None:
    shape = BatchShape(**{**SHAPE.__dict__, "loras": (("ink", 0.7),)})
    alone = runner.generate([ImageJob("a", "a red circle", "", 11, 2)], shape)["a"]
    batched = runner.generate(
        [ImageJob("b", "a green square", "blurry", 3, 1), ImageJob("a", "a red circle", "", 11, 2)], shape
    )["a"]
    # The runner's promise for any batch (workflows/generation/pipeline.py): within one level of rounding.
    assert max(differs(x, y) for x, y in zip(alone, batched, strict=True)) <= 1


def test_adapters_stay_loaded_and_the_least_recently_used_leave_past_the_memory_bound(
    registry: LoraRegistry,
) -> None:
    pipe = load_model("tiny", device="cpu").pipeline
    probe = LoraAdapters(pipe, "tiny", registry, max_bytes=2**30)
    probe.activate((("ink", 1.0),))
    size = probe.bytes
    assert size > 0
    probe.activate((("ink", 0.5),))
    assert probe.loads == 1  # used again, not loaded again
    pipe.delete_adapters([lora.adapter_name for lora in probe.loaded])

    adapters = LoraAdapters(pipe, "tiny", registry, max_bytes=size)  # room for one
    adapters.activate((("ink", 1.0),))
    adapters.activate((("wash", 1.0),))
    assert [lora.id for lora in adapters.loaded] == ["wash"]
    assert adapters.evictions == 1
    assert set(pipe.get_list_adapters()["unet"]) == {adapters.loaded[0].adapter_name}
    # The batch's own set is never evicted for it, even past the bound.
    adapters.activate((("ink", 1.0), ("wash", 1.0)))
    assert sorted(lora.id for lora in adapters.loaded) == ["ink", "wash"]
    adapters.activate((("ink", 1.0),))
    assert [lora.id for lora in adapters.loaded] == ["ink"]


def test_a_lora_whose_file_fails_its_checksum_or_is_not_served_is_refused(ink: Path, tmp_path: Path) -> None:
    tampered = Path(shutil.copytree(ink, tmp_path / "tampered"))
    data = bytearray((tampered / WEIGHT_FILE).read_bytes())
    data[-1] ^= 1
    (tampered / WEIGHT_FILE).write_bytes(bytes(data))
    # A LoRA for layers the model does not have (here its attn1.to_q weights): diffusers would load the rest.
    partial = tmp_path / "partial"
    partial.mkdir()
    weights = load_file(ink / WEIGHT_FILE)
    save_file({k.replace("attn1.to_q.", "attn1.to_qq."): v for k, v in weights.items()}, partial / WEIGHT_FILE)
    entries = [
        lora_entry(partial, "partial"),
        {**lora_entry(tampered, "tampered"), "checksums": weight_checksums(ink)},
        lora_entry(ink, "for-variant", base_models=["variant"]),
    ]
    registry = LoraRegistry.model_validate({"loras": entries})
    runner = PipelineRunner(load_model("tiny", device="cpu"), lora_registry=registry)
    before = one(runner)
    with pytest.raises(LoraChecksumMismatch, match=WEIGHT_FILE):
        one(runner, (("tampered", 1.0),))
    with pytest.raises(LoraNotServed, match="applies to variant"):
        one(runner, (("for-variant", 1.0),))
    with pytest.raises(LoraNotServed, match="registry"):
        one(runner, (("retired", 1.0),))
    with pytest.raises(LoraNotServed, match="weights match its layers"):
        one(runner, (("partial", 1.0),))
    assert runner.loras.loaded == []
    assert differs(one(runner), before) == 0


def test_a_lora_batch_on_a_model_with_fused_projections_fails_instead_of_running_without_it(
    registry: LoraRegistry,
) -> None:
    # The runner passes the levers its accelerator applied (on CUDA only: a CPU runner skips them all).
    adapters = LoraAdapters(load_model("tiny", device="cpu").pipeline, "tiny", registry, max_bytes=2**30)
    with pytest.raises(LorasNotSupported, match="fuse_qkv"):
        adapters.activate((("ink", 1.0),), ["prompt_cache", "fuse_qkv"])
    assert adapters.loaded == []
    adapters.activate((), ["prompt_cache", "fuse_qkv"])  # jobs without LoRAs still run
    adapters.activate((("ink", 1.0),), ["prompt_cache", "channels_last"])  # a layout change leaves the modules
    assert [lora.id for lora in adapters.loaded] == ["ink"]


@pytest.fixture
def s3() -> Iterator[S3Client]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="stack-media")
        yield client


def test_a_lora_in_s3_is_fetched_once_per_revision_and_verified(ink: Path, s3: S3Client, tmp_path: Path) -> None:
    s3.upload_file(str(ink / WEIGHT_FILE), "stack-media", f"loras/ink/r1/{WEIGHT_FILE}")
    registry = LoraRegistry.model_validate({"loras": [{**lora_entry(ink), "source": "s3://stack-media/loras/ink/r1"}]})
    entry = registry.loras[0]
    folder = lora_folder(entry, tmp_path, s3=s3)
    assert folder.is_relative_to(tmp_path)
    assert weight_checksums(folder) == entry.checksums
    s3.delete_object(Bucket="stack-media", Key=f"loras/ink/r1/{WEIGHT_FILE}")
    assert lora_folder(entry, tmp_path, s3=s3) == folder  # the copy of this revision, not a second fetch
    adapters = LoraAdapters(
        load_model("tiny", device="cpu").pipeline, "tiny", registry, max_bytes=2**30, cache_root=tmp_path, s3=s3
    )
    adapters.activate((("ink", 1.0),))
    assert [lora.id for lora in adapters.loaded] == ["ink"]
    retired = entry.model_copy(update={"revision": "r2"})  # a revision not copied, and gone from the bucket
    with pytest.raises(LoraNotFound, match="could not fetch"):
        lora_folder(retired, tmp_path, s3=s3)


class _Throttled:
    """An S3 client whose downloads are refused for a passing reason, as S3 answers under load."""

    def download_file(self, bucket: str, key: str, filename: str) -> None:
        raise ClientError(
            {
                "Error": {"Code": "SlowDown", "Message": "Reduce your request rate."},
                "ResponseMetadata": {"HTTPStatusCode": 503},
            },
            "GetObject",
        )


class _BodyKeepsBreaking:
    """An S3 client whose transfer gave up after its own retries of a body read that kept breaking off."""

    def download_file(self, bucket: str, key: str, filename: str) -> None:
        raise RetriesExceededError(ConnectionResetError("reset by peer"))


@pytest.mark.parametrize("client", [_Throttled(), _BodyKeepsBreaking()], ids=["throttled", "body-broke"])
def test_a_lora_s3_cannot_serve_now_is_unavailable_not_missing(ink: Path, tmp_path: Path, client: object) -> None:
    """A throttled or broken fetch is worth another try (the worker hands the batch back); a missing key is not."""
    registry = LoraRegistry.model_validate({"loras": [{**lora_entry(ink), "source": "s3://stack-media/loras/ink/r1"}]})
    with pytest.raises(LoraUnavailable) as refused:
        lora_folder(registry.loras[0], tmp_path, s3=cast("S3Client", client))
    assert not isinstance(refused.value, LoraNotFound)


class _FetchingAlongside:
    """An S3 client whose first download waits while another worker sharing the model cache fetches the same
    revision and starts using its copy (two workers of one instance taking jobs of one new LoRA at once)."""

    def __init__(self, s3: S3Client, other_worker: Callable[[], None]) -> None:
        self._s3 = s3
        self._other_worker: Callable[[], None] | None = other_worker

    def download_file(self, bucket: str, key: str, filename: str) -> None:
        if self._other_worker is not None:
            other, self._other_worker = self._other_worker, None
            other()
        self._s3.download_file(bucket, key, filename)


def test_a_second_fetch_of_a_revision_leaves_the_copy_another_worker_is_loading(
    ink: Path, s3: S3Client, tmp_path: Path
) -> None:
    s3.upload_file(str(ink / WEIGHT_FILE), "stack-media", f"loras/ink/r1/{WEIGHT_FILE}")
    registry = LoraRegistry.model_validate({"loras": [{**lora_entry(ink), "source": "s3://stack-media/loras/ink/r1"}]})
    entry = registry.loras[0]
    in_use: list[tuple[Path, int]] = []

    def other_worker() -> None:
        folder = lora_folder(entry, tmp_path, s3=s3)
        in_use.append((folder, (folder / WEIGHT_FILE).stat().st_ino))

    folder = lora_folder(entry, tmp_path, s3=cast("S3Client", _FetchingAlongside(s3, other_worker)))
    assert [path for path, _ in in_use] == [folder]
    assert (folder / WEIGHT_FILE).stat().st_ino == in_use[0][1]  # the other worker's file, not replaced under it
    assert weight_checksums(folder) == entry.checksums
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # this fetch's own copy is gone


class _Hub:
    """A hub on 127.0.0.1 that answers every request with one status (and the hub's error code header)."""

    def __init__(self, status: int, error_code: str | None = None) -> None:
        answer = (status, error_code)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(answer[0])
                if answer[1]:
                    self.send_header("X-Error-Code", answer[1])
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def do_HEAD(self) -> None:
                self.do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def _closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.fixture
def online_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str], None]:
    """Points huggingface_hub at a given endpoint (as HF_ENDPOINT does) with an empty cache and online mode."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return lambda url: monkeypatch.setattr(hub_constants, "ENDPOINT", url)


@pytest.mark.parametrize(
    ("hub", "error"),
    [
        (lambda: _Hub(503).url, LoraUnavailable),
        (lambda: _Hub(429).url, LoraUnavailable),
        (_closed_port, LoraUnavailable),
        (lambda: _Hub(404, "RepoNotFound").url, LoraNotFound),
        (lambda: _Hub(404, "RevisionNotFound").url, LoraNotFound),
        (lambda: _Hub(401).url, LoraNotFound),
    ],
    ids=["hub-down", "throttled", "unreachable", "no-repository", "no-revision", "token-refused"],
)
def test_a_hub_lora_the_hub_cannot_serve_now_is_unavailable_and_a_missing_one_not_found(
    ink: Path, online_hub: Callable[[str], None], hub: Callable[[], str], error: type[Exception]
) -> None:
    """A hub that is down, throttling or out of reach hands the batch back for a later try (``LoraUnavailable``);
    a repository, revision or token the hub refuses fails the jobs (``LoraNotFound``)."""
    online_hub(hub())
    registry = LoraRegistry.model_validate({"loras": [{**lora_entry(ink), "source": "hub:sdq-tests/ink-lora"}]})
    with pytest.raises((LoraUnavailable, LoraNotFound)) as refused:
        lora_folder(registry.loras[0])
    assert type(refused.value) is error


def test_a_hub_lora_offline_without_a_cached_copy_is_not_found(ink: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE without the revision in the cache is the deployment's choice: another try would not help."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    registry = LoraRegistry.model_validate({"loras": [{**lora_entry(ink), "source": "hub:sdq-tests/ink-lora"}]})
    with pytest.raises(LoraNotFound):
        lora_folder(registry.loras[0])
