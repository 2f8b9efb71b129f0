"""tools/figures.py: docs/figures.md is written from the runs' JSON, each section with the machine its run recorded."""

from __future__ import annotations

import importlib.util
import json
import re
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
    "load_average": [9.5, 8.0, 7.25],
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
    "machine": {**MACHINE, "cpu": "Other CPU", "int8_isa": "avx512_vnni", "load_average": None},
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
    assert "Load average 9.5 / 8.0 / 7.2 (1/5/15 min) on 4 cores: measured under load" in speed
    assert "Other CPU" in benchmark and "int8 ISA avx512_vnni" in benchmark and "Test CPU" not in benchmark
    assert "| mnv2_int8.pt | torchscript | static | - | x86 | 3.50 | 2.00 | 4.00 | 79.0 | 1.0 | - |" in benchmark
    assert (
        "--model mobilenet_v2 --model mnv2_int8.pt --data imagenet-sample --images 100 --runs 9 --warmup 1" in benchmark
    )
    assert "Load: not recorded." in benchmark


def test_a_run_on_another_machine_shows_folders_by_name(tmp_path):
    figures = _tool()
    elsewhere = {**SPEED, "settings": {**SPEED["settings"], "calibration": "16 photos from /home/me/photos"}}
    (tmp_path / "a_speed.json").write_text(json.dumps(elsewhere))
    page = figures.page([tmp_path / "a_speed.json"])
    assert "calibrated on 16 photos from photos;" in page and "/home/me" not in page


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


def _demo(quantize: bool, fps: float) -> dict:
    stages = {stage: {"p50_ms": 1.5, "p95_ms": 2.0, "mean_ms": 1.6} for stage in ("capture", "preprocess", "inference")}
    return {**MACHINE, "load_average": [0.5, 0.4, 0.3], "engine": "onednn", "frames": 300, "inferences": 300,
            "seconds": 3.0, "mean_fps": fps, "model_fps": 2 * fps, "end_to_end_vs_model": 0.5, "stages_ms": stages,
            "peak_rss_mb": 700.0, "source": "samples", "size": 224, "skip": 1, "skipped_unreadable": 0,
            "quantize": quantize, "model": "MobileNetV2", "model_sha256": None}  # fmt: skip


def test_the_demos_runs_make_one_table_where_the_first_sorts(tmp_path):
    figures = _tool()
    (tmp_path / "a_demo_fp32.json").write_text(json.dumps(_demo(False, 97.25)))
    (tmp_path / "b_speed.json").write_text(json.dumps(SPEED))
    (tmp_path / "c_demo_int8.json").write_text(json.dumps(_demo(True, 363.0)))
    page = figures.page(sorted(tmp_path.glob("*.json")))
    demo, speed = page.split("\n## ")[1:]
    assert demo.startswith("The demo") and speed.startswith("Every way")
    assert "| a_demo_fp32.json | MobileNetV2 | - | 300 | 97.2 | 194.5 | 1.50 | 1.50 | 700 |" in demo
    assert "| c_demo_int8.json | MobileNetV2 | onednn | 300 | 363.0 | 726.0 |" in demo
    assert (
        "`python Codes/mobile_net.py --source samples --frames 300 --quantize --json docs/runs/c_demo_int8.json`"
        in demo
    )
    assert demo.count("Machine: Test CPU 9000") == 1 and "under load" not in demo and "| 0.5 / 0.4 / 0.3 |" in demo


def test_the_committed_page_is_what_the_committed_runs_give():
    """docs/figures.md is never edited by hand: regenerate it with python tools/figures.py after a run."""
    assert _tool().main(["--check"]) == 0


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("document", ["README.md", "CONTRIBUTING.md", "docs/figures.md", "docs/studies.md"])
def test_the_links_to_and_from_the_figures_resolve(document):
    """Moving a study or renaming a section must not leave a link to a file or section that is not there."""
    source = REPO / document
    for target in re.findall(r"\]\(([^)\s]+)\)", source.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # a web address: checked by no test here
            continue
        path, _, anchor = target.partition("#")
        linked = (source.parent / path).resolve() if path else source
        assert linked.exists(), f"{document}: {target} is not there"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)
            assert anchor in {_anchor(h) for h in headings}, f"{document}: no section #{anchor} in {path or document}"
