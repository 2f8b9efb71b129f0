"""The kit's output files: written whole or not at all, checked before the work, fingerprinted.

Every tool writes through ``atomic_write`` (a failed run never leaves a
half-written file), refuses an output it could not write before minutes of
work (``check_writable``), and records models by ``sha256_of`` (sidecars,
benchmark reports and the grader compare these). ``read_yaml`` is the one reader of
the YAML a user hands the kit (``quantize_model.py --config``, ``grade.py --rubric``).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from quantlab.errors import KitError


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place (one name per process: two runs writing
    the same file, such as the engine cache, never write into each other's partial file)."""
    return path.with_name(f"{path.name}.{os.getpid()}.partial")


def atomic_write(path: str | Path, write: Callable[[Path], object], flag: str | None = None) -> None:
    """``write(partial)`` then rename onto ``path``: a failed run never leaves a half-written file.

    ``flag`` names the option that chose ``path``, for the error message.
    """
    path = Path(path)
    partial = partial_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(partial)
        os.replace(partial, path)
    except OSError as error:
        raise KitError(
            f"could not write {path} ({error.strerror or type(error).__name__}); "
            f"pick a writable path{f' for {flag}' if flag else ''}"
        ) from None
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, flag: str | None = None) -> None:
    """Write ``text`` (UTF-8) atomically."""
    atomic_write(path, lambda partial: partial.write_text(text, encoding="utf-8"), flag)


def write_json(path: str | Path, document: object, flag: str | None = None) -> None:
    """Write ``document`` as indented JSON, atomically."""
    write_text(path, json.dumps(document, indent=2) + "\n", flag)


def check_writable(path: Path | None, flag: str, example: str = "report.json") -> None:
    """Refuse an output that cannot be written now, not after minutes of work; None passes.

    ``example`` is a file name to suggest when ``path`` is a folder.
    """
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise KitError(f"{flag} {path} is a folder; name a file in it, e.g. {path / example}")
    existing = next((parent for parent in path.absolute().parents if parent.exists()), None)
    if existing is not None and not existing.is_dir():
        raise KitError(f"{flag} {path}: {existing} is a file, not a folder; pick another {flag}")
    if existing is not None and not os.access(existing, os.W_OK):
        raise KitError(f"cannot write into {existing}; pick a writable {flag}")


def sha256_of(path: str | Path) -> str:
    """The file's SHA-256, as the sidecar and the benchmark report record it."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_size_mb(path: str | Path) -> float:
    """Size of a file in MB (10^6 bytes)."""
    return os.path.getsize(path) / 1e6


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases: a few hundred bytes of aliases can expand to gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not allowed here; write the values out", event.start_mark
            )
        return super().compose_node(parent, index)


MAX_YAML_BYTES = 1 << 20  # a settings file is a few hundred bytes


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's content, without aliases; a one-line KitError (``what`` names the file's role) otherwise."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise KitError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise KitError(f"cannot read {what} {path} ({error.strerror or type(error).__name__})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise KitError(f"{what} {path} is over {MAX_YAML_BYTES // 1024} kB; a settings file is much smaller")
    try:
        return yaml.load(raw.decode("utf-8"), Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except UnicodeDecodeError:
        raise KitError(f"{what} {path} is not a text file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        alias = " (aliases are not allowed)" if "alias" in str(error) else ""
        raise KitError(f"{what} {path} is not valid YAML{where}{alias}") from None


def is_torchscript_file(path: str | Path) -> bool:
    """torch.jit.save archives hold the model's code (``<name>/code/``); torch.save state dicts do not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
