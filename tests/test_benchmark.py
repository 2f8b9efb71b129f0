"""Codes/benchmark.py as a student runs it: the report it writes, its validation, every bad-input path.

Small on purpose (3 timed runs, 16 photos): one end-to-end run as a student
runs it (a subprocess), the error paths in-process (no interpreter start-up
each). Timings are never asserted: only behaviour.
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import run_in_process, run_script
from quantlab import models
from quantlab.files import file_size_mb, sha256_of
from quantlab.report import (
    validate_report,
)

FAST = ("--runs", "3", "--warmup", "1", "--threads", "2")
GREYSCALE_PHOTO = "n02096051_Airedale.JPEG"  # one of the 23 greyscale photos of the sample


@pytest.fixture(scope="module")
def made(tmp_path_factory, float_weights, sample_photos) -> dict[str, Path]:
    """Model files of every kind, made once: TorchScript int8 (+ sidecar), ONNX fp32, and broken ones."""
    folder = tmp_path_factory.mktemp("bench_models")
    int8 = folder / "int8.pt"
    result = run_script(
        "quantize_model.py",
        "--model",
        float_weights,
        "--output",
        int8,
        "--threads",
        "2",
        "--calib-data",
        sample_photos,
        "--calib-images",
        "8",
    )
    assert result.returncode == 0, result.stderr
    onnx_path = folder / "fp32.onnx"
    # the TorchScript-based exporter: a fifth of the CPU time of onnx_tools.export_onnx (torch.export), and
    # the benchmark only needs a valid file with a dynamic batch axis
    torch.onnx.export(
        models.mobilenet_v2_fp32(float_weights),
        torch.randn(1, 3, 224, 224),
        str(onnx_path),
        input_names=["input"],
        output_names=["logits"],
        dynamo=False,
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    text = folder / "notes.pt"
    text.write_text("not a model\n")
    fake_onnx = folder / "fake.onnx"
    fake_onnx.write_bytes(b"\x00garbage")
    return {
        "int8": int8,
        "onnx": onnx_path,
        "fixed_160": _fixed_shape_onnx(folder / "fixed160.onnx"),
        "text": text,
        "fake_onnx": fake_onnx,
    }


def _fixed_shape_onnx(path: Path) -> Path:
    """A tiny valid ONNX model whose input is fixed at 1x3x160x160 (what --size 224 cannot feed)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["logits"]),
        ],
        "fixed",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 160, 160])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@pytest.fixture(scope="module")
