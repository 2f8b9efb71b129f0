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
