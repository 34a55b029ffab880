"""The README's configuration table documents every setting, so a new one cannot ship unexplained."""

from __future__ import annotations

import re
from pathlib import Path

from shared.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_configuration_table() -> None:
    text = README.read_text()
    table = text[text.index("## Configuration") : text.index("## Deploying to AWS")]
    # Nested request limits are documented as SDQ_LIMITS__<NAME>.
    documented = {re.sub(r"__.*", "", v) for v in re.findall(r"`SDQ_([A-Z0-9_]+)", table)}
    variables = {name.upper() for name in Settings.model_fields}
    assert variables - documented == set()
    # And nothing documented that is not a setting (renamed or removed).
    assert documented - variables == set()
