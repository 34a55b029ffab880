"""docs/configuration.md documents every setting, and is exactly what the settings model generates."""

from __future__ import annotations

import re

from cli.configdoc import DOC, main, render
from shared.settings import GROUPS, RequestLimits, Settings, environment_variables


def test_the_configuration_doc_is_what_the_generator_writes() -> None:
    # A changed setting or description needs `python -m cli.configdoc` rerun, so the doc cannot drift.
    assert DOC.read_text() == render()
    assert main(["--check"]) == 0


def test_every_setting_is_in_the_configuration_doc() -> None:
    text = DOC.read_text()
    # Nested request limits are documented as SDQ_LIMITS__<NAME>; grouped settings keep flat SDQ_<NAME> names.
    documented = set(re.findall(r"`(SDQ_[A-Z0-9_]+)`", text))
    variables = environment_variables()
    assert variables - documented == set()
    # And nothing documented that is not a setting (renamed or removed).
    assert documented - variables == set()
    limits = {v for v in re.findall(r"`SDQ_LIMITS__([A-Z0-9_]+)`", text)}
    assert limits == {name.upper() for name in RequestLimits.model_fields}


def test_every_setting_is_explained() -> None:
    for model in (Settings, RequestLimits, *GROUPS.values()):
        unexplained = [name for name, field in model.model_fields.items() if not (field.description or "").strip()]
        assert unexplained == [], f"{model.__name__} fields without a description"
