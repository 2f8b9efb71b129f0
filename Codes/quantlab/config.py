"""How quantize_model.py's settings table works: one ``Setting`` per setting, its flag, its key in a --config file.

The table itself (``SETTINGS``) is at the top of ``Codes/quantize_model.py``,
where a student looks for the defaults. Its ``--config FILE.yaml`` takes the
same settings in sections modelled on the STM32 model zoo:

    general:        {model_path: mobilenet_v2, arch: mobilenet_v2}
    operation_mode: chain_eqe          # quantization | chain_eqe | chain_qb | chain_eqeb
    dataset:        {quantization_path: DIR, quantization_split: 0.2, test_path: DIR, seed: 0}
    preprocessing:  {rescaling: {scale: ..., offset: ...}, resizing: {interpolation: bilinear, aspect_ratio: crop},
                     color_mode: rgb}
    quantization:   {method: static, granularity: per_channel, observer: histogram, engine: auto,
                     calibration_images: 100, keep_float: [features.0.0], format: torchscript, export_dir: DIR}
    training:       {train_path: DIR, epochs: 1, learning_rate: 3e-5, loss: distill, freeze_bn_epoch: 0,
                     freeze_observers_epoch: 1}
    benchmarking:   {runs: 50, warmup: 10, threads: 2}
    evidence:       {...}              # read by the grader, not here (notebook 3b's my_recipe.yaml: labs/homework.md)

``load_config`` returns flat settings named like the flags; an unknown key or
a value of the wrong kind is a KitError that names it. No torch here.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantlab.errors import KitError
from quantlab.files import read_yaml

INTERPOLATIONS = ("bilinear",)  # what the kit's pre-processing (and torchvision's eval transform) does
ASPECT_RATIOS = ("crop",)
COLOR_MODES = ("rgb", "bgr")
SECTIONS = (
    "general",
    "operation_mode",
    "dataset",
    "preprocessing",
    "quantization",
    "training",
    "benchmarking",
    "evidence",
)
# sections a run does not read: a recipe's evidence (notebook 3b's table) is for the report and the grader
NOT_SETTINGS = ("operation_mode", "evidence")


def number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError
    written = str(value).strip()
    if "/" in written:  # STM32 configs write scales as fractions, e.g. 1/127.5
        numerator, denominator = written.split("/", 1)
        return float(numerator) / float(denominator)
    return float(written)


def numbers(value: Any) -> tuple[float, ...]:
    """A scalar or a list of 3 (one per RGB channel)."""
    values = value if isinstance(value, list) else [value]
    if len(values) not in (1, 3):
        raise ValueError
    return tuple(number(v) for v in values)


def text(value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError
    return str(value)


def integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError
    return value


def layer_names(value: Any) -> tuple[str, ...]:
    """Layer names: a YAML list of names, or one text of names separated by commas (the flag's form)."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(name, str) and name.strip() for name in value):
        raise ValueError
    return tuple(name.strip() for name in value)


def count(value: Any) -> int:
    """A whole number of at least 1 (photos, epochs, runs): the check ``arguments.int_at_least(1)`` makes of a flag."""
    if integer(value) < 1:
        raise ValueError
    return value


def share(value: Any) -> float:
    """A fraction in (0, 1]: the check ``arguments.fraction`` makes of a flag."""
    converted = number(value)
    if not 0 < converted <= 1:
        raise ValueError
    return converted


@dataclass(frozen=True)
class Setting:
    """One setting of quantize_model.py, declared once: its default, its flag and its key in a --config file."""

    default: Any
    help: str | None = None  # the command-line flag's help; None: no flag (set it in --config)
    flag_type: Callable[[str], Any] = str  # how the flag's text becomes the value
    choices: tuple[str, ...] | None = None  # the flag's allowed values
    yaml: str | None = None  # "section.key" in a --config file
    convert: Callable[[Any], Any] = text  # how the YAML value becomes the value
    expected: str = ""  # what the YAML value must be, for the error message


Table = dict[str, Setting]


def defaults(table: Table) -> dict[str, Any]:
    """Every setting at its default."""
    return {name: setting.default for name, setting in table.items()}


def add_flags(parser: argparse.ArgumentParser, table: Table) -> None:
    """One flag per setting that has one (``--calib-data`` for calib_data); a flag not given stays None."""
    for name, setting in table.items():
        if setting.help is not None:
            parser.add_argument(
                f"--{name.replace('_', '-')}",
                type=setting.flag_type,
                choices=setting.choices,
                default=None,
                help=setting.help,
            )


def schema(table: Table) -> dict[str, dict[str, tuple[str, Callable, str] | None]]:
    """section -> key -> (flat setting name, converter, what the value must be); None: a nested section."""
    sections: dict[str, dict[str, tuple[str, Callable, str] | None]] = {
        "general": {},
        "dataset": {},
        "preprocessing": {"rescaling": None, "resizing": None},
        "rescaling": {},
        "resizing": {},
        "quantization": {},
        "training": {},
        "benchmarking": {},
    }
    for name, setting in table.items():
        if setting.yaml:
            section, key = setting.yaml.split(".")
            sections[section][key] = (name, setting.convert, setting.expected)
    return sections


def _short(value: Any) -> str:
    """A value for a one-line error, capped."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _name(key: Any) -> str:
    """A key as written in the file, for a one-line error: printable characters only, capped."""
    shown = "".join(character if character.isprintable() else "?" for character in str(key))
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _section(config: dict, name: str, where: str, rules: dict, settings: dict) -> None:
    body = config.get(name) or {}
    if not isinstance(body, dict):
        raise KitError(f"{where}: '{name}' must be a section of keys, got {type(body).__name__}")
    for key, value in body.items():
        if key not in rules[name]:
            raise KitError(
                f"{where}: unknown key '{name}.{_name(key)}'; known keys of '{name}': {', '.join(rules[name])}"
            )
        rule = rules[name][key]
        if rule is None:  # a nested section
            _section(body, key, where, rules, settings)
            continue
        flat, convert, expected = rule
        try:
            converted = convert(value)
        except (ValueError, TypeError, ZeroDivisionError):
            raise KitError(f"{where}: '{name}.{key}' must be {expected}, got {_short(value)}") from None
        settings[flat] = converted  # paths stay relative to the working folder, as on the command line


def load_config(path: Path, table: Table) -> dict[str, Any]:
    """Flat settings from a YAML file; KitError for a missing file, bad YAML, or an unknown key."""
    where = str(path)
    config = read_yaml(path, "config file")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise KitError(f"{where}: the file must hold sections (general, dataset, ...), not a {type(config).__name__}")
    for key in config:
        if key not in SECTIONS:
            raise KitError(f"{where}: unknown key '{_name(key)}'; known sections: {', '.join(SECTIONS)}")
    settings: dict[str, Any] = {}
    if "operation_mode" in config:
        mode, modes = config["operation_mode"], table["operation_mode"].choices or ()
        if not isinstance(mode, str):  # e.g. [quantization]: one mode per file
            raise KitError(
                f"{where}: operation_mode must be one name, e.g. quantization, not {_short(mode)}; "
                f"use one of {', '.join(modes)}"
            )
        if mode not in modes:
            raise KitError(f"{where}: operation_mode {_short(mode)} is unknown; use one of {', '.join(modes)}")
        settings["operation_mode"] = mode
    if "evidence" in config and not isinstance(config["evidence"], (dict, type(None))):
        raise KitError(f"{where}: 'evidence' must be a section of keys, got {type(config['evidence']).__name__}")
    rules = schema(table)
    for name in SECTIONS:
        if name not in NOT_SETTINGS:
            _section(config, name, where, rules, settings)
    check_preprocessing(settings)
    return settings


def check_preprocessing(settings: dict) -> None:
    """Refuse resizing the kit's pipeline does not do, instead of silently ignoring it."""
    for key, allowed in (
        ("interpolation", INTERPOLATIONS),
        ("aspect_ratio", ASPECT_RATIOS),
        ("color_mode", COLOR_MODES),
    ):
        value = settings.get(key)
        if value is not None and value not in allowed:
            raise KitError(
                f"preprocessing {key} '{value}' is not supported: the kit resizes like torchvision's "
                f"evaluation transform (centre crop, bilinear); use {' or '.join(allowed)}"
            )
