"""quantlab.executorch_runtime: PT2E int8 lowered to ExecuTorch's XNNPACK, written as .pte and run like any model.

Needs executorch (requirements-dev.txt pins it); without it the tests skip and the one-line error for the
missing runtime is tested instead. The .pte files are made at test time from a small network: no binary is
committed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import speed_suite
from conftest import run_in_process, run_script
from quantlab import executorch_runtime, loading, pt2e
from quantlab.errors import KitError
from quantlab.report import validate_report

HAS_EXECUTORCH = executorch_runtime.missing() is None
needs_executorch = pytest.mark.skipif(
    not HAS_EXECUTORCH, reason=f"ExecuTorch is not installed ({executorch_runtime.PIN})"
)
SIZE = 32


class SmallNet(nn.Module):
    """Convolutions, ReLU6, a residual add, pooling and a classifier: MobileNetV2's operators, small."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU6())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(), nn.Conv2d(16, 16, 1))
        self.head = nn.Linear(16, 1000)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.stem(images)
        features = features + self.block(features)
        return self.head(nn.functional.adaptive_avg_pool2d(features, 1).flatten(1))


class MeanNet(SmallNet):
    """The same with ``mean`` for pooling: XNNPACK's partitioner leaves it to ExecuTorch's portable kernels."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(images).mean((2, 3)))


@pytest.fixture(scope="module")
def small_net() -> nn.Module:
    torch.manual_seed(0)
    return SmallNet().eval()


@pytest.fixture(scope="module")
def written(small_net: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    calibration = [torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    buffer, facts = executorch_runtime.quantize_to_pte(small_net, calibration, SIZE)
    path = tmp_path_factory.mktemp("pte") / "small.pte"
    sidecar = executorch_runtime.save_pte(buffer, path, {"method": "static", **facts})
    return path, sidecar


@needs_executorch
def test_the_pte_runs_int8_close_to_the_float_model(small_net: nn.Module, written: tuple[Path, dict]) -> None:
    path, sidecar = written
    assert path.read_bytes()[4:8] == executorch_runtime.PTE_IDENTIFIER
    assert sidecar["outside_xnnpack"] == []  # every operator went to XNNPACK: no slow portable kernel
    assert sidecar["target"] == "xnnpack" and sidecar["calibration_images"] == 8 and sidecar["lower_s"] > 0
    model = executorch_runtime.ExecuTorchModel(path, threads=1)
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    scores = model(images)  # a batch of 3 through a batch-1 program: one photo at a time
    with torch.no_grad():
        reference = small_net(images)
    assert scores.shape == (3, 1000)
    # int8, not a float copy: close to the float scores, yet not equal to them
    error = (scores - reference).abs().max().item()
    assert 0 < error < 0.1 * reference.abs().max().item()
    assert torch.equal(model(images[1:2]), scores[1:2])  # each photo's answer does not depend on its batch


@needs_executorch
def test_the_operators_left_outside_xnnpack_are_named() -> None:
    calibration = [torch.randn(2, 3, SIZE, SIZE)]
    _, facts = executorch_runtime.quantize_to_pte(MeanNet().eval(), calibration, SIZE)
    assert facts["outside_xnnpack"] == ["aten.mean.out"]


@needs_executorch
def test_load_any_reads_a_pte_with_its_lowering_time(written: tuple[Path, dict]) -> None:
    path, sidecar = written
    loaded = loading.load_any(path, threads=1, input_size=SIZE, check=False)
    assert (loaded.runtime, loaded.format, loaded.method, loaded.engine) == ("executorch", "pte", "static", None)
    assert loaded.quantized and loaded.sha256 == sidecar["sha256"]
    assert loaded.model.compile_s == sidecar["lower_s"]
    with pytest.raises(KitError, match="pass --size 32"):
        loading.load_any(path, threads=1, input_size=224, check=False)


@needs_executorch
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not a program at all", "lacks the 'ET12' mark"),
        (None, "cannot load"),  # the real file cut in half
    ],
)
def test_a_broken_pte_is_one_line(
    written: tuple[Path, dict], tmp_path: Path, content: bytes | None, expected: str
) -> None:
    broken = tmp_path / "broken.pte"
    good = written[0].read_bytes()
    broken.write_bytes(content if content is not None else good[: len(good) // 2])
    with pytest.raises(KitError, match=expected) as raised:
        executorch_runtime.ExecuTorchModel(broken, threads=1)
    assert "\n" not in str(raised.value)


@needs_executorch
def test_a_wrong_image_size_is_refused_in_one_line(written: tuple[Path, dict]) -> None:
    model = executorch_runtime.ExecuTorchModel(written[0], threads=1)
    with pytest.raises(KitError, match=r"expects images \[3, 32, 32\]"):
        model(torch.randn(1, 3, 64, 64))


def test_without_executorch_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_executorch(name: str, *args, **kwargs):
        if name.startswith("executorch"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_executorch)
    with pytest.raises(KitError, match=r"pip install executorch==") as raised:
        executorch_runtime.require_runtime()
    assert "\n" not in str(raised.value)
    assert executorch_runtime.missing() == str(raised.value)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--output", "x.pte", "--method", "dynamic"], "does static post-training quantization here"),
        (["--output", "x.pte", "--observer", "minmax"], "drop --observer minmax"),
        (["--output", "x.pt", "--format", "pte"], "name it FILE.pte"),
    ],
)
def test_quantize_model_refuses_what_a_pte_cannot_be(tmp_path: Path, args: list[str], expected: str) -> None:
    args = [str(tmp_path / arg) if arg.startswith("x.") else arg for arg in args]
    result = run_in_process("quantize_model.py", *args)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_speed_suite_names_the_executorch_row_and_its_kernels() -> None:
    assert speed_suite.path_runtime("int8 PT2E ExecuTorch") == "executorch"
    assert speed_suite.path_runtime("int8 PT2E inductor") == "inductor"
    row = {"runtime": "executorch", "precision": "int8", "int8_isa": None}
    assert speed_suite.isa_shown(row) == "XNNPACK"


@needs_executorch
@pytest.mark.slow
def test_quantize_model_writes_a_pte_that_benchmark_measures(tmp_path: Path, sample_photos: Path) -> None:
    output = tmp_path / "mnv2_int8.pte"
    made = run_script("quantize_model.py", "--output", output, "--calib-data", sample_photos, "--calib-images", "8")
    assert made.returncode == 0, made.stderr
    assert "lowered to XNNPACK in" in made.stdout
    sidecar = json.loads(output.with_suffix(".json").read_text())
    assert (sidecar["runtime"], sidecar["format"], sidecar["outside_xnnpack"]) == ("executorch", "pte", [])
    report = tmp_path / "report.json"
    measured = run_script(
        "benchmark.py", "--model", output, "--data", sample_photos, "--images", "16", "--runs", "3", "--json", report
    )
    assert measured.returncode == 0, measured.stderr
    written_report = json.loads(report.read_text())
    assert validate_report(written_report) == []  # what the grader's intake checks
    (result,) = written_report["results"]
    assert (result["runtime"], result["format"]) == ("executorch", "pte")
    assert result["compile_s"] == sidecar["lower_s"] and result["top1"] > 50


@pytest.fixture(scope="module")
def xnnpack_pt2(small_net: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .pt2 quantized for XNNPACK (what quantize_model.py --engine qnnpack --output X.pt2 writes)."""
    calibration = [torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    program, facts = pt2e.quantize(small_net, calibration, "arm", SIZE)
    path = tmp_path_factory.mktemp("pt2") / "small_xnnpack.pt2"
    pt2e.save(program, path, {"method": "static", **facts})
    return path


@needs_executorch
def test_a_pt2_quantized_for_xnnpack_is_lowered_to_executorch_as_it_loads(xnnpack_pt2: Path) -> None:
    lowered = pt2e.load_exported(xnnpack_pt2, SIZE)
    assert (lowered.runner, lowered.compiled) == ("executorch", True) and lowered.compile_s > 0
    uncompiled = pt2e.load_exported(xnnpack_pt2, SIZE, compile=False)
    assert (uncompiled.runner, uncompiled.compiled) == (None, False)
    images = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        fast, reference = lowered(images), uncompiled(images)
    # the same int8 model: XNNPACK's kernels round like the exported program's quantize/dequantize pairs
    assert (fast - reference).abs().max().item() < 0.05 * reference.abs().max().item()
    loaded = loading.load_any(xnnpack_pt2, threads=1, input_size=SIZE, check=False)
    assert loaded.engine_reason == "ExecuTorch, XNNPACK"
    assert any("lowered to ExecuTorch's XNNPACK as it loaded" in note for note in loaded.notes)


def test_without_executorch_a_pt2_for_xnnpack_runs_uncompiled(
    xnnpack_pt2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(executorch_runtime, "missing", lambda: executorch_runtime.MISSING)
    loaded = pt2e.load_exported(xnnpack_pt2, SIZE)
    assert (loaded.runner, loaded.compiled, loaded.note) == (None, False, None)


@needs_executorch
def test_a_crafted_pte_that_crashes_executorch_is_one_line(written: tuple[Path, dict], tmp_path: Path) -> None:
    """A non-UTF-8 byte in the name of XNNPACK's packed weights (the last name in the file) aborts ExecuTorch's
    C++ loader: a file the kit did not write loads in a child process first, which dies instead."""
    data = bytearray(written[0].read_bytes())
    *_, last_name = re.finditer(rb"[0-9a-f]{64}", data)
    data[last_name.start() + 5] = 0xE7
    crafted = tmp_path / "crafted.pte"
    crafted.write_bytes(data)
    with pytest.raises(KitError, match=r"crashed \(SIGABRT\) loading .*crafted\.pte: a corrupt") as raised:
        executorch_runtime.ExecuTorchModel(crafted, threads=1)
    assert "\n" not in str(raised.value)
    result = run_script("benchmark.py", "--model", crafted, "--size", SIZE, "--runs", "1", "--warmup", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ExecuTorch")


@needs_executorch
@pytest.mark.parametrize(
    ("sidecar_text", "method", "compile_s"),
    [
        ("[1, 2]", "int8", None),  # not an object: as if there were none
        ('{"method": "qat", "lower_s": -5}', "int8", None),  # a .pte the kit writes is static PTQ, lowered once
        ('{"method": "fp32", "lower_s": NaN}', "int8", None),
        ('{"method": ["x"], "lower_s": "abc"}', "int8", None),
        ('{"method": "static", "lower_s": 12.5}', "static", 12.5),
    ],
)
def test_the_sidecar_of_a_pte_is_read_for_what_it_could_say(
    written: tuple[Path, dict], tmp_path: Path, sidecar_text: str, method: str, compile_s: float | None
) -> None:
    path = tmp_path / "copy.pte"
    path.write_bytes(written[0].read_bytes())
    path.with_suffix(".json").write_text(sidecar_text)
    loaded = loading.load_any(path, threads=1, input_size=SIZE, check=False)
    assert (loaded.method, loaded.model.compile_s, loaded.quantized) == (method, compile_s, True)


def test_an_output_below_a_file_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    result = run_in_process("quantize_model.py", "--output", tmp_path / "taken" / "x.pte")
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