def full_run(made, float_weights, sample_photos, tmp_path_factory) -> dict:
    """One run over all four kinds of model with data, JSON, CSV and plot, as a student runs it."""
    out = tmp_path_factory.mktemp("bench_out")
    files = {"json": out / "report.json", "csv": out / "report.csv", "plot": out / "report.png"}
    result = run_script(
        "benchmark.py",
        "--model",
        float_weights,
        "--model",
        made["int8"],
        "--model",
        "mobilenet_v2",
        "--model",
        made["onnx"],
        "--data",
        sample_photos,
        "--holdout",
        "8",
        "--images",
        "16",
        *FAST,
        "--json",
        files["json"],
        "--csv",
        files["csv"],
        "--plot",
        files["plot"],
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return {"stdout": result.stdout, "stderr": result.stderr, **files, "report": json.loads(files["json"].read_text())}


# ---- the full run ------------------------------------------------------------------


def test_report_is_valid_and_covers_every_format(full_run, made, float_weights):
    report = full_run["report"]
    assert validate_report(report) == []
    results = report["results"]
    assert [r["format"] for r in results] == ["state_dict", "torchscript", "torchvision", "onnx"]
    assert [r["runtime"] for r in results] == ["pytorch", "pytorch", "pytorch", "onnxruntime"]
    assert [r["method"] for r in results] == ["fp32", "static", "fp32", "fp32"]
    assert results[1]["engine"] == json.loads(made["int8"].with_suffix(".json").read_text())["engine"]
    assert results[1]["sha256"] == sha256_of(made["int8"])
    assert results[2]["file"] is None and results[2]["sha256"] is None
    # how the int8 file was made, from its sidecar: the homework's task-3 table reads it
    assert [r["recipe"] for r in results] == [None, "per_channel, histogram, 8 photos", None, None]
    assert results[0]["size_mb"] == pytest.approx(file_size_mb(float_weights), abs=1e-3)
    # every format counts the same weights once BatchNorm is folded
    assert len({r["parameters"] for r in results}) == 1 and results[0]["parameters"] > 3_000_000
    assert report["machine"]["threads"] == report["settings"]["threads"] == 2
    assert report["settings"]["holdout"] == 8 and report["settings"]["batch_size"] == 1


def test_accuracy_on_sample_photos(full_run):
    results = full_run["report"]["results"]
    assert all(r["images"] == 16 and r["skipped"] == 0 for r in results)
    fp32_state_dict, int8, fp32_name, onnx_fp32 = results
    assert fp32_state_dict["top1"] >= 50  # MobileNetV2 gets most of these photos right
    assert fp32_name["top1"] == fp32_state_dict["top1"]  # offline, the name loads the same weights
    assert abs(onnx_fp32["top1"] - fp32_state_dict["top1"]) <= 100 / 16  # at most one photo apart
    assert abs(int8["top1"] - fp32_state_dict["top1"]) <= 2 * 100 / 16
    assert all(r["top5"] >= r["top1"] for r in results)


def test_table_shows_machine_threads_and_ratios(full_run):
    stdout = full_run["stdout"]
    assert "2 threads" in stdout and "engine" in stdout
    rows = {line.split()[0]: line for line in stdout.splitlines() if line.startswith(("int8.pt", "fp32.onnx"))}
    assert set(rows) == {"int8.pt", "fp32.onnx"}
    assert rows["int8.pt"].endswith("per_channel, histogram, 8 photos")
    assert "ratios against the first model (mobilenet_v2_float_from_int8.pth)" in stdout
    assert "evaluating" in full_run["stderr"]  # tqdm progress


def test_csv_has_a_row_per_model_with_ratios(full_run):
    rows = list(csv.DictReader(full_run["csv"].open()))
    assert [row["name"] for row in rows] == [r["name"] for r in full_run["report"]["results"]]
    assert float(rows[0]["speedup_vs_first"]) == 1.0 and float(rows[0]["top1_drop_vs_first"]) == 0.0
    assert float(rows[1]["size_ratio_vs_first"]) > 3  # int8 weights take a quarter of the bytes
    first, int8 = full_run["report"]["results"][:2]
    assert float(rows[1]["speedup_vs_first"]) == pytest.approx(
        first["latency_ms"]["median"] / int8["latency_ms"]["median"], rel=1e-2
    )


def test_plot_is_a_png(full_run):
    assert full_run["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(full_run["plot"].parent.glob("*.partial"))


# ---- data: greyscale photos count, unreadable files are skipped and counted ------------------


def test_greyscale_and_corrupted_photos(tmp_path, float_weights, sample_photos):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("n01443537_goldfish.JPEG", GREYSCALE_PHOTO, "n04146614_school_bus.JPEG"):
        shutil.copy(sample_photos / name, photos / name)
    (photos / "n01440764_broken.JPEG").write_bytes(b"\xff\xd8 this is not a JPEG")
    report_path = tmp_path / "r.json"
    done = run_in_process(
        "benchmark.py",
        "--model",
        float_weights,
        "--data",
        photos,
        "--runs",
        "1",
        "--warmup",
        "0",
        "--json",
        report_path,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(report_path.read_text())["results"][0]
    assert result["images"] == 3 and result["skipped"] == 1
    assert "1 unreadable files skipped" in done.stdout


# ---- engines -------------------------------------------------------------------


def test_forced_engine_prints_a_note(made):
    made_for = json.loads(made["int8"].with_suffix(".json").read_text())["engine"]
    other = (
        "qnnpack"
        if made_for != "qnnpack"
        else next(e for e in torch.backends.quantized.supported_engines if e not in ("qnnpack", "none"))
    )
    result = run_in_process("benchmark.py", "--model", made["int8"], "--engine", other, "--runs", "1", "--warmup", "0")
    code, out, err = result.returncode, result.stdout, result.stderr
    assert code == 0, err
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and made_for in notes[0] and other in notes[0]


# ---- bad input: one line, exit 2, no output file --------------------------------------


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "no such file"),
        ("text", "not a model file"),
        ("fake_onnx", "cannot load"),
        ("fixed_160", "expects input [1, 3, 160, 160]"),
        ("wrong_arch", "does not fit"),
        ("missing_data", "does not exist"),
        ("empty_data", "holds no images"),
        ("holdout_too_big", "leaves no image"),
        ("plot_without_data", "needs --data"),
        ("zero_runs", "--runs must be at least 1"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, made, float_weights, sample_photos, case, expected):
    empty = tmp_path / "empty"
    empty.mkdir()
    specs = {
        "missing": ["--model", tmp_path / "nope.pt"],
        "text": ["--model", made["text"]],
        "fake_onnx": ["--model", made["fake_onnx"]],
        "fixed_160": ["--model", made["fixed_160"]],
        "wrong_arch": ["--model", float_weights, "--arch", "resnet18"],
        "missing_data": ["--model", made["fixed_160"], "--data", tmp_path / "no_such_folder"],
        "empty_data": ["--model", made["fixed_160"], "--data", empty],
        "holdout_too_big": ["--model", made["fixed_160"], "--data", sample_photos, "--holdout", "5000"],
        "plot_without_data": ["--model", made["int8"], "--plot", tmp_path / "out.png"],
        "zero_runs": ["--model", made["int8"], "--runs", "0"],
    }
    outputs = ["--json", tmp_path / "out.json", "--csv", tmp_path / "out.csv"]
    result = run_in_process("benchmark.py", *specs[case], *outputs)
    code, out, err = result.returncode, result.stdout, result.stderr
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert "Traceback" not in err + out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no output file, not even a partial one


# ---- validate_report: what a grader relies on --------------------------------------


def _broken(report: dict, change) -> list[str]:
    copied = copy.deepcopy(report)
    change(copied)
    return validate_report(copied)


def test_validate_catches_missing_fields(full_run):
    report = full_run["report"]
    assert any("'machine'" in p for p in _broken(report, lambda r: r.pop("machine")))
    assert any("'cpu'" in p for p in _broken(report, lambda r: r["machine"].pop("cpu")))
    assert any("results[1]" in p and "'fps'" in p for p in _broken(report, lambda r: r["results"][1].pop("fps")))
    assert any("latency_ms.p90" in p for p in _broken(report, lambda r: r["results"][0]["latency_ms"].pop("p90")))
    assert _broken(report, lambda r: r["results"].clear()) == ["results: empty; a report holds at least one model"]


def test_validate_catches_wrong_schema(full_run):
    report = full_run["report"]
    assert "another version" in _broken(report, lambda r: r.update(schema="quantlab.benchmark/2"))[0]
    assert "not a quantlab benchmark report" in _broken(report, lambda r: r.pop("schema"))[0]
    assert validate_report([]) == ["the report must be a JSON object, got list"]


def test_validate_catches_wrong_types_and_values(full_run):
    report = full_run["report"]
    assert any("settings.threads" in p for p in _broken(report, lambda r: r["settings"].update(threads="2")))
    assert any("settings.threads" in p for p in _broken(report, lambda r: r["settings"].update(threads=True)))
    assert any("results[0].top1" in p for p in _broken(report, lambda r: r["results"][0].update(top1="80")))
    assert any("results[0].top1" in p for p in _broken(report, lambda r: r["results"][0].update(top1=None)))
    assert any("0..100" in p for p in _broken(report, lambda r: r["results"][0].update(top5=180.0)))
    assert any("fps" in p for p in _broken(report, lambda r: r["results"][0].update(fps=1e6)))
    assert any("created" in p for p in _broken(report, lambda r: r.update(created="yesterday")))
    assert any("format" in p for p in _broken(report, lambda r: r["results"][0].update(format="pickle")))


def test_benchmark_refuses_an_unlabelled_folder_in_one_line_and_offers_timing_only(tmp_path, sample_photos):
    shutil.copy(next(sample_photos.iterdir()), tmp_path / "photo.jpg")
    result = run_script("benchmark.py", "--model", "mobilenet_v2", "--data", tmp_path, "--runs", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "cannot tell the labels" in result.stderr and "timing only" in result.stderr
