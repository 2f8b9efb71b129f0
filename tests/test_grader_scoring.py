"""quantlab.grader.scoring: claims against re-measured numbers, task 3's table and the class-wide open target.

Hand-made model grades; the end-to-end path with real models is in test_grade.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from quantlab.grader import rubric, sandbox, scoring
from quantlab.grader.records import ModelGrade, StudentGrade
from quantlab.grader.runner import Baseline

RUBRIC = rubric.load_rubric(None)


def test_claim_checks():
    tolerance = {"top1_points": 3.0, "speedup_factor": 2.0, "size_relative": 0.02}
    fp32 = {"top1": 70.0, "size_mb": 14.0, "latency_ms": {"median": 20.0}}

    def flags(claimed_top1: float, measured_drop: float, interval=(None, None), rule: str = "interval") -> list[str]:
        row = {"top1": claimed_top1, "size_mb": 3.9, "latency_ms": {"median": 5.0}}
        grade = ModelGrade(file="m.pt", method="static", top1_drop=measured_drop, speedup=3.0,
                           top1_drop_low=interval[0], top1_drop_high=interval[1])  # fmt: skip
        found: list[str] = []
        scoring._check_claims("m.pt", row, scoring._claimed(row, fp32), grade, tolerance, found, rule)
        return found

    assert flags(69.0, measured_drop=2.0) == []  # drop 1 vs 2: within 3 points
    assert flags(70.0, measured_drop=5.0) == [
        "m.pt: claimed top-1 drop +0.0 points, re-measured 5.00 points (tolerance 3)"
    ]
    # on few photos the re-measured drop is 5 points, interval [+2.5, +7.5]: a claim of 0 is within 3 of it
    assert flags(70.0, measured_drop=5.0, interval=(2.5, 7.5)) == []
    assert flags(70.0, measured_drop=5.0, interval=(2.5, 7.5), rule="point") != []  # the point rule ignores it
    assert flags(72.0, measured_drop=5.0, interval=(4.5, 5.5)) == [
        "m.pt: claimed top-1 drop -2.0 points, re-measured 5.00 points, 95 % interval [+4.50, +5.50] (tolerance 3)"
    ]


def test_speed_claims_are_flagged_only_when_faster_than_two_measurements():
    tolerance = {"speedup_factor": 2.0}

    def verdict(claimed: float, first: float, second: float, unstable: bool = False) -> str | None:
        grade = ModelGrade(file="m.pt", method="static", speedup=max(first, second), unstable=unstable,
                           speedup_range=(min(first, second), max(first, second)))  # fmt: skip
        return scoring._speed_verdict("m.pt", claimed, grade, tolerance)

    # the honest class under load: 0.41x claimed, 0.85x re-measured: a slower claim is never checked
    assert not scoring._claims_faster(0.41, 0.85, tolerance)
    assert scoring._claims_faster(4.0, 1.5, tolerance) and not scoring._claims_faster(2.9, 1.5, tolerance)
    assert verdict(2.9, 1.4, 1.5) is None  # the second measurement is within x2 of the claim
    # the two measurements differ by 1.5x (a loaded machine): a claim within their spread is a note
    assert verdict(4.0, 1.0, 1.5).startswith("unstable: m.pt claims a 4.00x speed-up")
    assert verdict(4.0, 1.45, 1.5, unstable=True).startswith("unstable")  # the child saw a busy machine
    assert verdict(4.0, 1.45, 1.5) == "m.pt: claimed speed-up 4.00x, re-measured 1.45x and 1.50x (tolerance x/÷ 2)"
    # the student's own benchmark marked its latency unstable (their machine was busy): a note, not a flag
    steady = ModelGrade(file="m.pt", method="static", speedup=1.5, speedup_range=(1.45, 1.5))
    assert "marks that latency unstable" in scoring._speed_verdict("m.pt", 292.0, steady, tolerance, True)
    assert scoring._own_unstable({"unstable": None}, {"unstable": "p90 is 3.1x the median"})
    assert not scoring._own_unstable({"unstable": None}, {"unstable": None})

    pupil = StudentGrade(student="ada")
    pupil.models = [ModelGrade(file=f"m{i}.pt", method="static", speed_claim=claim) for i, claim in
                    enumerate(["m0.pt: claimed speed-up 4.00x", "unstable: m1.pt ...", "m2.pt: claimed speed-up 9x"])]  # fmt: skip
    scoring._speed_flags(pupil)
    assert pupil.flags == ["m0.pt: claimed speed-up 4.00x"]  # at most one speed flag per student
    assert pupil.notes == ["unstable: m1.pt ..."]
    assert pupil.problems == ["m2.pt: claimed speed-up 9x; counted in the one speed flag above"]


class TwiceRunner:
    """Two measurements of one model: the first (cached) and the one measure_again asks for."""

    measure, memory_mb, timeout = True, 3072, 60.0

    def __init__(self, medians: list[float]) -> None:
        self.medians = medians
        self.calls = 0

    def measure_again(self, path: Path, sidecar: dict | None) -> sandbox.Outcome:
        self.calls += 1
        median = self.medians[self.calls]
        return sandbox.Outcome(
            result={"ok": True, "measured": {"top1": 70.0, "top5": 90.0, "latency_ms": {"median": median}}}
        )


def test_a_second_measurement_gives_the_range_and_leaves_the_points():
    grade = ModelGrade(file="m.pt", method="static", speedup=20.0 / 10.0)
    runner = TwiceRunner([10.0, 5.0])
    scoring._measure_speed_again(Path("m.pt"), None, grade, runner, {"latency_ms": {"median": 20.0}})
    # the points stay the first measurement's, like every model's that was measured once
    assert runner.calls == 1 and grade.speedup_range == (2.0, 4.0) and grade.speedup == 2.0


def student(name: str, speedup: float | None, status: str = "ok") -> StudentGrade:
    graded = StudentGrade(student=name, status=status, open_speedup=speedup)
    graded.points = {"accuracy": 30.0, "parts": 20.0, "open": 0.0, "penalty": -10.0 if status == "flagged" else 0.0}
    graded.score = sum(graded.points.values())
    return graded


def test_the_class_best_sets_full_points_and_a_forger_does_not():
    best = {**RUBRIC, "open": {**RUBRIC["open"], "full_at": "best"}}
    students = [student("ada", 1.5), student("ben", 1.25), student("cy", 0.9), student("dan", None),
                student("eve", 3.0, status="flagged")]  # fmt: skip
    assert scoring.score_open_target(students, best) == pytest.approx(1.5)
    points = {s.student: s.points["open"] for s in students}
    # on a line from 1.05x (within the noise of two runs: nothing) to the best's 1.5x
    assert points == pytest.approx({"ada": 15.0, "ben": 15 * 0.2 / 0.45, "cy": 0.0, "dan": 0.0, "eve": 15.0})
    assert students[0].score == pytest.approx(65.0)
    fixed = {**RUBRIC, "open": {**RUBRIC["open"], "full_at": 2.05}}
    again = [student("ada", 1.55)]
    assert scoring.score_open_target(again, fixed) == 2.05 and again[0].points["open"] == pytest.approx(7.5)
    # one forger who edited two Pi files consistently (not flagged) at 29x: the bar is 1.5 x the next best
    forged = [student("ada", 1.3), student("ben", 1.25), student("zed", 29.0)]
    assert scoring.score_open_target(forged, best) == pytest.approx(1.3 * RUBRIC["open"]["best_cap"])
    assert forged[0].points["open"] == pytest.approx(15 * 0.25 / (1.95 - 1.05))
    nobody = [student("ada", 1.04), student("ben", None)]
    assert scoring.score_open_target(nobody, best) is None and nobody[0].points["open"] == 0.0
    # the default: a fixed bar the instructor sets from a reference Pi run; a 29x forger changes nobody's points
    assert RUBRIC["open"]["full_at"] == 1.3
    fixed_bar = [student("ada", 1.3), student("ben", 1.25), student("zed", 29.0)]
    assert scoring.score_open_target(fixed_bar, RUBRIC) == 1.3
    assert fixed_bar[0].points["open"] == pytest.approx(15.0) and fixed_bar[1].points["open"] == pytest.approx(12.0)


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
    # the same weights in four wrappers (+1e-4 .. +4e-4 on the logits): four answers, one model
    wrapped = [static(g, o, f"w{i}") for i, (g, o) in enumerate(cells)]
    for model in wrapped:
        model.weights = "the one model's weights"
    assert not scoring.ptq_table_complete(wrapped)
    # per-channel and per-tensor share no weights; the two observers of one granularity may
    wrapped[2].weights = wrapped[3].weights = "per-channel weights"
    assert scoring.ptq_table_complete(wrapped)
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


def _conv_net() -> torch.nn.Module:
    """A 1000-class conv net small enough to quantize in milliseconds: a full conv layer and a depthwise one."""
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 1000),
    )  # fmt: skip


def _quantized(kind: str, calibration_scale: float = 1.0) -> torch.nn.Module:
    """``kind``: static per_channel / per_tensor (every conv int8), or dynamic (fp32 convs, int8 Linear).
    ``calibration_scale`` scales the calibration batch: other activation ranges, the same int8 weights."""
    from torch.ao import quantization as tq

    torch.backends.quantized.engine = "x86"
    if kind == "dynamic":
        return tq.quantize_dynamic(_conv_net().eval(), {torch.nn.Linear}, dtype=torch.qint8)
    model = torch.nn.Sequential(tq.QuantStub(), _conv_net(), tq.DeQuantStub()).eval()
    weight = tq.default_per_channel_weight_observer if kind == "per_channel" else tq.default_weight_observer
    model.qconfig = tq.QConfig(activation=tq.HistogramObserver.with_args(reduce_range=True), weight=weight)
    prepared = tq.prepare(model)
    prepared(torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * calibration_scale)
    return tq.convert(prepared)


def _graded_in_child(folder: Path, kind: str, sidecar: dict) -> tuple[ModelGrade, list[str]]:
    """Save the model with ``sidecar``, run the grader's child on it (in-process) and score what it said."""
    from quantlab.grader import model_runner

    folder.mkdir()
    path = folder / "m.pt"
    torch.jit.save(torch.jit.freeze(torch.jit.script(_quantized(kind))), str(path))  # as quantize_model.py
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "m.json").write_text(json.dumps({**sidecar, "engine": "x86", "sha256": digest}))
    child = model_runner.run({"model": str(path), "threads": 1, "task": "check"})
    assert child["ok"] is True, child
    row = {"file": "m.pt", "method": sidecar["method"], "engine": "x86", "sha256": digest,
           "size_mb": path.stat().st_size / 1e6}  # fmt: skip
    flags: list[str] = []
    grade = scoring.grade_model(folder, row, None, RUBRIC, Baseline(size_mb=14.0, result=None), _Answers(child), flags)
    return grade, flags


