"""quantlab.grader.pi_runs: the homework's Pi runs and the open target as the grader checks them.

Fixed, hand-made runs and model grades: what mobile_net.py --json writes on a Pi (CI has none), with the
numbers chosen so that every rule is hit once. The end-to-end path with real models is in test_grade.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantlab.grader import pi_runs, rubric
from quantlab.grader.records import ModelGrade

RUBRIC = rubric.load_rubric(None)
DEFAULT_SHA, OPEN_SHA, X86_SHA, ONNX_SHA, COPY_SHA = "a" * 64, "b" * 64, "c" * 64, "d" * 64, "f" * 64
MOBILENET_V2 = 3_487_816  # weights and biases, BatchNorm folded: what the grader's loader counts


def models(open_drop: float | None = 0.5, default: dict | None = None) -> list[ModelGrade]:
    """A submission's graded models: task 5's default qnnpack model, an open one, an x86 one, an ONNX one, and
    the default re-saved under another name (other bytes, the same answers); ``default`` changes the first."""
    return [
        ModelGrade("mnv2_qnnpack.pt", "static", "qnnpack", **{
            "sha256": DEFAULT_SHA, "top1_drop": 0.3, "answers": "1" * 64, "granularity": "per_channel",
            "observer": "histogram", "calibration_images": 100, "parameters": MOBILENET_V2, "size_ratio": 14.0 / 3.9,
            **(default or {})}),
        ModelGrade("mnv2_open.pt", "static", "qnnpack", sha256=OPEN_SHA, top1_drop=open_drop, answers="2" * 64,
                   granularity="per_tensor", observer="histogram", calibration_images=100,
                   parameters=MOBILENET_V2),
        ModelGrade("mnv2_static.pt", "static", "x86", sha256=X86_SHA, top1_drop=0.1, answers="3" * 64,
                   granularity="per_channel", observer="histogram", calibration_images=100),
        ModelGrade("mnv2_open.onnx", "static", None, sha256=ONNX_SHA, top1_drop=0.2, answers="4" * 64),
        ModelGrade("mnv2_mine.pt", "static", "qnnpack", sha256=COPY_SHA, top1_drop=0.3, answers="1" * 64,
                   granularity="per_tensor", observer="minmax", calibration_images=100),
    ]  # fmt: skip


def pi_run(sha256: str, speed: float, **changes) -> dict:
    """A run as mobile_net.py --json writes it on a Pi 4: 600 frames from the webcam, every frame inferred in
    1000 / ``speed`` ms; ``changes`` replace fields afterwards, as a hand edit would."""
    frames = 600
    run = {
        "frames": frames,
        "inferences": frames,
        "seconds": 20.0,
        "mean_fps": 30.0,
        "model_fps": speed,
        "stages_ms": {"inference": {"p50_ms": 1e3 / speed, "p95_ms": 1.2e3 / speed, "mean_ms": 1e3 / speed}},
        "source": "0",
        "engine": "qnnpack",
        "model": "mnv2.pt, TorchScript",
        "model_sha256": sha256,
        "arch": "aarch64",
        "cpu": "Raspberry Pi 4 Model B Rev 1.4",
        "threads": 4,
        "size": 224,
        "torch": "2.9.1",
    }
    return {**run, **changes}


def write(folder: Path, name: str, run: dict) -> Path:
    path = folder / name
    path.write_text(json.dumps(run))
    return path


def open_target(tmp_path: Path, default_run: dict, open_run: dict, graded: list[ModelGrade] | None = None):
    graded = models() if graded is None else graded
    default, _, why = pi_runs.check_pi_run(write(tmp_path, pi_runs.PI_RUN_FILE, default_run), graded, RUBRIC)
    assert why is None, why
    open_path = write(tmp_path, pi_runs.OPEN_RUN_FILE, open_run)
    return pi_runs.check_open_run(open_path, default, graded, RUBRIC, MOBILENET_V2)


def test_the_open_target_is_model_only_fps_over_the_default_models(tmp_path):
    speedup, why = open_target(tmp_path, pi_run(DEFAULT_SHA, 20.0), pi_run(OPEN_SHA, 25.0))
    assert why is None and speedup == pytest.approx(1.25)
    speedup, why = open_target(tmp_path, pi_run(DEFAULT_SHA, 20.0), pi_run(ONNX_SHA, 30.0))  # ONNX Runtime too
    assert why is None and speedup == pytest.approx(1.5)
    # a camera caps end-to-end FPS: with both at 30 FPS end to end, the model-only FPS still tells them apart
    run = pi_run(OPEN_SHA, 40.0, mean_fps=30.0)
    assert open_target(tmp_path, pi_run(DEFAULT_SHA, 20.0), run)[0] == pytest.approx(2.0)


@pytest.mark.parametrize(
    "default_changes, open_sha, open_changes, graded, reason",
    [
        ({}, OPEN_SHA, {"threads": 1}, None, "differ in --threads (1 against 4)"),
        ({}, OPEN_SHA, {"cpu": "Raspberry Pi 5 Model B Rev 1.0"}, None, "differ in Pi"),
        ({}, OPEN_SHA, {"size": 160}, None, "differ in --size"),
        ({}, OPEN_SHA, {"torch": "2.10.0"}, None, "differ in PyTorch"),
        ({}, DEFAULT_SHA, {}, None, "the default model again"),
        ({}, COPY_SHA, {}, None, "the default model again (or a file that computes what it computes"),
        ({}, X86_SHA, {}, None, "int8 for an x86 engine"),
        ({}, OPEN_SHA, {}, models(open_drop=1.6), "loses 1.60 points of top-1"),
        ({}, OPEN_SHA, {}, models(open_drop=None), "top-1 of mnv2_open.pt is unknown"),
        ({}, OPEN_SHA, {"model_fps": 90.0}, None, "model_fps 90 is not its inferences over the time"),
        # twice the inferences and twice the FPS, the times untouched: more inferences than frames
        ({}, OPEN_SHA, {"model_fps": 50.0, "inferences": 1200}, None, "1200 inferences in 600 frames"),
        ({}, OPEN_SHA, {"model_fps": 1e4, "stages_ms": {"inference": {"mean_ms": 0.1}}}, None, "the rubric's limit"),
        ({}, OPEN_SHA, {"frames": 10**400}, None, "must be positive numbers"),
        ({"inferences": 10**400}, OPEN_SHA, {}, None, "has no model-only FPS"),
        ({}, OPEN_SHA, {"threads": None}, None, "does not record its --threads"),
        ({"model_fps": 5.0}, OPEN_SHA, {}, None, "model_fps 5 is not its inferences over the time"),
        ({}, OPEN_SHA, {"source": "samples"}, None, "not a camera"),
        ({}, "e" * 64, {}, None, "not that of a submitted model"),
    ],
)
def test_the_open_target_counts_only_like_against_like(
    tmp_path, default_changes, open_sha, open_changes, graded, reason
):
    speedup, why = open_target(
        tmp_path, pi_run(DEFAULT_SHA, 20.0, **default_changes), pi_run(open_sha, 25.0, **open_changes), graded
    )
    assert speedup is None and reason in why, why


@pytest.mark.parametrize(
    "default, reason",
    [
        ({"granularity": "per_tensor"}, "its sidecar: static, qnnpack, per_tensor, histogram"),
        ({"parameters": 11_689_512}, "MobileNetV2 with 3,487,816 weights and biases (this one: 11689512)"),
        ({"top1_drop": 82.0}, "a working MobileNetV2 (this one loses 82.00 points"),
        # the dynamic model in disguise (fp32 convolutions, 10.15 MB against fp32's 14 MB) under a static sidecar
        ({"size_ratio": 14.0 / 10.15}, "this one is 1/1.4 of it: fp32 layers left"),
    ],
)
def test_a_slow_stand_in_for_the_default_model_earns_nothing(tmp_path, default, reason):
    speedup, why = open_target(tmp_path, pi_run(DEFAULT_SHA, 10.0), pi_run(OPEN_SHA, 25.0), models(default=default))
    assert speedup is None and "not task 5's default model" in why and reason in why, why


def test_the_open_target_needs_the_default_model_on_the_pi(tmp_path):
    graded = models()
    open_path = write(tmp_path, pi_runs.OPEN_RUN_FILE, pi_run(OPEN_SHA, 25.0))
    speedup, why = pi_runs.check_open_run(open_path, None, graded, RUBRIC, MOBILENET_V2)
    assert speedup is None and "needs a pi_run.json that counts" in why
    # pi_run.json with the per-tensor model: a slower "default" would make any model look fast
    default, _, _ = pi_runs.check_pi_run(write(tmp_path, pi_runs.PI_RUN_FILE, pi_run(OPEN_SHA, 20.0)), graded, RUBRIC)
    speedup, why = pi_runs.check_open_run(open_path, default, graded, RUBRIC, MOBILENET_V2)
    assert speedup is None and "not task 5's default model" in why


def test_the_default_in_a_wrapper_is_not_another_model(tmp_path):
    """The default plus 1e-4 on every logit answers otherwise, byte for byte, with the same int8 weights."""
    graded = models()
    graded[0].int8_weights = graded[1].int8_weights = "9" * 64  # mnv2_open.pt: the default in a wrapper
    speedup, why = open_target(tmp_path, pi_run(DEFAULT_SHA, 10.0), pi_run(OPEN_SHA, 290.0), graded)
    assert speedup is None and "the default model again (or a file that computes what it computes or holds" in why
    graded[1].int8_weights = "8" * 64  # other int8 weights: another model
    speedup, why = open_target(tmp_path, pi_run(DEFAULT_SHA, 20.0), pi_run(OPEN_SHA, 25.0), graded)
    assert why is None and speedup == pytest.approx(1.25)
