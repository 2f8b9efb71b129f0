"""quantlab.report: the report's checks, ratios and table marks, and the schema page's example (the full run's report:
test_benchmark.py)."""

from __future__ import annotations

import json

import torch

from conftest import CODES
from quantlab import bench, report, timing
from quantlab.report import (
    MACHINE_FIELDS,
    OPTIONAL_RESULT_FIELDS,
    RESULT_FIELDS,
    SETTINGS_FIELDS,
    ratios,
    validate_report,
)


def _report(median_ms: float, fps: float) -> dict:
    machine = {
        "cpu": "c",
        "arch": "x86_64",
        "os": "linux",
        "python": "3.11",
        "torch": "2",
        "torchvision": "0",
        "onnxruntime": None,
        "threads": 2,
        "physical_cores": 2,
        "engine": "x86",
    }
    settings = report.make_settings(5, 1, 224, None, None, 0, 2, "x86")
    result = {
        "name": "m.pt",
        "file": "m.pt",
        "path": "m.pt",
        "format": "torchscript",
        "runtime": "pytorch",
        "method": "static",
        "engine": "x86",
        "sha256": None,
        "size_mb": 3.9,
        "parameters": None,
        "latency_ms": {"median": median_ms, "p90": median_ms, "mean": median_ms},
        "fps": fps,
        "top1": None,
        "top5": None,
        "images": None,
        "skipped": None,
    }
    return report.make_report([result], settings, machine)


def test_fps_is_checked_against_the_median_allowing_for_its_rounding():
    assert report.validate_report(_report(8.0, 125.0)) == []
    assert report.validate_report(_report(3534.0, round(1e3 / 3534.0, 2))) == []  # 0.28: rounding is 1 % of it
    assert any("is not 1000 / median latency" in p for p in report.validate_report(_report(8.0, 140.0)))


def test_unstable_results_are_marked_in_the_table_and_the_json():
    result = {
        "name": "busy.pt",
        "format": "torchscript",
        "method": "static",
        "engine": "x86",
        "size_mb": 3.9,
        "parameters": None,
        "latency_ms": {"median": 440.0, "p90": 1200.0, "mean": 600.0},
        "fps": 2.27,
        "top1": None,
        "top5": None,
        "images": None,
        "skipped": None,
        "unstable": timing.instability([440.0] * 11 + [1200.0] * 9, 5.0, 5.0),
    }
    settings = {
        "runs": 20,
        "warmup": 1,
        "batch_size": 1,
        "input_size": 224,
        "data": None,
        "holdout": None,
        "seed": 0,
        "threads": 2,
        "engine": "x86",
    }
    table = report.format_table(report.make_report([result], settings, bench.machine_info(2, "x86")))
    assert "!440.00" in table and "! UNSTABLE latency of busy.pt: p90 is 2.7x the median" in table
    measured = bench.measure_latency(torch.nn.Identity(), input_size=8, runs=3, warmup=0)
    assert "unstable" in measured  # None or a reason, measured on this machine


def test_ratios():
    base = {"latency_ms": {"median": 10.0}, "size_mb": 14.0, "top1": 80.0}
    other = {"latency_ms": {"median": 2.5}, "size_mb": 3.5, "top1": 78.5}
    assert ratios(other, base) == {"speedup": 4.0, "size_ratio": 4.0, "top1_drop": 1.5}
    assert ratios({**other, "top1": None}, base)["top1_drop"] is None


def test_schema_doc_example_is_valid():
    """docs/benchmark_schema.md shows a report: it must pass the grader's check, field for field."""
    doc = (CODES.parent / "docs" / "benchmark_schema.md").read_text(encoding="utf-8")
    example = json.loads(doc.split("```json\n")[1].split("```")[0])
    assert validate_report(example) == []
    for section, fields in (("machine", MACHINE_FIELDS), ("settings", SETTINGS_FIELDS)):
        assert set(example[section]) == set(fields)
        assert all(f"| `{name}` |" in doc for name in fields), section
    assert all(set(r) == set(RESULT_FIELDS) | set(OPTIONAL_RESULT_FIELDS) for r in example["results"])
    assert all(f"| `{name}` |" in doc for name in [*RESULT_FIELDS, *OPTIONAL_RESULT_FIELDS])
