"""Runs of ``Codes/mobile_net.py --json`` on a Raspberry Pi, as the grader checks and scores them.

A submission may hold two (labs/homework.md, tasks 5 and 6):

- ``pi_run.json``: a submitted int8 model for ``qnnpack`` on the Pi, from a camera: the homework's ``pi`` part.
  For the open target it must be task 5's default model (static, per-channel weights, histogram observer).
- ``pi_open.json``: the open target, the student's fastest model that loses at most ``open.max_drop`` points
  of top-1 (the grader's own measurement), run on the same Pi with the same threads, input size and PyTorch.
  Scored by its model-only FPS over the default's: how much faster the student made int8 MobileNetV2 on the Pi.

Model-only FPS (inferences / seconds spent in the model) is compared, not end-to-end FPS: a camera delivers
at most its frame rate (30 FPS for most webcams), which would hide any model faster than that.

The checks are what the files can show: a 64-bit Raspberry Pi, a camera source, frames and FPS that agree
with each other, the sha256 of a submitted model. A student who edits every field consistently by hand can
still pass them: the Pi parts rest on trust, and labs/instructor_guide.md says how to check the leaders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from quantlab.grader import gates
from quantlab.grader.records import ModelGrade
from quantlab.grader.untrusted import clean_text, finite_number, read_json_file
from quantlab.vocab import DEFAULT_RECIPE

PI_RUN_FILE = "pi_run.json"  # task 5: the default qnnpack model on the Pi
OPEN_RUN_FILE = "pi_open.json"  # task 6: the open target, on the same Pi
MAX_PI_RUN_BYTES = 256 << 10  # a mobile_net.py --json summary is about 2 kB
PI_ARCHES = ("aarch64",)  # 64-bit Raspberry Pi OS (labs/01_pi_setup_and_realtime.md)
FPS_TOLERANCE = 0.05  # an FPS against the frames and seconds it was computed from
MADE_BY = "Codes/mobile_net.py --json on the Pi"
EDITED = "the file was edited"  # in a reason: numbers that disagree with each other (the grader flags it)
OWN_OUTPUT = "hand in the demo's own output"
# what must match between the two runs for their model-only FPS to be compared (mobile_net.py records each)
# task 5's default (static, int8 convolutions) is 3.9 MB against fp32's 14 MB (x3.6); a dynamic model, with
# fp32 convolutions, is 10.2 MB (x1.4): the size tells them apart whatever the sidecar says
DEFAULT_MIN_SIZE_RATIO = 3.0
SAME_PI_FIELDS = {"cpu": "Pi", "threads": "--threads", "size": "--size", "torch": "PyTorch"}


@dataclass
class PiRun:
    """A run that passed the checks every Pi run must pass, and the submitted model(s) it ran."""

    file: str
    run: dict
    fps: float  # end to end, what the student saw
    models: list[ModelGrade]  # the graded files with the sha256 the run recorded (identical copies share it)


def _fields_problem(name: str, run: object) -> str | None:
    fields = {
        "frames": int,
        "seconds": (int, float),
        "mean_fps": (int, float),
        "engine": str,
        "model": str,
        "source": str,
        "arch": str,
        "cpu": str,
    }
    if not isinstance(run, dict) or any(
        isinstance(run.get(key), bool) or not isinstance(run.get(key), kind) for key, kind in fields.items()
    ):
        return f"{name} is not a Codes/mobile_net.py --json summary (needs {', '.join(fields)}); run it again"
    return None


def _run_problem(name: str, run: dict, fps: float, frames: float, seconds: float, rubric: dict) -> str | None:
    """Why a well-formed summary is not a believable Pi run from a camera; None when it is."""
    if run["arch"] not in PI_ARCHES or "raspberry pi" not in run["cpu"].lower():
        return (
            f"{name} was recorded on {clean_text(run['cpu'], 50)} ({clean_text(run['arch'], 20)}), "
            "not a Raspberry Pi with 64-bit Raspberry Pi OS: run the demo on the Pi"
        )
    source = run["source"]
    if not (source.isdigit() or source == "picamera2"):
        return (
            f"{name} read its frames from '{clean_text(source, 40)}', not a camera: run the demo "
            "with the webcam (default) or --source picamera2"
        )
    if run["engine"] != "qnnpack":
        return f"{name}: engine {clean_text(run['engine'], 20)}, not qnnpack: not a run on the Pi"
    minimum = rubric["pi"]["min_frames"]
    if frames < minimum:
        return f"{name}: {frames:.0f} frames, the rubric asks for {minimum:g} or more"
    if not math.isclose(fps, frames / seconds, rel_tol=FPS_TOLERANCE):
        return f"{name}: mean_fps {fps:g} is not its frames / seconds ({frames / seconds:.1f}): {EDITED}; {OWN_OUTPUT}"
    if fps > rubric["pi"]["max_fps"]:
        return (
            f"{name}: {fps:g} FPS is more than a Raspberry Pi reaches with MobileNetV2 "
            f"(the rubric's limit is {rubric['pi']['max_fps']:g}); {OWN_OUTPUT}"
        )
    return None


def read_run(path: Path, graded: list[ModelGrade], rubric: dict) -> tuple[PiRun | None, float | None, str | None]:
    """A Pi run that proves itself: (the run, the FPS to show even when it does not count, why it does not count).

    It must be made on a 64-bit Raspberry Pi with a camera, on ``qnnpack`` (PyTorch's engine on ARM), with at
    least ``pi.min_frames`` frames, an FPS that matches its frames and seconds and that a Pi can reach, and it
    must have run a submitted model that passed the grader's checks (the sha256 mobile_net.py recorded).
    """
    name = path.name
    run, why = read_json_file(path, MAX_PI_RUN_BYTES, MADE_BY)
    why = why or _fields_problem(name, run)
    if why:
        return None, None, why
    fps, frames, seconds = (finite_number(run[key], strict_low=True) for key in ("mean_fps", "frames", "seconds"))
    if fps is None or frames is None or seconds is None:
        return None, None, f"{name}: frames, seconds and mean_fps must be positive numbers; run the demo again"
    shown_fps = fps if fps <= 1e6 else None
    why = _run_problem(name, run, fps, frames, seconds, rubric)
    if why:
        return None, shown_fps, why
    recorded = run.get("model_sha256")
    matching = [model for model in graded if model.sha256 and model.sha256 == recorded]
    if not isinstance(recorded, str) or not matching:
        return (
            None,
            shown_fps,
            (
                f"{name} ran '{clean_text(run['model'], 60)}', whose sha256 (recorded by "
                "mobile_net.py) is not that of a submitted model that passed the checks"
            ),
        )
    return PiRun(file=name, run=run, fps=fps, models=matching), shown_fps, None


def check_pi_run(path: Path, graded: list[ModelGrade], rubric: dict) -> tuple[PiRun | None, float | None, str | None]:
    """The ``pi`` part: ``read_run``, and the model it ran is int8 for qnnpack (the file's engine, not the run's word)."""
    pi_run, shown_fps, why = read_run(path, graded, rubric)
    if pi_run is not None and not any(model.engine == "qnnpack" for model in pi_run.models):
        return (
            None,
            shown_fps,
            (
                f"{path.name} ran a submitted model that is not int8 for qnnpack (its sidecar and "
                "graph say otherwise): run the qnnpack model on the Pi"
            ),
        )
    return pi_run, shown_fps, why


def model_fps(pi_run: PiRun, rubric: dict) -> tuple[float | None, str | None]:
    """The run's model-only FPS, checked against the inferences and inference times it was computed from."""
    run, name = pi_run.run, pi_run.file
    try:
        inference_ms = run["stages_ms"]["inference"]["mean_ms"]  # over every frame, skipped ones count 0 ms
    except (KeyError, TypeError):
        inference_ms = None
    fps, inferences, inference_ms = (
        finite_number(value, strict_low=True) for value in (run.get("model_fps"), run.get("inferences"), inference_ms)
    )
    if fps is None or inferences is None or inference_ms is None:
        return None, f"{name} has no model-only FPS (model_fps, inferences, stages_ms): run mobile_net.py again"
    frames = float(run["frames"])  # checked by read_run
    if inferences > frames:
        return None, f"{name}: {inferences:.0f} inferences in {frames:.0f} frames: {EDITED}; {OWN_OUTPUT}"
    from_times = inferences * 1e3 / (inference_ms * frames)
    if not math.isclose(fps, from_times, rel_tol=FPS_TOLERANCE):
        return None, (
            f"{name}: model_fps {fps:g} is not its inferences over the time spent in the model "
            f"({from_times:.1f}): {EDITED}; {OWN_OUTPUT}"
        )
    if fps > rubric["pi"]["max_model_fps"]:
        return None, (
            f"{name}: a model-only {fps:g} FPS is more than a Raspberry Pi reaches with MobileNetV2 "
            f"(the rubric's limit is {rubric['pi']['max_model_fps']:g}); {OWN_OUTPUT}"
        )
    return fps, None


def recipe_of(model: ModelGrade) -> tuple[str | None, str | None, str | None, str | None]:
    return (model.method, model.engine, model.granularity, model.observer)


def _default_problem(model: ModelGrade, rubric: dict, parameters: int | None) -> str | None:
    """Why ``model`` is not task 5's default model: another recipe, another network, or no working weights.

    A slow stand-in for the default (another network, random weights) would flatter any open model.
    """
    if recipe_of(model) != DEFAULT_RECIPE:
        said = ", ".join(str(word) for word in recipe_of(model))
        return f"static for qnnpack, {DEFAULT_RECIPE[2]} weights, {DEFAULT_RECIPE[3]} observer (its sidecar: {said})"
    if parameters is not None and model.parameters != parameters:
        return f"MobileNetV2 with {parameters:,} weights and biases (this one: {model.parameters or 'unknown'})"
    if model.size_ratio is not None and model.size_ratio < DEFAULT_MIN_SIZE_RATIO:
        return (
            f"int8 MobileNetV2, about {1 / 3.6:.0%} of fp32's size (this one is 1/{model.size_ratio:.1f} of it: "
            "fp32 layers left, e.g. a dynamic model)"
        )
    worst, rule = rubric["accuracy"]["zero_at_drop"], rubric["accuracy"]["gate"]
    if model.top1_drop is not None and gates.fails_gate(model.top1_drop, model.top1_drop_low, worst, rule):
        lost = gates.describe_drop(model.top1_drop, model.top1_drop_low, model.top1_drop_high)
        return f"a working MobileNetV2 (this one loses {lost} of top-1, more than {worst:g})"
    return None


def _gate_drop(model: ModelGrade, rule: str) -> float:
    """What a gate compares: the interval's low end under the interval rule, else the drop; unknown last."""
    if model.top1_drop is None:
        return math.inf
    return model.top1_drop_low if rule == "interval" and model.top1_drop_low is not None else model.top1_drop


def check_open_run(
    path: Path, default: PiRun | None, graded: list[ModelGrade], rubric: dict, parameters: int | None = None
) -> tuple[float | None, str | None]:
    """The open target: (``pi_open.json``'s model-only FPS over ``pi_run.json``'s, why it earns nothing).

    ``default`` is the checked ``pi_run.json`` (None when it did not count); ``parameters``: MobileNetV2's
    count as the grader's loader counts it, which the default model must have.
    """
    name = path.name
    if default is None:
        return None, (
            f"{name} needs a {PI_RUN_FILE} that counts (task 5's default model on the same Pi): "
            "the open target is measured against it"
        )
    problems = [_default_problem(model, rubric, parameters) for model in default.models]
    if all(problems):
        return None, (
            f"{name}: {default.file} ran {clean_text(default.models[0].file, 60)}, not task 5's default model, "
            f"which is {problems[0]}: the open target is measured against that one"
        )
    reference = default.models[problems.index(None)]
    opened, _, why = read_run(path, graded, rubric)
    if why:
        return None, why
    candidates = [
        model
        for model in opened.models
        if model.method != "fp32"
        and model.engine in ("qnnpack", None)
        and model.sha256 != reference.sha256
        and (model.answers is None or model.answers != reference.answers)  # the default re-saved is the default
        # the default in a wrapper that adds 1e-4 to every logit answers otherwise, with the same int8 weights
        and (model.int8_weights is None or model.int8_weights != reference.int8_weights)
    ]
    if not candidates:
        return None, (
            f"{name} ran {clean_text(opened.models[0].file, 60)}: the default model again (or a file that computes "
            "what it computes or holds its weights), fp32, or int8 for an x86 engine: run your own int8 model (qnnpack TorchScript or "
            "ONNX) on the Pi"
        )
    for field, what in SAME_PI_FIELDS.items():
        mine, theirs = opened.run.get(field), default.run.get(field)
        if mine is None or theirs is None:
            return None, f"{name} or {default.file} does not record its {what}: run mobile_net.py again"
        if mine != theirs:
            return None, (
                f"{name} and {default.file} differ in {what} ({clean_text(mine, 40)} against "
                f"{clean_text(theirs, 40)}): run both on the same Pi with the same settings"
            )
    open_fps, why = model_fps(opened, rubric)
    default_fps, default_why = model_fps(default, rubric)
    if why or default_why:
        return None, why or default_why
    best = min(candidates, key=lambda model: _gate_drop(model, rubric["accuracy"]["gate"]))
    allowed = rubric["open"]["max_drop"]
    if best.top1_drop is None:
        return None, f"{name}: the top-1 of {best.file} is unknown (no fp32 row to compare with): no open points"
    if gates.fails_gate(best.top1_drop, best.top1_drop_low, allowed, rubric["accuracy"]["gate"]):
        lost = gates.describe_drop(best.top1_drop, best.top1_drop_low, best.top1_drop_high)
        beyond = (
            " (all of it beyond)" if rubric["accuracy"]["gate"] == "interval" and best.top1_drop_low is not None else ""
        )
        return None, (
            f"{name}: {best.file} loses {lost} of top-1 against fp32, more than the "
            f"{allowed:g} the open target allows{beyond}: no open points"
        )
    return open_fps / default_fps, None
