"""A .pt2 file from elsewhere must not run code when opened: pt2e.check_archive refuses, before torch.export.load,
every entry torch 2.14 would unpickle (weights or constants marked use_pickle, opaque objects, legacy .pt weights,
sample inputs that need pickle), and archives that are not what torch.export.save writes."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from quantlab import pt2e
from quantlab.errors import KitError


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


class _RunsCode:
    """Unpickling it runs a shell command that leaves a file behind: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def honest(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "honest.pt2"
    torch.export.save(torch.export.export(_Tiny().eval(), (torch.randn(1, 3, 8, 8),)), str(path))
    return path


def _rewrite(source: Path, target: Path, change) -> Path:
    """A copy of the archive with ``change(name_below_top, data) -> data | None`` applied (None drops it)."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        top = original.namelist()[0].split("/", 1)[0]
        for name in original.namelist():
            data = change(name.split("/", 1)[1], original.read(name))
            if data is not None:
                copy.writestr(name, data)
        for extra, data in change.extra(top) if hasattr(change, "extra") else []:
            copy.writestr(extra, data)
    return target


def _pickled_weight(marker: Path):
    def change(name: str, data: bytes) -> bytes:
        if name == "data/weights/model_weights_config.json":
            config = json.loads(data)
            config["config"]["conv.weight"]["use_pickle"] = True
            return json.dumps(config).encode()
        if name == "data/weights/weight_0":
            return pickle.dumps(_RunsCode(marker))
        return data

    return change


def _pickled_constant(marker: Path, path_name: str):
    def change(name: str, data: bytes) -> bytes:
        if name == "data/constants/model_constants_config.json":
            return json.dumps({"config": {"lifted": {"path_name": path_name, "use_pickle": True}}}).encode()
        return data

    change.extra = lambda top: [(f"{top}/data/constants/{path_name}", pickle.dumps(_RunsCode(marker)))]
    return change


def _sample_inputs_that_need_pickle(marker: Path):
    def change(name: str, data: bytes) -> bytes:
        if name.startswith("data/sample_inputs/"):
            buffer = io.BytesIO()
            torch.save(_RunsCode(marker), buffer)
            return buffer.getvalue()
        return data

    return change


def _legacy_weights(marker: Path):
    def change(name: str, data: bytes) -> bytes:
        return data

    change.extra = lambda top: [(f"{top}/data/weights/model.pt", pickle.dumps(_RunsCode(marker)))]
    return change


def _foreign_file(marker: Path):
    def change(name: str, data: bytes) -> bytes:
        return data

    change.extra = lambda top: [(f"{top}/data/aotinductor/model.so", b"\x7fELF")]
    return change


def test_an_honest_archive_passes_and_loads(honest):
    pt2e.check_archive(honest)
    loaded = pt2e.load_exported(honest, input_size=8, compile=False)
    assert loaded(torch.randn(1, 3, 8, 8)).shape == (1, 4)


def test_torch_itself_runs_the_pickled_weight(honest, tmp_path):
    """The hole is real on this torch: without the kit's check, opening the file runs the command."""
    marker = tmp_path / "ran"
    evil = _rewrite(honest, tmp_path / "evil.pt2", _pickled_weight(marker))
    with pytest.raises(Exception):  # noqa: B017 - the pickle is no tensor: the load fails, after running it
        torch.export.load(str(evil))
    assert marker.exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (_pickled_weight, "conv.weight is stored as a pickle"),
        (lambda marker: _pickled_constant(marker, "tensor_0"), "lifted is stored as a pickle"),
        (lambda marker: _pickled_constant(marker, "opaque_obj_0"), "lifted is stored as a pickle"),
        (_sample_inputs_that_need_pickle, "sample inputs that need pickle"),
        (_legacy_weights, "legacy pickled weights file"),
        (_foreign_file, "is not part of an exported program"),
    ],
    ids=["weight", "tensor-constant", "opaque-object", "sample-inputs", "legacy-weights", "foreign-file"],
)
def test_every_way_to_unpickle_is_refused_before_loading(honest, tmp_path, make, message):
    marker = tmp_path / "ran"
    evil = _rewrite(honest, tmp_path / "evil.pt2", make(marker))
    with pytest.raises(KitError, match=message):
        pt2e.load_exported(evil, input_size=8, compile=False)
    assert not marker.exists(), "the file's code ran"


def test_an_archive_torch_could_read_two_ways_is_refused(honest, tmp_path):
    twice = tmp_path / "twice.pt2"
    with zipfile.ZipFile(honest) as original, zipfile.ZipFile(twice, "w") as copy:
        for name in original.namelist():
            copy.writestr(name, original.read(name))
        config = next(name for name in original.namelist() if name.endswith("model_weights_config.json"))
        with pytest.warns(UserWarning, match="Duplicate name"):
            copy.writestr(config, original.read(config))
    with pytest.raises(KitError, match="two files of the same name"):
        pt2e.check_archive(twice)


def test_a_file_that_is_no_archive_is_one_line(tmp_path):
    text = tmp_path / "notes.pt2"
    text.write_text("not a model\n")
    with pytest.raises(KitError, match="is not a .pt2 archive"):
        pt2e.load_exported(text, compile=False)


def test_benchmark_and_the_demo_refuse_it_without_running_it(honest, tmp_path, run):
    marker = tmp_path / "ran"
    evil = _rewrite(honest, tmp_path / "evil.pt2", _pickled_weight(marker))
    for script, args in (
        ("benchmark.py", ["--model", evil, "--runs", "1", "--warmup", "0", "--trust"]),
        ("mobile_net.py", ["--model", evil, "--source", "samples", "--frames", "1"]),
    ):
        result = run(script, *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "could run code when opened" in result.stderr, result.stderr
        assert not marker.exists(), f"{script} ran the file's code"
