"""One-line errors for students: what went wrong and how to fix it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


class KitError(Exception):
    """A problem the user can fix. Its message names the problem and the fix."""


def run_cli(main: Callable[[], int | None]) -> NoReturn:
    """Run a script's ``main``; turn a KitError into one line on stderr and exit code 2."""
    try:
        code = main()
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
