"""The scripts' command lines, checked one way: a bad flag is one line ("error: --runs must be at least 1,
got 0") and exit code 2, like every other KitError (``quantlab.errors.run_cli``), never argparse's usage block.

Each flag's check is its ``type=``: argparse applies it while it reads the command line, so a script's
``parse_args`` returns settings that are already valid.

Example:
    parser = arguments.Parser(description=__doc__)
    parser.add_argument("--runs", type=arguments.int_at_least(1), default=50)
    parser.add_argument("--plot", type=arguments.file_ending(".png"))
    args = parser.parse_args(argv)
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

from quantlab.errors import KitError


class Parser(argparse.ArgumentParser):
    """argparse with the kit's errors: a bad flag raises KitError ("--runs must be ..."), which run_cli prints."""

    def __init__(self, description: str | None = None, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(description=description, **kwargs)

    def error(self, message: str):  # argparse's "argument --runs/-r: X" becomes "--runs X"
        raise KitError(re.sub(r"^argument (-[^/:\s]+)(?:/\S+)?: ", r"\1 ", message))


def int_at_least(least: int) -> Callable[[str], int]:
    """A ``type=`` for a whole number no smaller than ``least`` (1: a count, 0: may be none)."""

    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got '{text}'") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    check.__name__ = f"int_at_least_{least}"
    return check


def fraction(text: str) -> float:
    """A ``type=`` for a share in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a fraction, got '{text}'") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {value:g}")
    return value


def file_ending(suffix: str) -> Callable[[str], Path]:
    """A ``type=`` for a file path that must end in ``suffix`` (``files.check_writable`` checks, once the
    flags are read, that it can be written)."""

    def check(text: str) -> Path:
        if Path(text).suffix.lower() != suffix:
            raise argparse.ArgumentTypeError(f"{text} must end in {suffix}")
        return Path(text)

    check.__name__ = f"file_ending_{suffix.lstrip('.')}"
    return check


def existing_folder(text: str) -> Path:
    """A ``type=`` for a folder that exists (photos to read, say)."""
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"must be a folder, got {text}")
    return Path(text)
