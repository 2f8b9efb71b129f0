"""A .pt2 file from elsewhere must not run code when opened: pt2e.check_archive refuses, before torch.export.load,
every entry torch 2.14 would unpickle (weights or constants marked use_pickle, opaque objects, legacy .pt weights,
sample inputs that need pickle), shape guards that hold Python (torch compiles and runs them at every call), graph
nodes that call anything but ATen and (de)quantization operators, and archives torch.export.save would not write."""

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


def _program(change_program):
    def change(name: str, data: bytes) -> bytes:
        if name == "models/model.json":
            program = json.loads(data)
            change_program(program)
            return json.dumps(program).encode()
        return data

    return change


def _guard_that_runs(marker: Path):
    return _program(lambda program: program.update(guards_code=[f"__import__('os').system('touch {marker}') == 0"]))


def _node_that_calls(target: str):
    node = {"target": target, "inputs": [{"name": "command", "arg": {"as_string": "true"}, "kind": 1}]}
    return _program(lambda program: program["graph_module"]["graph"]["nodes"].insert(0, {**node, "outputs": []}))


def test_torch_itself_runs_a_shape_guard_when_the_program_is_called(honest, tmp_path):
    """torch.export turns the JSON's guards_code into Python and runs it at every call: a second way in."""
    marker = tmp_path / "ran"
    evil = _rewrite(honest, tmp_path / "guard.pt2", _guard_that_runs(marker))
    torch.export.load(str(evil)).module()(torch.randn(1, 3, 8, 8))
    assert marker.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda marker: _guard_that_runs(marker), "a shape guard holds Python code"),
        (lambda marker: _node_that_calls("torch.os.system"), "calls torch.os.system"),
        (lambda marker: _node_that_calls("torch.ops.aten.from_file.default"), "calls torch.ops.aten.from_file"),
        (lambda marker: _node_that_calls("#evil"), "calls #evil"),
    ],
    ids=["guard", "torch-attribute", "from-file", "extension"],
)
def test_a_program_that_runs_more_than_operators_is_refused(honest, tmp_path, change, message):
    marker = tmp_path / "ran"
    evil = _rewrite(honest, tmp_path / "program.pt2", change(marker))
    with pytest.raises(KitError, match=message):
        loaded = pt2e.load_exported(evil, input_size=8, compile=False)
        loaded(torch.randn(1, 3, 8, 8))
    assert not marker.exists(), "the file's code ran"


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory) -> Path:
    """A program with a dynamic batch axis: its JSON holds symbolic sizes as sympy text."""
    path = tmp_path_factory.mktemp("pt2") / "dynamic.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(_Tiny().eval(), (torch.randn(2, 3, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def _size_that_runs(marker: Path):
    def change(name: str, data: bytes) -> bytes:
        if name == "models/model.json":
            text = data.decode()
            symbol = "integer=True)"
            assert symbol in text, "the exported program holds no symbolic size"
            return text.replace(symbol, f"integer=True)+0*__import__('os').system('touch {marker}')", 1).encode()
        return data

    return change


def test_torch_itself_evaluates_a_symbolic_size(dynamic, tmp_path):
    """torch.export.load hands each symbolic size to sympy.sympify, which evaluates Python: a third way in."""
    marker = tmp_path / "ran"
    torch.export.load(str(_rewrite(dynamic, tmp_path / "size.pt2", _size_that_runs(marker))))
    assert marker.exists()


def test_a_symbolic_size_that_holds_code_is_refused_and_an_honest_one_passes(dynamic, tmp_path):
    pt2e.check_archive(dynamic)
    assert pt2e.load_exported(dynamic, input_size=8, compile=False)(torch.randn(3, 3, 8, 8)).shape == (3, 4)
    marker = tmp_path / "ran"
    evil = _rewrite(dynamic, tmp_path / "size.pt2", _size_that_runs(marker))
    with pytest.raises(KitError, match="a symbolic size holds Python code"):
        pt2e.load_exported(evil, input_size=8, compile=False)
    assert not marker.exists(), "the file's code ran"


def test_a_kit_shaped_guard_passes(honest, tmp_path):
    guarded = _rewrite(
        honest, tmp_path / "guarded.pt2", _program(lambda p: p.update(guards_code=["L['x'].size()[0] == 1"]))
    )
    pt2e.check_archive(guarded)


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


def test_inductor_runs_the_exported_graph_once_compiled_per_input_shape(dynamic):
    """load_exported compiles with inductor directly (no Dynamo guards per call): the same answers as the exported
    program, its first compile time kept, a new batch size (or a channels-last input) compiled or copied as needed."""
    pytest.importorskip("torch._inductor")
    plain = pt2e.load_exported(dynamic, input_size=8, compile=False)
    compiled = pt2e.load_exported(dynamic, input_size=8, compile=True)
    if not compiled.compiled:  # a machine without a C++ compiler: the fallback is the next test's subject
        pytest.skip(compiled.note)
    assert compiled.note is None and compiled.compile_s > 0
    first_compile = compiled.compile_s
    for batch in (torch.randn(1, 3, 8, 8), torch.randn(3, 3, 8, 8)):
        torch.testing.assert_close(compiled(batch), plain(batch), rtol=1e-4, atol=1e-5)
    channels_last = torch.randn(3, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(compiled(channels_last), plain(channels_last), rtol=1e-4, atol=1e-5)
    assert len(compiled.module.by_shape) == 2  # batch 1 and batch 3; the channels-last batch reused batch 3's
    assert compiled.compile_s == first_compile  # what a student waits for before the first answer


def test_a_failed_compile_is_one_note_and_the_program_runs_uncompiled(honest, monkeypatch):
    import torch._inductor

    def no_compiler(*args, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nsecond line of the trace")

    monkeypatch.setattr(torch._inductor, "compile", no_compiler)
    loaded = pt2e.load_exported(honest, input_size=8, compile=True)
    assert not loaded.compiled and loaded.compile_s is None
    assert loaded.note.startswith("note: honest.pt2: inductor failed (RuntimeError: InvalidCxxCompiler")
    assert "\n" not in loaded.note and "uncompiled" in loaded.note
    assert loaded(torch.randn(1, 3, 8, 8)).shape == (1, 4)


@pytest.mark.parametrize("onednn_isa", ["AVX2", None])
def test_the_x86_quantizer_keeps_activations_to_7_bits_where_onednn_saturates(monkeypatch, onednn_isa):
    """Inductor runs oneDNN's int8 kernels: without VNNI their uint8 x int8 sums saturate at full range (the
    speed suite saw PT2E agree with fp32 on 13 of 16 photos with AVX2 forced), so the quantizer gets reduce_range."""
    from quantlab import cpu

    if onednn_isa is None:
        monkeypatch.delenv(cpu.ONEDNN_ENV, raising=False)
    else:
        monkeypatch.setenv(cpu.ONEDNN_ENV, onednn_isa)
    if not pt2e.inductor_int8_available():
        pytest.skip("torchao's x86 quantizer is not available here")
    saturates = cpu.engine_isa("onednn").saturates_u8s8
    assert saturates or onednn_isa is None  # AVX2 forced always saturates
    quantizer, described = pt2e.quantizer_for("x86")
    assert quantizer.global_config.input_activation.quant_max == (127 if saturates else 255)
    assert ("7-bit" in described) == saturates, described
