"""Codes/speed_suite.py end to end (tiny --runs: behaviour, not speed); engine auto: test_engines.py.

The LiteRT rows need litert-torch, which the kit keeps out of the default install: where it is missing the suite
says so in one line and these tests check that line; run them with a Python that has it (a venv with
``pip install -e '.[litert]'``) to check the rows themselves.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import pytest
import torch

from conftest import load_script, run_in_process
from quantlab import cpu, executorch_runtime, litert

HAS_LITERT = importlib.util.find_spec("litert_torch") is not None and importlib.util.find_spec("ai_edge_litert")
HAS_EXECUTORCH = executorch_runtime.missing() is None

ENGINES = [e for e in torch.backends.quantized.supported_engines if e != "none"]
EXPECTED_PATHS = [
    "fp32 eager",
    "fp32 channels-last",
    "fp32 TorchScript",
    *[f"int8 {e} {how}" for e in ENGINES for how in ("eager", "TorchScript")],
    "int8 PT2E inductor",
    *(["int8 PT2E ExecuTorch"] if HAS_EXECUTORCH else []),
    "ONNX Runtime fp32",
    "ONNX Runtime int8 static",
    *(["LiteRT fp32", "LiteRT int8"] if HAS_LITERT else []),
]


def test_suite_measures_every_path_and_checks_int8_against_fp32(run, tmp_path, float_weights, sample_photos):
    report_path, plot_path = tmp_path / "out" / "speed.json", tmp_path / "out" / "speed.png"
    result = run(
        "speed_suite.py",
        "--runs",
        "3",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--calib-images",
        "2",
        "--calib-data",
        sample_photos,
        "--weights",
        float_weights,
        "--json",
        report_path,
        "--plot",
        plot_path,
        env={"QUANTLAB_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^threads: 1 \(of \d+ physical cores\); engine auto: (x86|onednn|qnnpack) \(", out, re.M)
    assert f"int8: {cpu.describe()}" in out
    report = json.loads(report_path.read_text())
    assert report["schema"] == "quantlab.speed_suite/1"
    assert report["settings"]["threads"] == report["machine"]["threads"] == 1
    assert report["settings"]["calibration_is_photos"] is True
    results = {r["name"]: r for r in report["results"]}
    assert list(results) == EXPECTED_PATHS
    for name, r in results.items():
        assert r["error"] is None, (name, r["error"])
        assert 0 < r["median_ms"] <= r["p90_ms"]
        # the ratios are rounded to 3 decimals: 0.041 for 0.0406 is right
        assert r["vs_fp32_eager"] == pytest.approx(
            r["median_ms"] / results["fp32 eager"]["median_ms"], rel=0.01, abs=5e-4
        )
        assert r["vs_onnxruntime_fp32"] == pytest.approx(
            r["median_ms"] / results["ONNX Runtime fp32"]["median_ms"], rel=0.01, abs=5e-4
        )
        assert 0 <= r["top1_agreement"] <= 1
        kernels = "onednn" if r["runtime"] == "inductor" else r["engine"]  # inductor's int8 kernels are oneDNN's
        expected_isa = (
            None
            if r["precision"] == "fp32" or r["runtime"] in ("litert", "executorch")  # XNNPACK picks its own kernels
            else cpu.engine_isa(kernels).name
            if kernels
            else cpu.int8_isa().name
        )
        assert r["int8_isa"] == expected_isa, name
        # a median marked "!" is flagged UNSTABLE below the table (a busy machine), with the reason
        assert re.search(rf"^{re.escape(name)}\s+!?{r['median_ms']:.2f}\s+{r['p90_ms']:.2f}\s", out, re.M), name
        assert ("!" in out.split(name, 1)[1].split()[0]) == bool(r["unstable"]), name
        assert r["peak_rss_mb"] is None or r["peak_rss_mb"] > 0
        if r["precision"] == "fp32":  # the same float model in another layout or runtime predicts the same
            assert r["top1_agreement"] == 1.0, name
    assert results["fp32 eager"]["vs_fp32_eager"] == results["ONNX Runtime fp32"]["vs_onnxruntime_fp32"] == 1.0
    # int8 models are calibrated per engine and run on it
    assert {r["engine"] for r in results.values() if r["precision"] == "int8"} == {*ENGINES, None}
    assert report["settings"]["min_agreement"] == 1.0  # the fastest int8 path counts only if it agrees on every photo
    agreeing = [r for r in results.values() if r["precision"] == "int8" and r["top1_agreement"] == 1.0]
    if agreeing:
        best = results[report["best_int8"]]
        assert best["median_ms"] == min(r["median_ms"] for r in agreeing)
        assert (
            f"fastest int8 path that agrees with fp32 on all 2 check photos: {best['name']}, "
            f"{best['median_ms']:.2f} ms = {best['vs_onnxruntime_fp32']:.2f}x ONNX Runtime fp32"
        ) in out
    else:
        assert report["best_int8"] is None and "no int8 path agrees with fp32's top-1 on all 2 check photos" in out
    onnx_format = report["onnxruntime_int8_format"]
    assert onnx_format["quant_format"] == "QDQ" and onnx_format["format_reason"] in out
    assert report["settings"]["auto_engine"] in ("x86", "onednn", "qnnpack")
    litert_facts = report["litert"]
    if HAS_LITERT:  # converted by litert-torch, run by LiteRT's interpreter with XNNPACK and the suite's threads
        assert litert_facts["missing"] is None and litert_facts["converter"] == litert.converter_version()
        assert {results[n]["runtime"] for n in ("LiteRT fp32", "LiteRT int8")} == {"litert"}
        assert re.search(r"^LiteRT int8 .*%  XNNPACK", out, re.M)
        assert "no LiteRT rows" not in out
    else:  # one line says why the rows are missing, and the JSON keeps it
        said = [line for line in out.splitlines() if "LiteRT" in line and "rows" in line]
        assert said == [f"no LiteRT rows: {litert_facts['missing']}"], said
        assert "litert-torch" in litert_facts["missing"] and "Traceback" not in result.stderr
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(report_path.parent.glob("*.partial"))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--runs", "0"], "--runs must be at least 1"),
        (["--calib-data", "no/such/folder"], "data folder no/such/folder does not exist"),
        (["--json", "{tmp}"], "is a folder; name a file"),
    ],
    ids=["runs", "calib-data", "json-folder"],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(run, tmp_path, float_weights, arguments, message):
    arguments = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    result = run(
        "speed_suite.py",
        "--weights",
        float_weights,
        "--plot",
        tmp_path / "plot.png",
        *arguments,
        env={"QUANTLAB_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        line for line in result.stderr.splitlines() if message in line
    ]
    assert not (tmp_path / "plot.png").exists()


def test_without_litert_the_suite_says_why_and_leaves_the_rows_out(monkeypatch: pytest.MonkeyPatch) -> None:
    suite = load_script("speed_suite.py")
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # as if litert-torch were not installed
    assert suite.litert_missing() == litert.CONVERTER_MISSING
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # nor LiteRT's runtime
    assert suite.litert_missing() == litert.RUNTIME_MISSING
    paths = suite.paths_to_time(torch.nn.Identity(), [], None, 1, {}, with_litert=False, with_executorch=True)
    assert not [name for name, *_ in paths if "LiteRT" in name]
    paths = suite.paths_to_time(torch.nn.Identity(), [], None, 1, {}, with_litert=True, with_executorch=True)
    assert [(name, precision) for name, precision, *_ in paths if "LiteRT" in name] == [
        ("LiteRT fp32", "fp32"),
        ("LiteRT int8", "int8"),
    ]


def test_without_executorch_the_suite_says_why_and_leaves_its_row_out(monkeypatch: pytest.MonkeyPatch) -> None:
    suite = load_script("speed_suite.py")
    monkeypatch.setitem(sys.modules, "executorch.runtime", None)  # as if executorch were not installed
    assert suite.executorch_runtime.missing() == executorch_runtime.MISSING
    paths = suite.paths_to_time(torch.nn.Identity(), [], None, 1, {}, with_litert=False, with_executorch=False)
    assert not [name for name, *_ in paths if "ExecuTorch" in name]
    paths = suite.paths_to_time(torch.nn.Identity(), [], None, 1, {}, with_litert=False, with_executorch=True)
    assert [(name, precision) for name, precision, *_ in paths if "ExecuTorch" in name] == [
        ("int8 PT2E ExecuTorch", "int8")
    ]


def test_a_plot_without_matplotlib_is_one_line_before_any_measuring(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the kit's plots extra were not installed
    done = run_in_process("speed_suite.py", "--plot", tmp_path / "speed.png")
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr
        == "error: --plot needs matplotlib, which is not installed: pip install matplotlib (or drop --plot)\n"
    )
    assert not list(tmp_path.iterdir())
