"""Which model files the kit wrote on this account: the ones ``benchmark.py`` runs without being told to trust.

A TorchScript file, a ``.pt2`` exported program or a ``FILE.py:FUNCTION`` spec
carries code that runs when it is loaded (TorchScript's and torch.export's
operators, Python itself). A student's own files are fine to run; a file from
elsewhere (a classmate's, a download, a handed-in homework) belongs in the
grader's sandbox (``grade.py``), or needs ``--trust``. Every model file that
``models.save_with_sidecar`` writes (``quantize_model.py``, the notebooks'
shipping steps, ``pt2e.save``) is remembered by its sha256 in
``$QUANTLAB_CACHE/made_here.json`` (default ``~/.cache/quantlab``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from quantlab import files, vocab
from quantlab.assets import cache_dir
from quantlab.errors import KitError

RECORD = "made_here.json"
MAX_ENTRIES = 2000  # newest kept: a course's worth of files, a small JSON


def _record_path() -> Path:
    return cache_dir() / RECORD


def _read() -> dict[str, str]:
    try:
        record = json.loads(_record_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in record.items()} if isinstance(record, dict) else {}


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One writer at a time: two tools saving models at once must not drop each other's entry."""
    try:
        import fcntl

        _record_path().parent.mkdir(parents=True, exist_ok=True)
        lock = open(_record_path().with_suffix(".lock"), "a")  # noqa: SIM115 - held until the write is done
    except (ImportError, OSError):  # no fcntl (Windows) or no writable cache: write unlocked, or not at all
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def remember(path: Path, sha256: str) -> None:
    """Note that the kit wrote ``path`` (with this sha256) here; never fails the write it follows."""
    with _locked():
        record = _read()
        record.pop(sha256, None)
        record[sha256] = str(Path(path).resolve())
        try:
            files.write_json(_record_path(), dict(list(record.items())[-MAX_ENTRIES:]))
        except KitError:  # a read-only home: the file is still written, benchmark.py will ask for --trust
            pass


def made_here(path: Path) -> bool:
    return files.sha256_of(path) in _read()


def carries_code(spec: str) -> bool:
    """A model spec whose loading runs code from the file: TorchScript, a .pt2 program, FILE.py:FUNCTION."""
    path = Path(spec)
    if vocab.USER_MODEL_SPEC.match(spec) and not path.exists():
        return True
    return path.is_file() and (path.suffix.lower() == vocab.PT2_SUFFIX or files.is_torchscript_file(path))


def require_trusted(spec: str, trust: bool) -> None:
    """A KitError naming the way out when ``spec`` carries code, was not written by the kit here and
    ``trust`` is off."""
    if trust or not carries_code(spec):
        return
    path = Path(spec)
    if path.is_file() and made_here(path):
        return
    kind = "imports and runs that Python file" if not path.exists() else "runs the code a model file holds"
    raise KitError(
        f"--model {spec}: loading it {kind}, and the kit did not write it on this account; "
        "grade files from others with grade.py (sandboxed), or pass --trust if you know where it came from"
    )
