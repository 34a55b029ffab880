"""Input images of image-to-image and inpainting jobs: the request's fields and the checks made at submit."""

from __future__ import annotations

import base64
import io
import random
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError
from ulid import ULID

from shared.contracts import GenerationRequest
from shared.settings import RequestLimits
from workflows.preprocessing import InvalidInput, data_url_bytes, normalise

LIMITS = RequestLimits()


def encoded(image: Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def rgb(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    pixel = image.getpixel((x, y))
    assert isinstance(pixel, tuple)
    return pixel


def declared_png(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def validate(**fields: Any) -> GenerationRequest:
    return GenerationRequest.model_validate({"prompt": "a fox", **fields})


@contextmanager
def refused(code: str, field: str = "image") -> Iterator[None]:
    """The block raises InvalidInput with this code, naming this field, as a 422."""
    with pytest.raises(InvalidInput) as caught:
        yield
    exc = caught.value
    assert (exc.code, exc.field, exc.status) == (code, field, 422)
    assert [d["loc"] for d in exc.body()["error"]["details"]] == [["body", field]]


# -- the request -------------------------------------------------------------------------------------


def test_mode_follows_the_inputs_and_strength_defaults_as_diffusers() -> None:
    upload = str(ULID())
    text, image = validate(), validate(image=upload)
    inpaint = validate(image=upload, mask="data:image/png;base64,AAAA")
    assert (text.mode, image.mode, inpaint.mode) == ("text", "image", "inpaint")
    assert text.normalised().strength is None
    assert image.normalised().strength == 0.8
    assert inpaint.normalised().strength == 1.0
    assert validate(image=upload, strength=0.3).normalised().strength == 0.3


def test_jobs_batch_only_with_the_same_mode_and_strength() -> None:
    upload = str(ULID())
    assert validate().batch_key() != validate(image=upload).normalised().batch_key()
    a, b = validate(image=upload, strength=0.5), validate(image=str(ULID()), strength=0.5)
    assert a.batch_key() == b.batch_key()
    assert a.batch_key() != validate(image=upload, strength=0.6).batch_key()
    assert a.batch_key() != validate(image=upload, strength=0.5, mask=upload).batch_key()


def test_the_cache_key_covers_the_inputs_and_strength() -> None:
    a = validate(image=str(ULID()), strength=0.5, seed=1).model_copy(update={"image": "sha256:aa"})
    assert a.cache_key() != a.model_copy(update={"image": "sha256:bb"}).cache_key()
    assert a.cache_key() != a.model_copy(update={"strength": 0.6}).cache_key()
    assert a.cache_key() != validate(seed=1).cache_key()


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"image": "../uploads/other/x"}, "image"),
        ({"image": "https://example.com/a.png"}, "image"),
        ({"image": "data:image/png;base64," + "A" * LIMITS.max_data_url_chars}, "image"),
        ({"mask": str(ULID())}, "need an image"),
        ({"strength": 0.5}, "need an image"),
        ({"image": str(ULID()), "strength": 0}, "strength"),
        ({"image": str(ULID()), "strength": 1.5}, "strength"),
    ],
)
def test_malformed_inputs_are_refused_by_the_contract(fields: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate(**fields)
    assert where in str(caught.value)


# -- the checks at submit ------------------------------------------------------------------------------


def test_an_image_is_resized_to_the_jobs_size_as_an_rgb_png() -> None:
    source = Image.new("RGBA", (1024, 768), (200, 10, 10, 255))
    prepared = normalise(encoded(source, "WEBP"), None, width=512, height=384, limits=LIMITS)
    (only,) = prepared.inputs
    out = Image.open(io.BytesIO(only.png))
    assert (out.format, out.mode, out.size) == ("PNG", "RGB", (512, 384))
    assert rgb(out, 10, 10)[0] > 150
    assert only.digest.startswith("sha256:")
    named = prepared.named(validate(image=str(ULID())))
    assert named.image == only.digest


def test_exif_orientation_is_applied_before_the_size_rules() -> None:
    # Stored 320x256 with orientation 6 (rotate 90 degrees clockwise to view): upright it is 256x320.
    source = Image.new("RGB", (320, 256), (0, 0, 255))
    source.paste((255, 0, 0), (0, 0, 160, 256))  # left half red: upright, the top half is red
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(source, "JPEG", exif=exif, quality=95)
    (only,) = normalise(data, None, width=256, height=320, limits=LIMITS).inputs
    out = Image.open(io.BytesIO(only.png))
    assert out.size == (256, 320)
    top, bottom = rgb(out, 128, 40), rgb(out, 128, 280)
    assert top[0] > 200
    assert top[2] < 60
    assert bottom[2] > 200
    assert bottom[0] < 60
    with refused("input_aspect_ratio"):
        normalise(data, None, width=320, height=256, limits=LIMITS)


def test_a_mask_must_match_the_image_and_becomes_greyscale() -> None:
    image = encoded(Image.new("RGB", (600, 600), "white"))
    mask = Image.new("RGB", (600, 600), "black")
    mask.paste((255, 255, 255), (0, 0, 300, 600))
    prepared = normalise(image, encoded(mask), width=512, height=512, limits=LIMITS)
    assert [i.name for i in prepared.inputs] == ["image", "mask"]
    out = Image.open(io.BytesIO(prepared.inputs[1].png))
    assert (out.mode, out.size, out.getpixel((10, 10)), out.getpixel((500, 10))) == ("L", (512, 512), 255, 0)
    with refused("mask_size_mismatch", "mask"):
        normalise(image, encoded(Image.new("L", (512, 512))), width=512, height=512, limits=LIMITS)


def test_what_is_not_a_png_jpeg_or_webp_is_refused_whatever_it_claims() -> None:
    with refused("not_an_image"):
        normalise(b"GIF89a not really", None, width=512, height=512, limits=LIMITS)
    with refused("not_an_image"):
        normalise(encoded(Image.new("RGB", (512, 512)), "GIF"), None, width=512, height=512, limits=LIMITS)
    truncated = encoded(Image.effect_noise((512, 512), 64).convert("RGB"))[:2000]
    with refused("not_an_image"):
        normalise(truncated, None, width=512, height=512, limits=LIMITS)


@pytest.mark.parametrize("side", [5000, 100_000])
def test_a_png_declaring_huge_dimensions_is_refused_before_decoding(side: int) -> None:
    with refused("input_dimensions"):
        normalise(declared_png(side, side), None, width=512, height=512, limits=LIMITS)


def test_sides_and_bytes_are_bounded() -> None:
    with refused("input_dimensions"):
        normalise(encoded(Image.new("RGB", (32, 32))), None, width=512, height=512, limits=LIMITS)
    small = RequestLimits(max_input_bytes=100)
    with refused("input_too_large"):
        normalise(encoded(Image.effect_noise((256, 256), 64)), None, width=256, height=256, limits=small)


def test_data_urls_must_be_base64() -> None:
    data = encoded(Image.new("RGB", (256, 256)))
    assert data_url_bytes("data:image/png;base64," + base64.b64encode(data).decode(), "image") == data
    with refused("invalid_data_url"):
        data_url_bytes("data:image/png,plain", "image")
    with refused("invalid_data_url", "mask"):
        data_url_bytes("data:image/png;base64,!!!", "mask")


def test_damaged_images_are_refused_never_an_internal_error() -> None:
    rng = random.Random(23)
    codes: set[str] = set()
    sources = [encoded(Image.effect_noise((256, 256), 50).convert("RGB"), fmt) for fmt in ("PNG", "JPEG", "WEBP")]
    for _ in range(300):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(min(len(data), 400))] = rng.randrange(256)  # mostly headers and chunk tables
        cut = bytes(data[: rng.randrange(1, len(data))] if rng.random() < 0.3 else data)
        try:
            normalise(cut, None, width=256, height=256, limits=LIMITS)
        except InvalidInput as exc:  # anything else fails the test
            codes.add(exc.code)
    assert "not_an_image" in codes
    assert codes <= {"not_an_image", "input_dimensions", "input_aspect_ratio"}
