"""quantlab.report: the benchmark report's checks (the full run's report: test_benchmark.py)."""

from __future__ import annotations

from quantlab import report


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
