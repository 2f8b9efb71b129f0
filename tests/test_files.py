"""quantlab.files: outputs written whole or not at all, checked before the work, fingerprinted."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from quantlab import files
from quantlab.errors import KitError


def test_write_json_is_whole_and_leaves_no_partial(tmp_path: Path) -> None:
    path = tmp_path / "new" / "run.json"  # the folder is made
    files.write_json(path, {"fps": 12.5})
    assert json.loads(path.read_text()) == {"fps": 12.5}
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.json"]


def test_a_failed_write_keeps_the_old_file_and_no_partial(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    path.write_text("old")

    def fail(partial: Path) -> None:
        partial.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(KitError, match="could not write .*No space left on device.*for --csv"):
        files.atomic_write(path, fail, "--csv")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.csv"]


def test_partial_names_differ_between_processes(tmp_path: Path) -> None:
    partial = files.partial_path(tmp_path / "engine.json")
    assert partial.name == f"engine.json.{os.getpid()}.partial"


def test_check_writable_refuses_folders_and_read_only_places(tmp_path: Path) -> None:
    files.check_writable(None, "--json")
    files.check_writable(tmp_path / "not" / "yet" / "there.json", "--json")  # made when written
    with pytest.raises(KitError, match=r"--plot .* is a folder; name a file in it, e.g. .*speed\.png"):
        files.check_writable(tmp_path, "--plot", "speed.png")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(KitError, match="cannot write into .*locked; pick a writable --json"):
            files.check_writable(locked / "run.json", "--json")


def test_sha256_and_size(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"x" * 3_000_000)
    assert files.sha256_of(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    assert files.file_size_mb(path) == 3.0
