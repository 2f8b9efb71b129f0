"""One-line errors for students: what went wrong and how to fix it."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import NoReturn


class KitError(Exception):
    """A problem the user can fix. Its message names the problem and the fix."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> NoReturn:
    """Run a script's ``main(argv)`` (None: the command line); turn a KitError into one line on stderr and exit 2."""
    try:
        code = main(argv)
    except KitError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def at_least(flag: str, value: float | None, least: float) -> None:
    """Refuse ``--flag value`` below ``least`` in one line (None: the flag was not given)."""
    if value is not None and value < least:
        raise KitError(f"{flag} must be at least {least:g}, got {value:g}")


def between(flag: str, value: float | None, low: float, high: float, unit: str = "") -> None:
    """Refuse ``--flag value`` outside [low, high] in one line (None: the flag was not given)."""
    if value is not None and not low <= value <= high:
        raise KitError(f"{flag} must be between {low:g} and {high:g}{unit}, got {value:g}")


def first_line(error: BaseException, *, with_type: bool = False, limit: int = 160) -> str:
    """The error's first non-blank line, capped at ``limit`` characters, for a one-line message.

    ``with_type``: prefixed with the exception's class ("ValueError: ..."), for errors raised by code the
    kit does not know (a student's model, a library). torch.export puts its reason after an
    "## Exception summary" header: that line is taken instead of the advice before it.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    summary = next((lines[i + 1] for i, line in enumerate(lines[:-1]) if line.startswith("## Exception summary")), None)
    text = re.sub(r"^<class '[\w.]+'>:\s*", "", summary or (lines[0] if lines else "no details"))
    return f"{type(error).__name__}: {text[:limit]}" if with_type else text[:limit]


def last_line(error: BaseException, *, limit: int = 160) -> str:
    """The error's class and its last non-blank line: a TorchScript error carries the model's code as a
    traceback, whose last line says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {(lines[-1] if lines else 'no details')[:limit]}"
