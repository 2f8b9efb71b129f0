"""Reading what a student sends: files that may be links, huge, binary or hand-edited, and text for display.

Every reader here returns the reason a file cannot be used instead of raising, so that one bad file costs
its part of a submission, never the grading run.
"""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path

MAX_TEXT = 160  # characters of any student-controlled string shown in the leaderboard


def clean_text(value: object, limit: int = MAX_TEXT) -> str:
    """A student-controlled value as one short printable line (control characters and newlines replaced)."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def link_problem(path: Path, what: str) -> str | None:
    """Why ``path`` is not a plain file of the submission (a link, a folder, a device); None when it is."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):
        return f"{what} is a link: hand in the file itself"
    if not stat.S_ISREG(mode):
        return f"{what} is not a plain file"
    return None


def read_json_file(path: Path, limit: int, made_by: str) -> tuple[object, str | None]:
    """The JSON in ``path`` (a plain file, at most ``limit`` bytes), or why it cannot be used."""
    why = link_problem(path, path.name)
    if why:
        return None, why
    try:
        with open(path, "rb") as file:
            raw = file.read(limit + 1)
    except OSError:
        return None, f"{path.name} cannot be read: hand it in again"
    if len(raw) > limit:
        return None, f"{path.name} is over {limit // 1024} kB, far more than {made_by} writes"
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant), None
    except UnicodeDecodeError:
        return None, f"{path.name} is not a text file: make it with {made_by}"
    except (ValueError, RecursionError) as error:
        if "JSON allows" in str(error):
            return None, f"{path.name} holds {str(error).split()[0]}, which is not a number: make it with {made_by}"
        line = f" (line {error.lineno}: {error.msg})" if isinstance(error, json.JSONDecodeError) else ""
        return None, f"{path.name} is not valid JSON{line}: make it with {made_by}"


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def finite_number(value: object, low: float = 0.0, high: float = math.inf, strict_low: bool = False) -> float | None:
    """A JSON number within [low, high] (above ``low`` with ``strict_low``) as a float; None for anything else:
    bools, strings, NaN, infinities, and integers too large for a float (a 400-digit int)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    if not math.isfinite(number) or number < low or number > high or (strict_low and number == low):
        return None
    return number
