"""Which torch the kit supports, and which torchao goes with each torch: the one table.

torchao ships compiled kernels built against one torch release; a torchao built for
another torch can fail at ``import torchao`` with an ImportError, or abort the whole
Python process ("Fatal Python error: Aborted", pytorch/ao#2919): a dead notebook
kernel that no ``except`` can catch. So the kit decides from package *metadata*,
before anything imports torchao, whether the installed torchao fits the running
torch, and says in one line which one to install when it does not.

This module imports neither torch nor torchao: notebook 7's setup cell runs it
(``python -m quantlab.compat torchao``) to pick the torchao to install, and
``pt2e.require_torchao`` runs it before its import.

Example:
    python -m quantlab.compat torchao      # prints e.g. torchao==0.15.0 for the installed torch
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

# The oldest torch the kit supports: the Raspberry Pi's pin (requirements-pi.txt), which
# `make test-colab` runs every notebook with. pyproject.toml's torch floor says the same.
OLDEST_TORCH = (2, 9)

# torch (major, minor) -> (torchao to install, the torchao (major, minor) series that load on that torch).
# From torchao's compatibility notes (pytorch/ao#2919 and the version checks in torchao/__init__.py):
# each torchao release is built against one torch; from 0.17 on torchao is built against torch's stable
# ABI and needs torch >= 2.11. Tested here: torch 2.14.1 + torchao 0.18.0 (requirements-dev.txt, CI) and
# torch 2.9.1 + torchao 0.15.0 (make test-colab). A torch newer than the last row gets the last row's pin.
TORCHAO_FOR_TORCH: dict[tuple[int, int], tuple[str, tuple[tuple[int, int], ...]]] = {
    (2, 9): ("0.15.0", ((0, 14), (0, 15))),
    (2, 10): ("0.16.0", ((0, 16),)),
    (2, 11): ("0.17.0", ((0, 17), (0, 18))),
    (2, 12): ("0.18.0", ((0, 17), (0, 18))),
    (2, 13): ("0.18.0", ((0, 17), (0, 18))),
    (2, 14): ("0.18.0", ((0, 17), (0, 18))),
}

_VERSION = re.compile(r"^(\d+)\.(\d+)")


def minor_of(version: str) -> tuple[int, int]:
    """(major, minor) of a version string such as ``2.9.1+cu128`` or ``0.15.0.dev20251101``."""
    match = _VERSION.match(version.strip())
    if match is None:
        raise ValueError(f"not a version number: {version!r}")
    return int(match.group(1)), int(match.group(2))


def installed_version(package: str) -> str | None:
    """A package's installed version from its metadata (never imports it), or None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _row(torch_version: str) -> tuple[str, tuple[tuple[int, int], ...]]:
    torch_minor = minor_of(torch_version)
    if torch_minor < OLDEST_TORCH:
        oldest = ".".join(map(str, OLDEST_TORCH))
        raise UnsupportedTorch(f"torch {torch_version} is older than the kit supports (torch >= {oldest})")
    newest = max(TORCHAO_FOR_TORCH)
    return TORCHAO_FOR_TORCH[min(torch_minor, newest)]


class UnsupportedTorch(ValueError):
    """The running torch is older than the kit supports."""


def torchao_for(torch_version: str) -> str:
    """The torchao release to install beside ``torch_version`` (e.g. ``0.15.0`` for ``2.9.1``)."""
    return _row(torch_version)[0]


def install_hint(torch_version: str) -> str:
    """The pip line for the torchao that fits ``torch_version`` (or what to do when this torch is too old)."""
    try:
        return f"pip install torchao=={torchao_for(torch_version)} (the release for torch {torch_version})"
    except (UnsupportedTorch, ValueError) as error:
        return f"{error}; PT2E needs a newer torch"


def torchao_problem(torch_version: str, torchao_version: str | None) -> str | None:
    """None when ``torchao_version`` loads on ``torch_version``; else one line naming the torchao to install."""
    try:
        pin, series = _row(torch_version)
    except UnsupportedTorch as error:
        return f"{error}; PT2E needs a newer torch"
    if torchao_version is None:
        return f"PT2E needs torchao, which is not installed: pip install torchao=={pin} (the release for torch {torch_version})"
    newest = max(TORCHAO_FOR_TORCH)
    if minor_of(torch_version) > newest and minor_of(torchao_version) >= minor_of(pin):
        return None  # a torch newer than the table: trust a torchao at least as new as the newest pin
    if minor_of(torchao_version) in series:
        return None
    return (
        f"torchao {torchao_version} does not fit torch {torch_version} (importing it can kill the Python kernel): "
        f"pip install torchao=={pin}, then restart the kernel (Colab: Runtime > Restart session)"
    )


def main(argv: list[str]) -> int:
    """``python -m quantlab.compat torchao``: print the torchao requirement for the installed torch."""
    if argv != ["torchao"]:
        print("usage: python -m quantlab.compat torchao", file=sys.stderr)
        return 2
    torch_version = installed_version("torch")
    if torch_version is None:
        print("error: torch is not installed; install torch first (Colab has it)", file=sys.stderr)
        return 2
    try:
        print(f"torchao=={torchao_for(torch_version)}")
    except (UnsupportedTorch, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