def test_a_dynamic_model_with_a_static_sidecar_is_flagged(tmp_path):
    recipe = {"method": "static", "granularity": "per_channel", "observer": "histogram"}
    disguised, flags = _graded_in_child(tmp_path / "dynamic", "dynamic", recipe)
    assert disguised.excluded == flags[0] and "2 of its 2 convolutions run in fp32 (a dynamic model?)" in flags[0]
    honest, flags = _graded_in_child(tmp_path / "static", "per_channel", recipe)
    assert honest.excluded is None and flags == [] and honest.granularity == "per_channel"
    # the dynamic model said to be dynamic is what it says
    plain, flags = _graded_in_child(tmp_path / "plain", "dynamic", {"method": "dynamic"})
    assert plain.excluded is None and flags == [] and plain.method == "dynamic"


def test_the_packed_weights_must_have_the_claimed_granularity(tmp_path):
    recipe = {"method": "static", "granularity": "per_channel", "observer": "minmax"}
    forged, flags = _graded_in_child(tmp_path / "tensor", "per_tensor", recipe)
    assert forged.excluded == flags[0]
    assert "its sidecar says per_channel weights, its convolutions' packed weights are per_tensor" in flags[0]
    honest, flags = _graded_in_child(tmp_path / "honest", "per_tensor", {**recipe, "granularity": "per_tensor"})
    assert honest.excluded is None and flags == [] and honest.granularity == "per_tensor"


