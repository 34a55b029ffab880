"""The speed-lever flags of ``sdq bench worker`` and ``python -m benchmarks.worker_bench``.

One flag per ``AccelerationOptions`` field, derived from it: its kind from the field's type, its help from the
acceleration setting of the same name (``AccelerationSettings``, ``shared/settings.py``), its default from the
options model (a flag not given leaves the option at its default).
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import fields
from typing import Any

from shared.settings import AccelerationSettings
from workflows.generation.acceleration.options import (
    RUNNER_PROFILE,
    TEXT_OPTIONS,
    AccelerationOptions,
    option_value,
    service_default,
    variable_name,
)

# Flags whose names differ from their option's (the names these commands have always taken).
FLAG_NAMES = {"prompt_cache_size": "--prompt-cache", "cache_dir": "--compile-cache-dir"}


def flag_name(option: str) -> str:
    return FLAG_NAMES.get(option, "--" + option.replace("_", "-"))


def _help(option: str) -> str:
    text = AccelerationSettings.model_fields[option].description or ""
    if option in RUNNER_PROFILE:
        here, service = RUNNER_PROFILE[option], service_default(option)
        text += f" (default here: {here}; the service worker's {variable_name(option)}: {service})"
    return text.replace("%", "%%")  # argparse formats help with %


def add_acceleration_arguments(parser: argparse.ArgumentParser) -> None:
    """The speed-lever flags, plus ``--precision`` and ``--levers``."""
    group = parser.add_argument_group("speed levers (issue 8); none given: the plain eager benchmark")
    precision = AccelerationSettings.model_fields["precision"]
    literal = next(arg for arg in typing.get_args(precision.annotation) if typing.get_args(arg))
    group.add_argument("--precision", choices=list(typing.get_args(literal)), help=precision.description)
    hints = typing.get_type_hints(AccelerationOptions)
    defaults = AccelerationOptions()
    for f in fields(AccelerationOptions):
        kind: dict[str, Any] = {"dest": f.name, "default": None, "help": _help(f.name)}
        if f.name in TEXT_OPTIONS:
            kind["metavar"] = "LIST"
        elif hints[f.name] in (bool, bool | None):
            # A lever off by default is switched on; one that is on (or auto) takes --x / --no-x.
            off = getattr(defaults, f.name) is False
            kind["action"] = "store_true" if off else argparse.BooleanOptionalAction
        elif hints[f.name] is int:
            kind.update(type=int, metavar="N")
        elif hints[f.name] is float:
            kind.update(type=float, metavar="SHARE")
        group.add_argument(flag_name(f.name), **kind)
    group.add_argument("--levers", action="store_true", help="measure eager, then levers, even with defaults")


def acceleration_from_args(args: argparse.Namespace) -> AccelerationOptions | None:
    """The options the flags ask for; None when they ask for nothing but the defaults (the plain eager benchmark)."""
    given = {
        f.name: option_value(f.name, getattr(args, f.name))
        for f in fields(AccelerationOptions)
        if getattr(args, f.name) is not None
    }
    options = AccelerationOptions(**given)
    if options == AccelerationOptions() and not args.levers:
        return None
    return options
