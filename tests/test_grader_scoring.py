"""quantlab.grader.scoring: claims against re-measured numbers, task 3's table and the class-wide open target.

Hand-made model grades; the end-to-end path with real models is in test_grade.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from quantlab.grader import rubric, sandbox, scoring
from quantlab.grader.records import ModelGrade, StudentGrade
from quantlab.grader.runner import Baseline

RUBRIC = rubric.load_rubric(None)


def test_claim_checks():
    tolerance = {"top1_points": 3.0, "speedup_factor": 2.0, "size_relative": 0.02}
    fp32 = {"top1": 70.0, "size_mb": 14.0, "latency_ms": {"median": 20.0}}

    def flags(claimed_top1: float, claimed_ms: float, measured_drop: float, measured_speedup: float) -> list[str]:
        row = {"top1": claimed_top1, "size_mb": 3.9, "latency_ms": {"median": claimed_ms}}
        grade = ModelGrade(file="m.pt", method="static", top1_drop=measured_drop, speedup=measured_speedup)
        found: list[str] = []
        scoring._check_claims("m.pt", row, scoring._claimed(row, fp32), grade, tolerance, found)
        return found

    assert flags(69.0, 5.0, measured_drop=2.0, measured_speedup=3.0) == []  # drop 1 vs 2, 4x vs 3x: within
    assert flags(69.0, 5.0, measured_drop=3.5, measured_speedup=1.9) == [
        "m.pt: claimed speed-up 4.00x, re-measured 1.90x (tolerance x/÷ 2)"
    ]
    assert [f.split(":")[1].strip() for f in flags(70.0, 20.0, measured_drop=5.0, measured_speedup=4.0)] == [
        "claimed top-1 drop +0.0 points, re-measured +5.0 (tolerance 3)",
        "claimed speed-up 1.00x, re-measured 4.00x (tolerance x/÷ 2)",
    ]


def student(name: str, speedup: float | None, status: str = "ok") -> StudentGrade:
    graded = StudentGrade(student=name, status=status, open_speedup=speedup)
    graded.points = {"accuracy": 30.0, "parts": 20.0, "open": 0.0, "penalty": -10.0 if status == "flagged" else 0.0}
    graded.score = sum(graded.points.values())
    return graded


def test_the_class_best_sets_full_points_and_a_forger_does_not():
    students = [student("ada", 1.5), student("ben", 1.25), student("cy", 0.9), student("dan", None),
                student("eve", 3.0, status="flagged")]  # fmt: skip
    assert scoring.score_open_target(students, RUBRIC) == pytest.approx(1.5)
    points = {s.student: s.points["open"] for s in students}
    # on a line from 1.05x (within the noise of two runs: nothing) to the best's 1.5x
    assert points == pytest.approx({"ada": 15.0, "ben": 15 * 0.2 / 0.45, "cy": 0.0, "dan": 0.0, "eve": 15.0})
    assert students[0].score == pytest.approx(65.0)
    fixed = {**RUBRIC, "open": {**RUBRIC["open"], "full_at": 2.05}}
    again = [student("ada", 1.55)]
    assert scoring.score_open_target(again, fixed) == 2.05 and again[0].points["open"] == pytest.approx(7.5)
    nobody = [student("ada", 1.04), student("ben", None)]
    assert scoring.score_open_target(nobody, RUBRIC) is None and nobody[0].points["open"] == 0.0


def test_task_3_table_needs_four_distinct_models_for_one_engine():
    def static(
        granularity: str, observer: str, answers: str, engine: str = "x86", images: int | None = 100
    ) -> ModelGrade:
        # MinMax and histogram models share their weights (the observer sets activation scales): what tells
        # them apart is what they compute
        return ModelGrade(f"{granularity}_{observer}.pt", "static", engine, weights=f"weights of {granularity}",
                          answers=answers, granularity=granularity, observer=observer,
                          calibration_images=images)  # fmt: skip

    cells = [
        ("per_tensor", "minmax"),
        ("per_tensor", "histogram"),
        ("per_channel", "minmax"),
        ("per_channel", "histogram"),
    ]
    four = [static(g, o, f"w{i}") for i, (g, o) in enumerate(cells)]
    assert scoring.ptq_table_complete(four)
    assert not scoring.ptq_table_complete(four[:3])
    # one file handed in four times with four edited sidecars is one model
    assert not scoring.ptq_table_complete([static(g, o, "same") for g, o in cells])
    # per-tensor on one engine against per-channel on another compares the engines too
    assert not scoring.ptq_table_complete(
        four[:2] + [static(g, o, f"v{i}", engine="qnnpack") for i, (g, o) in enumerate(cells[2:])]
    )
    assert not scoring.ptq_table_complete(four[:3] + [static(*cells[3], "w3", images=8)])
    # "one number of calibration photos" cannot be checked when no sidecar says it
    assert not scoring.ptq_table_complete([static(g, o, f"w{i}", images=None) for i, (g, o) in enumerate(cells)])


class _Answers:
    """A stand-in for the sandboxed runner: what the child said of a file, without running one."""

    measure = None
    memory_mb = 1024

    def __init__(self, result: dict) -> None:
        self.result = result

    def __call__(self, path: Path, sidecar: dict | None) -> sandbox.Outcome:
        return sandbox.Outcome(result=self.result)


@pytest.mark.parametrize("claimed", ["int8", "static", "dynamic", "qat"])
def test_a_float_model_never_counts_as_int8_whatever_its_sidecar_says(tmp_path, claimed):
    torch = pytest.importorskip("torch")
    path = tmp_path / "f.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 4).eval()), str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "f.json").write_text(json.dumps({"method": claimed, "engine": "x86", "sha256": digest}))
    row = {"file": "f.pt", "method": claimed, "engine": "x86", "sha256": digest, "size_mb": 0.001}
    child = {"ok": True, "method": claimed, "engine": None, "quantized": False, "parameters": 16}
    flags: list[str] = []
    baseline = Baseline(size_mb=14.0, result=None)
    grade = scoring.grade_model(tmp_path, row, None, RUBRIC, baseline, _Answers(child), flags)
    assert grade.excluded == flags[0] and f"its sidecar says {claimed}, but the model holds no int8" in flags[0]
    # the same file said to be fp32 is graded as what it is
    (tmp_path / "f.json").write_text(json.dumps({"method": "fp32", "engine": "x86", "sha256": digest}))
    fp32 = scoring.grade_model(tmp_path, {**row, "method": "fp32"}, None, RUBRIC, baseline,
                               _Answers({**child, "method": "fp32"}), [])  # fmt: skip
    assert fp32.excluded is None and fp32.method == "fp32"