class _Nudged(torch.nn.Module):
    """Another model by its bytes and answers: the same int8 model, plus ``nudge`` on every logit."""

    def __init__(self, inner: torch.nn.Module, nudge: float) -> None:
        super().__init__()
        self.inner = inner
        self.nudge = nudge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + self.nudge


def test_a_wrapper_keeps_the_int8_weights_fingerprint(tmp_path):
    from quantlab.grader import model_runner

    base = _quantized("per_channel")
    found = {}
    for name, module in (("a", base), ("b", _Nudged(base, 1e-4)), ("c", _Nudged(base, 2e-4)),
                         ("other", _quantized("per_tensor"))):  # fmt: skip
        path = tmp_path / f"{name}.pt"
        torch.jit.save(torch.jit.freeze(torch.jit.script(module.eval())), str(path))
        found[name] = model_runner.run({"model": str(path), "threads": 1, "task": "check"})
    assert len({found[name]["answers_sha256"] for name in found}) == 4  # byte for byte, four models
    fingerprints = {name: found[name]["convs"]["weights_sha256"] for name in found}
    assert fingerprints["a"] == fingerprints["b"] == fingerprints["c"] != fingerprints["other"]
    assert fingerprints["a"] is not None


def test_honest_students_with_the_same_weights_but_their_own_calibration_are_not_one_model(tmp_path):
    # per-channel weight quantization of the same pretrained weights gives everyone the same int8 weights:
    # only the activations' ranges (calibration) tell two honest students' models apart
    from quantlab.grader import model_checks

    facts = {}
    for name, scale in (("mine", 1.0), ("theirs", 2.0)):
        path = tmp_path / f"{name}.pt"
        torch.jit.save(torch.jit.freeze(torch.jit.script(_quantized("per_channel", scale).eval())), str(path))
        facts[name] = model_checks.conv_facts(torch.jit.load(str(path)))
    weights = [
        [params.unpack()[0].int_repr() for params in _packed(torch.jit.load(str(tmp_path / f"{name}.pt")))]
        for name in facts
    ]
    assert all(torch.equal(a, b) for a, b in zip(*weights)) and weights[0]  # the same int8 weights...
    assert facts["mine"]["weights_sha256"] != facts["theirs"]["weights_sha256"]  # ...but two models


def _packed(model) -> list:
    """The frozen model's packed conv weights (graph constants)."""
    return [
        node.output().toIValue()
        for node in model.inlined_graph.nodes()
        if node.kind() == "prim::Constant" and "Conv2dPackedParams" in str(node.output().type())
    ]


def test_one_students_child_measures_a_model_again_past_the_cache(tmp_path, monkeypatch):
    from quantlab.grader import runner as runner_module

    runs: list[int] = []

    def run_models(children, request, limits, isolation, read_only, budget_seconds):
        runs.append(len(children))
        return [sandbox.Outcome({"ok": True, "run": len(runs)}) for _ in children]

    monkeypatch.setattr(runner_module.sandbox, "run_models", run_models)
    model = tmp_path / "m.pt"
    model.write_bytes(b"weights")
    models = runner_module.StudentModels(runner_module.ModelRunner(2, None, "rlimits"), 2.0)
    assert models(model, None).failure == "was not run yet" and models.measure_again(model, None).failure
    models.run()
    assert models(model, None).result == {"ok": True, "run": 1}
    assert models.measure_again(model, None).result == {"ok": True, "run": 2}  # a new child, not the cache
    assert models(model, None).result == {"ok": True, "run": 1} and runs == [1, 1]  # the first stays everyone's
