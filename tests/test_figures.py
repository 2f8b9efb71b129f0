"""tools/figures.py: docs/figures.md is written from the runs' JSON, each section with the machine its run recorded."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from quantlab.errors import KitError

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("figures", REPO / "tools" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MACHINE = {
    "cpu": "Test CPU 9000",
    "arch": "x86_64",
    "torch": "2.99.0",
    "onnxruntime": "1.99.0",
    "threads": 2,
    "physical_cores": 4,
    "int8_isa": "avx2",
}
SPEED = {
    "schema": "quantlab.speed_suite/1",
    "created": "2026-12-05T10:00:00Z",
    "machine": MACHINE,
    "settings": {"runs": 7, "warmup": 1, "input_size": 224, "threads": 2, "calibration": "16 photos from x"},
    "results": [
        {"name": "fp32 eager", "median_ms": 10.0, "p90_ms": 11.0, "vs_fp32_eager": 1.0, "vs_onnxruntime_fp32": 1.25,
         "top1_agreement": 1.0, "int8_isa": None, "error": None, "unstable": None},
        {"name": "int8 x86 TorchScript", "median_ms": 2.5, "p90_ms": 2.75, "vs_fp32_eager": 0.25,
         "vs_onnxruntime_fp32": 0.31, "top1_agreement": 0.9375, "int8_isa": "avx2", "error": None,
         "unstable": "reference drifted"},
        {"name": "int8 PT2E inductor", "error": "KitError: no C++ compiler"},
    ],
    "best_int8": None,
}  # fmt: skip
BENCHMARK = {
    "schema": "quantlab.benchmark/1",
    "created": "2026-12-05T11:00:00Z",
    "machine": {**MACHINE, "cpu": "Other CPU", "int8_isa": "avx512_vnni"},
    "settings": {"runs": 9, "warmup": 1, "input_size": 224, "data": "/x/imagenet-sample", "threads": 2},
    "results": [
        {"name": "mobilenet_v2", "format": "torchvision", "method": "fp32", "engine": None, "size_mb": 14.0,
         "latency_ms": {"median": 8.0}, "top1": 80.0, "images": 100},
        {"name": "mnv2_int8.pt", "format": "torchscript", "method": "static", "engine": "x86", "size_mb": 3.5,
         "latency_ms": {"median": 2.0}, "top1": 79.0, "images": 100},
    ],
}  # fmt: skip


def test_each_section_comes_from_its_json_and_names_its_machine(tmp_path):
    figures = _tool()
    (tmp_path / "a_speed.json").write_text(json.dumps(SPEED))
    (tmp_path / "b_benchmark.json").write_text(json.dumps(BENCHMARK))
    page = figures.page(sorted(tmp_path.glob("*.json")))
    speed, benchmark = page.split("\n## ")[1:]
    assert "Test CPU 9000 (x86_64), int8 ISA avx2; torch 2.99.0, onnxruntime 1.99.0; 2 threads of 4" in speed
    assert "| int8 x86 TorchScript | (!) 2.50 | 2.75 | 0.25 | 0.31 | 94 % | avx2 |" in speed
    assert "failed: KitError: no C++ compiler" in speed and "--runs 7 --warmup 1 --threads 2" in speed
    assert "Other CPU" in benchmark and "int8 ISA avx512_vnni" in benchmark and "Test CPU" not in benchmark
    assert "| mnv2_int8.pt | torchscript | static | x86 | 3.50 | 2.00 | 4.00 | 79.0 | 1.0 |" in benchmark
    assert "--data imagenet-sample --runs 9" in benchmark


def test_check_says_when_the_page_is_stale(tmp_path):
    figures = _tool()
    run = tmp_path / "speed.json"
    run.write_text(json.dumps(SPEED))
    output = tmp_path / "figures.md"
    assert figures.main([str(run), "--output", str(output)]) == 0
    assert figures.main([str(run), "--output", str(output), "--check"]) == 0
    output.write_text(output.read_text().replace("10.00", "9.00"))
    assert figures.main([str(run), "--output", str(output), "--check"]) == 1


@pytest.mark.parametrize(
    "content, message",
    [("{not json", "not readable JSON"), ('{"schema": "other/1"}', "not a run of"), ('{"schema": "quantlab.benchmark/1"}', "lacks a field")],
)  # fmt: skip
def test_a_foreign_or_broken_json_is_one_clear_error(tmp_path, content, message):
    run = tmp_path / "run.json"
    run.write_text(content)
    with pytest.raises(KitError, match=message):
        _tool().page([run])
