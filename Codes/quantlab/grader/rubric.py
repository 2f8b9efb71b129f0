"""The rubric: the default (``rubric.yaml``, package data) with an instructor's overrides, checked.

A rubric file passed with ``grade.py --rubric`` holds only the keys it changes;
an unknown key, a wrong type or thresholds the wrong way round is one clear line.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from quantlab.errors import KitError
from quantlab.files import read_yaml
from quantlab.grader.untrusted import clean_text, finite_number

KNOWN_PARTS = ("baseline", "dynamic", "static", "ptq_table", "qat", "pi")
# the default rubric ships inside the package (configs/rubric.yaml links to it): a pip install without -e has it
DEFAULT_RUBRIC = "rubric.yaml"
# keys whose value may be a word: the words each allows (a number too where its default is a number's place)
WORDS = {
    "accuracy.gate": ("interval", "point"),
    "open.full_at": ("best",),
    "engines.pc": ("x86", "onednn", "fbgemm", "any"),
    "scored_model": ("recipe", "best"),
}
NUMBER_OR_WORD = ("open.full_at",)  # a number, or one of its words


def _overlay(defaults: dict, overrides: dict, where: str, source: Path) -> dict:
    """``defaults`` with ``overrides`` on top; an unknown key or a wrong type is a KitError naming it."""
    merged = dict(defaults)
    for key, value in overrides.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in defaults:
            known = ", ".join(map(str, defaults))
            raise KitError(
                f"rubric {source}: unknown key '{clean_text(name, 60)}' (known here: {known}); fix its spelling"
            )
        default = defaults[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise KitError(f"rubric {source}: '{name}' must be a mapping of {', '.join(default)}")
            merged[key] = _overlay(default, value, name, source)
        elif isinstance(default, list):
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise KitError(f"rubric {source}: '{name}' must be a list of names, e.g. {default}")
            if len(value) > len(KNOWN_PARTS) * 2:
                raise KitError(
                    f"rubric {source}: '{name}' lists {len(value)} names; the parts are {', '.join(KNOWN_PARTS)}"
                )
            merged[key] = value
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise KitError(f"rubric {source}: '{name}' must be true or false, got {clean_text(repr(value), 60)}")
            merged[key] = value
        elif value in WORDS.get(name, (default,) if isinstance(default, str) else ()):  # a word the rubric allows
            merged[key] = value
        elif name in WORDS and name not in NUMBER_OR_WORD:
            words = " or ".join(f"'{word}'" for word in WORDS[name])
            raise KitError(f"rubric {source}: '{name}' must be {words}, got {clean_text(repr(value), 60)}")
        elif finite_number(value, low=-1e12, high=1e12) is None:  # not a number, NaN, or a typo's 400 digits
            allowed = "".join(f" or '{word}'" for word in WORDS.get(name, ()))
            raise KitError(f"rubric {source}: '{name}' must be a number{allowed}, got {clean_text(repr(value), 60)}")
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict:
    loaded = read_yaml(path, "rubric")  # no aliases: a 350-byte alias bomb would expand to gigabytes
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise KitError(
            f"rubric {path} must be a YAML mapping (weights:, accuracy:, ...), not a {type(loaded).__name__}"
        )
    return loaded


def load_rubric(path: Path | None) -> dict:
    """The default rubric (``quantlab/grader/rubric.yaml``, package data), with the keys of ``path`` on top when given."""
    with resources.as_file(resources.files("quantlab.grader") / DEFAULT_RUBRIC) as default:
        if not default.is_file():
            raise KitError(f"the default rubric {default} is missing; reinstall the kit or pass --rubric")
        rubric = _read_yaml(default)
    if path is not None:
        rubric = _overlay(rubric, _read_yaml(path), "", path)
    source = path or f"quantlab/grader/{DEFAULT_RUBRIC}"
    unknown = [part for part in rubric["parts"] if part not in KNOWN_PARTS]
    if unknown:
        raise KitError(
            f"rubric {source}: unknown part '{clean_text(unknown[0], 40)}' in parts (known: {', '.join(KNOWN_PARTS)})"
        )
    if any(value < 0 for value in rubric["weights"].values()) or sum(rubric["weights"].values()) <= 0:
        raise KitError(f"rubric {source}: weights must be zero or more, and not all zero")
    for section, low, high in (
        ("accuracy", "full_at_drop", "zero_at_drop"),
        ("speedup", "zero_at", "full_at"),
        ("size", "zero_at", "full_at"),
    ):
        if not rubric[section][low] < rubric[section][high]:
            raise KitError(f"rubric {source}: {section}.{low} must be below {section}.{high}")
    open_target = rubric["open"]
    if open_target["max_drop"] < 0:
        raise KitError(f"rubric {source}: open.max_drop is the top-1 points the open model may lose, 0 or more")
    if open_target["zero_at"] < 1:
        raise KitError(f"rubric {source}: open.zero_at is a speed-up over the default model, at least 1")
    if open_target["full_at"] != "best" and not open_target["zero_at"] < open_target["full_at"]:
        raise KitError(f"rubric {source}: open.zero_at must be below open.full_at (or full_at: best)")
    if open_target["best_cap"] < 1:
        raise KitError(f"rubric {source}: open.best_cap is a factor over the next best speed-up, at least 1")
    if rubric["pi"]["max_fps"] <= 0 or rubric["pi"]["max_model_fps"] <= 0:
        raise KitError(f"rubric {source}: pi.max_fps and pi.max_model_fps must be positive")
    if rubric["tolerance"]["speedup_factor"] < 1:
        raise KitError(f"rubric {source}: tolerance.speedup_factor is a factor (x/÷), at least 1")
    return rubric


def ramp(value: float, zero_at: float, full_at: float) -> float:
    """0 at ``zero_at``, 1 at ``full_at``, a straight line between, clipped (works both ways round)."""
    return min(1.0, max(0.0, (value - zero_at) / (full_at - zero_at)))
