"""Request validation: every bound, on both sides, with limits coming from settings."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from shared.contracts import SEED_MAX, GenerationRequest
from shared.settings import RequestLimits, Settings
from tests.cases import INTERNAL_CALLBACK_URLS

SETTINGS = Settings(models=["tiny", "sd15"], default_model="tiny")


def validate(settings: Settings = SETTINGS, **fields: Any) -> GenerationRequest:
    body = {"prompt": "a red fox", **fields}
    return GenerationRequest.model_validate(body, context={"settings": settings})


def error_fields(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in e["loc"]) or "__root__" for e in exc.errors()}


def test_defaults_are_documented_values() -> None:
    req = validate()
    assert (req.width, req.height, req.num_inference_steps, req.guidance_scale) == (512, 512, 30, 7.5)
    assert req.num_images == 1
    assert req.output_format == "png"
    assert req.seed is None


@pytest.mark.parametrize(
    ("field", "ok", "bad"),
    [
        ("prompt", "x", ""),
        ("prompt", "x" * 2000, "x" * 2001),
        ("prompt", "a\nb\tc", "   "),
        ("prompt", "\u200bfox", "\u200b"),  # a zero-width space shows nothing
        ("prompt", "\ufefffox", "\ufeff \u2060"),  # nor does a byte order mark or a word joiner
        ("prompt", "fox", "fox\x00"),
        ("prompt", "fox", "fox\x1b[31m"),
        ("negative_prompt", "n" * 2000, "n" * 2001),
        ("width", 256, 248),
        ("width", 1024, 1032),
        ("width", 512, 513),
        ("height", 256, 248),
        ("height", 1024, 1032),
        ("height", 520, 516),
        ("num_inference_steps", 1, 0),
        ("num_inference_steps", 100, 101),
        ("guidance_scale", 0.0, -0.1),
        ("guidance_scale", 20, 20.01),
        ("guidance_scale", 20, 10**400),  # too large for a float: out of range, not an OverflowError
        ("seed", 0, -1),
        ("seed", SEED_MAX, SEED_MAX + 1),
        ("num_images", 1, 0),
        ("num_images", 4, 5),
        ("quality", 1, 0),
        ("quality", 100, 101),
        ("scheduler", "dpmpp_2m", "k_lms_weird"),
        ("output_format", "webp", "gif"),
        ("model", "sd15", "not-allowed"),
        ("metadata", {"k": "v"}, {f"k{i}": "v" for i in range(17)}),
        ("metadata", {"k": "v" * 512}, {"k": "v" * 513}),
        ("metadata", {"k": "v"}, {"": "v"}),
        ("callback_url", "https://hooks.example.com/x", "http://hooks.example.com/x"),
    ],
)
def test_each_bound_accepts_inside_and_rejects_outside(field: str, ok: Any, bad: Any) -> None:
    assert getattr(validate(**{field: ok}), field) == ok
    with pytest.raises(ValidationError) as info:
        validate(**{field: bad})
    assert field in error_fields(info.value)


def test_area_cap_rejects_large_both_sides() -> None:
    tight = Settings(limits=RequestLimits(max_pixels=512 * 768))
    assert validate(tight, width=512, height=768).width == 512
    with pytest.raises(ValidationError, match="width\\*height"):
        validate(tight, width=768, height=768)


def test_unknown_fields_and_wrong_types_are_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        validate(colour="red")
    assert "colour" in error_fields(info.value)
    for field, value in [("width", "512"), ("width", 512.5), ("num_images", True), ("prompt", 5), ("seed", "7")]:
        with pytest.raises(ValidationError):
            validate(**{field: value})
    # JSON has one number type: an integral float is that integer.
    assert validate(width=512.0).width == 512


def test_bounds_follow_settings() -> None:
    custom = Settings(limits=RequestLimits(max_side=768, max_steps=10, max_images=2, prompt_max_chars=10))
    validate(custom, width=768, num_inference_steps=10, num_images=2, prompt="0123456789")
    for field, value in [
        ("width", 776),
        ("num_inference_steps", 11),
        ("num_images", 3),
        ("prompt", "x" * 11),
    ]:
        with pytest.raises(ValidationError):
            validate(custom, **{field: value})


@pytest.mark.parametrize("url", INTERNAL_CALLBACK_URLS)
def test_callback_url_refuses_internal_targets(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate(callback_url=url)
    assert "callback_url" in error_fields(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/\ud800",
        " https://hooks.example.com/",
        "https://hooks.example.com/a\tb",
        "https://hooks.example.com/a\u200bb",
        "https://hooks.example.com:0/",
        "https://hooks.example.com:99999/",
        # In range, but not a port receivers use (443, 8443): a callback never probes other services' ports.
        "https://hooks.example.com:1/x",
        "https://hooks.example.com:65535/x?a=b#c",
        # Host names no resolver takes (an empty label, a label over 63 characters): a 422 now, not a webhook
        # that fails at every attempt.
        "https://hooks..example.com/",
        "https://" + "a" * 64 + ".example.com/",
        # An xn-- label that is no valid punycode: the HTTP client refuses it at every attempt.
        "https://xn--a.example.com/hook",
    ],
)
def test_callback_url_refuses_whitespace_controls_surrogates_and_bad_ports(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate(callback_url=url)
    assert error_fields(info.value) == {"callback_url"}


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com:8443/x",
        "https://hooks.example.com:443/x?a=b#c",
        "https://bücher.example/h%20ook",
        "https://xn--bcher-kva.example/hook",
    ],
)
def test_callback_url_keeps_receiver_ports_and_non_ascii_letters(url: str) -> None:
    assert validate(callback_url=url).callback_url == url


def test_loopback_http_callback_only_when_local_profile_allows() -> None:
    local = Settings(allow_loopback_callbacks=True)
    assert validate(local, callback_url="http://127.0.0.1:9000/hook").callback_url
    with pytest.raises(ValidationError):
        validate(callback_url="http://127.0.0.1:9000/hook")
    # Even the local profile never allows the metadata service.
    with pytest.raises(ValidationError):
        validate(local, callback_url="http://169.254.169.254/")


def test_normalised_draws_and_keeps_seed_and_defaults_model() -> None:
    drawn = validate().normalised(SETTINGS)
    assert drawn.seed is not None
    assert 0 <= drawn.seed <= SEED_MAX
    seeds = {validate().normalised(SETTINGS).seed for _ in range(8)}
    assert len(seeds) > 1  # drawn afresh for each request, not a fixed default
    assert all(seed is not None and 0 <= seed <= SEED_MAX for seed in seeds)
    assert drawn.model == "tiny"
    fixed = validate(seed=42, model="sd15").normalised(SETTINGS)
    assert (fixed.seed, fixed.model) == (42, "sd15")


def test_a_size_left_out_is_the_models_default_from_its_registry_entry() -> None:
    settings = Settings(models=["shapes", "tiny"], default_model="shapes")
    default = validate(settings).normalised(settings)
    assert (default.width, default.height) == (256, 256)  # the built-in shapes model's entry
    asked = validate(settings, width=512, height=384).normalised(settings)
    assert (asked.width, asked.height) == (512, 384)
    one_side = validate(settings, width=320).normalised(settings)
    assert (one_side.width, one_side.height) == (320, 256)
    tiny = validate(settings, model="tiny").normalised(settings)
    assert (tiny.width, tiny.height) == (512, 512)


def test_a_registry_default_size_outside_the_request_limits_is_refused() -> None:
    entry = {"id": "big", "source": "builtin:tiny", "revision": "1", "architecture": "tiny"}
    for size, ok in [({"default_width": 1024, "default_height": 1024}, True), ({"default_width": 128}, False),
                     ({"default_width": 1024, "default_height": 1032}, False)]:  # fmt: skip
        registry = {"models": [entry | size]}
        if ok:
            Settings(model_registry=registry, models=["big"], default_model="big")
        else:
            with pytest.raises(ValidationError, match="default size"):
                Settings(model_registry=registry, models=["big"], default_model="big")


def test_fingerprint_and_batch_key() -> None:
    a, b = validate(seed=1), validate(seed=1)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != validate(seed=2).fingerprint()
    assert validate(prompt="x").batch_key() == validate(prompt="y").batch_key()
    assert validate(width=256).batch_key() != validate().batch_key()


def test_published_schema_shows_configured_bounds() -> None:
    schema = GenerationRequest.model_json_schema()
    assert schema["properties"]["width"]["maximum"] == 1024
    assert schema["properties"]["width"]["multipleOf"] == 8
    assert schema["additionalProperties"] is False


def test_steps_and_guidance_a_request_leaves_out_are_the_operators_defaults() -> None:
    settings = Settings(limits=RequestLimits(default_steps=12, default_guidance=3))
    left_out = GenerationRequest.model_validate({"prompt": "a fox"}).normalised(settings)
    assert (left_out.num_inference_steps, left_out.guidance_scale) == (12, 3.0)
    given = GenerationRequest.model_validate(
        {"prompt": "a fox", "num_inference_steps": 30, "guidance_scale": 7.5}
    ).normalised(settings)
    assert (given.num_inference_steps, given.guidance_scale) == (30, 7.5)
    with pytest.raises(ValidationError, match="default_steps"):
        RequestLimits(default_steps=101)
    assert RequestLimits(max_steps=10, max_guidance=5).default_steps == 10
    assert RequestLimits(max_steps=10, max_guidance=5).default_guidance == 5


def test_a_field_the_deployment_defaults_counts_as_sent_or_left_out_in_the_fingerprint() -> None:
    left_out = GenerationRequest.model_validate({"prompt": "a fox"})
    for field, value in [("width", 512), ("height", 512), ("num_inference_steps", 30), ("guidance_scale", 7.5)]:
        sent = GenerationRequest.model_validate({"prompt": "a fox", field: value})
        assert getattr(sent, field) == getattr(left_out, field)  # the same value on the model...
        assert sent.fingerprint() != left_out.fingerprint(), field  # ...but another body
        assert sent.fingerprint() == GenerationRequest.model_validate({"prompt": "a fox", field: value}).fingerprint()
    assert left_out.fingerprint() == GenerationRequest.model_validate({"prompt": "a fox"}).fingerprint()


# Bounds a client reads from /openapi.json (the playground's form, schemathesis, generated clients): each value here
# is accepted or refused by the published schema exactly as by the model.
SCHEMA_CASES: list[tuple[str, Any, Any]] = [
    ("guidance_scale", 20, 25.5),
    ("guidance_scale", 0.0, -1),
    ("seed", SEED_MAX, SEED_MAX + 1),
    ("seed", 0, -1),
    ("num_inference_steps", 100, 101),
    ("width", 1024, 1032),
    ("webhook_events", ["started", "completed"], []),
    ("webhook_events", ["progress"], ["progress", "progress"]),
    ("metadata", {"k" * 64: "v" * 512}, {"k" * 65: "v"}),
    ("metadata", {"k": "v" * 512}, {"k": "v" * 513}),
    ("metadata", {"k": ""}, {"": "v"}),
]


@pytest.mark.parametrize(("field", "ok", "bad"), SCHEMA_CASES)
def test_the_published_schema_bounds_each_field_as_the_model_does(field: str, ok: Any, bad: Any) -> None:
    schema = GenerationRequest.model_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    # The events go to a callback_url (a check across fields, as strength's need of an image: not in the schema,
    # which also describes the request as a job echoes it, every field filled in).
    base = {"prompt": "x", **({"callback_url": "https://hooks.example.com/x"} if field == "webhook_events" else {})}
    assert validator.is_valid({**base, field: ok})
    GenerationRequest.model_validate({**base, field: ok})
    assert not validator.is_valid({**base, field: bad})
    with pytest.raises(ValidationError):
        GenerationRequest.model_validate({**base, field: bad})


@pytest.mark.parametrize("callback", [{}, {"callback_url": None}])
def test_webhook_events_without_a_callback_url_are_refused_naming_the_field(callback: dict[str, Any]) -> None:
    body = {"prompt": "x", "webhook_events": ["completed"], **callback}
    with pytest.raises(ValidationError) as info:
        GenerationRequest.model_validate(body)
    [error] = info.value.errors()
    assert error["ctx"] == {"field": "webhook_events"}
    assert "callback_url" in error["msg"]
    # A stored request holds every field (webhook_events with its default, callback_url null): it reads back.
    stored = GenerationRequest.model_validate({"prompt": "x"}).model_dump(mode="json")
    assert GenerationRequest.model_validate(stored, context={"trusted": True}).webhook_events == ["completed"]


def test_the_published_schema_bounds_a_lora_scale_by_the_setting() -> None:
    limit = Settings().limits.max_lora_scale
    validator = jsonschema.Draft202012Validator(GenerationRequest.model_json_schema())
    assert validator.is_valid({"prompt": "x", "loras": [{"id": "a", "scale": -limit}]})
    assert not validator.is_valid({"prompt": "x", "loras": [{"id": "a", "scale": limit + 0.5}]})


def test_the_area_is_checked_with_the_models_default_side_for_a_side_left_out() -> None:
    """A side the request leaves out is its model's: 1024 wide with the model's 1024 high is past the cap, though
    the field's own default (512) would pass; both sides given, or the other side small, pass."""
    entry = {"id": "big", "source": "builtin:tiny", "revision": "1", "architecture": "tiny"}
    registry = {"models": [entry | {"default_width": 512, "default_height": 1024}]}
    limits = RequestLimits(max_pixels=640 * 1024)
    settings = Settings(model_registry=registry, models=["big"], default_model="big", limits=limits)
    with pytest.raises(ValidationError, match="1024x1024") as refused:
        validate(settings, width=1024)
    assert [e["ctx"]["field"] for e in refused.value.errors()] == ["width"]
    assert (validate(settings, width=1024, height=512).normalised(settings).height) == 512
    assert validate(settings, width=640).normalised(settings).height == 1024
