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
from typing import TYPE_CHECKING

from quantlab import config
from quantlab.untrusted import clean_text, read_json_file

if TYPE_CHECKING:  # grading imports this module: the type only
    from quantlab.grading import ModelGrade

PI_RUN_FILE = "pi_run.json"  # task 5: the default qnnpack model on the Pi
OPEN_RUN_FILE = "pi_open.json"  # task 6: the open target, on the same Pi
MAX_PI_RUN_BYTES = 256 << 10  # a mobile_net.py --json summary is about 2 kB
PI_ARCHES = ("aarch64",)  # 64-bit Raspberry Pi OS (labs/01_pi_setup_and_realtime.md)
FPS_TOLERANCE = 0.05  # an FPS against the frames and seconds it was computed from
MADE_BY = "Codes/mobile_net.py --json on the Pi"
# what must match between the two runs for their model-only FPS to be compared (mobile_net.py records each)
SAME_PI_FIELDS = {"cpu": "Pi", "threads": "--threads", "size": "--size", "torch": "PyTorch"}
# task 5's command: quantize_model.py --method static --engine qnnpack with the default granularity and observer
DEFAULT_RECIPE = ("static", "qnnpack", config.SETTINGS["granularity"].default, config.SETTINGS["observer"].default)


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
    fps, frames, seconds = run["mean_fps"], run["frames"], run["seconds"]
    if not all(math.isfinite(value) for value in (fps, seconds)) or fps <= 0 or frames <= 0 or seconds <= 0:
        return None, None, f"{name}: frames, seconds and mean_fps must be positive numbers; run the demo again"
    shown_fps = float(fps) if fps <= 1e6 else None
    if run["arch"] not in PI_ARCHES or "raspberry pi" not in run["cpu"].lower():
        return (
            None,
            shown_fps,
            (
                f"{name} was recorded on {clean_text(run['cpu'], 50)} ({clean_text(run['arch'], 20)}), "
                "not a Raspberry Pi with 64-bit Raspberry Pi OS: run the demo on the Pi"
            ),
        )
    source = run["source"]
    if not (source.isdigit() or source == "picamera2"):
        return (
            None,
            shown_fps,
            (
                f"{name} read its frames from '{clean_text(source, 40)}', not a camera: run the demo "
                "with the webcam (default) or --source picamera2"
            ),
        )
    if run["engine"] != "qnnpack":
        return None, shown_fps, f"{name}: engine {clean_text(run['engine'], 20)}, not qnnpack: not a run on the Pi"
    minimum = rubric["pi"]["min_frames"]
    if frames < minimum:
        return None, shown_fps, f"{name}: {frames} frames, the rubric asks for {minimum:g} or more"
    if not math.isclose(fps, frames / seconds, rel_tol=FPS_TOLERANCE):
        return (
            None,
            shown_fps,
            (
                f"{name}: mean_fps {fps:g} is not its frames / seconds ({frames / seconds:.1f}): "
                "the file was edited; hand in the demo's own output"
            ),
        )
    if fps > rubric["pi"]["max_fps"]:
        return (
            None,
            shown_fps,
            (
                f"{name}: {fps:g} FPS is more than a Raspberry Pi reaches with MobileNetV2 "
                f"(the rubric's limit is {rubric['pi']['max_fps']:g}); hand in the demo's own output"
            ),
        )
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
    return PiRun(file=name, run=run, fps=float(fps), models=matching), shown_fps, None


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


def model_fps(pi_run: PiRun) -> tuple[float | None, str | None]:
    """The run's model-only FPS, checked against the inference times it was computed from."""
    run, name = pi_run.run, pi_run.file
    fps, inferences = run.get("model_fps"), run.get("inferences")
    try:
        inference_ms = run["stages_ms"]["inference"]["mean_ms"]  # over every frame, skipped ones count 0 ms
    except (KeyError, TypeError):
        inference_ms = None
    numbers = (fps, inferences, inference_ms)
    if any(isinstance(value, bool) or not isinstance(value, (int, float)) for value in numbers) or not all(
        math.isfinite(value) and value > 0 for value in numbers
    ):
        return None, f"{name} has no model-only FPS (model_fps, inferences, stages_ms): run mobile_net.py again"
    from_times = inferences * 1e3 / (inference_ms * run["frames"])
    if not math.isclose(fps, from_times, rel_tol=FPS_TOLERANCE):
        return None, (
            f"{name}: model_fps {fps:g} is not its inferences over the time spent in the model "
            f"({from_times:.1f}): the file was edited; hand in the demo's own output"
        )
    return float(fps), None


def recipe_of(model: ModelGrade) -> tuple[str | None, str | None, str | None, str | None]:
    return (model.method, model.engine, model.granularity, model.observer)


def check_open_run(
    path: Path, default: PiRun | None, graded: list[ModelGrade], rubric: dict
) -> tuple[float | None, str | None]:
    """The open target: (``pi_open.json``'s model-only FPS over ``pi_run.json``'s, why it earns nothing).

    ``default`` is the checked ``pi_run.json`` (None when it did not count).
    """
    name = path.name
    if default is None:
        return None, (
            f"{name} needs a {PI_RUN_FILE} that counts (task 5's default model on the same Pi): "
            "the open target is measured against it"
        )
    default_models = [model for model in default.models if recipe_of(model) == DEFAULT_RECIPE]
    if not default_models:
        return None, (
            f"{name}: {default.file} ran {clean_text(default.models[0].file, 60)}, not task 5's default model "
            f"(static for qnnpack, {DEFAULT_RECIPE[2]} weights, {DEFAULT_RECIPE[3]} observer): the open target "
            "is measured against that one"
        )
    opened, _, why = read_run(path, graded, rubric)
    if why:
        return None, why
    candidates = [
        model
        for model in opened.models
        if model.method != "fp32" and model.engine in ("qnnpack", None) and model.sha256 != default_models[0].sha256
    ]
    if not candidates:
        return None, (
            f"{name} ran {clean_text(opened.models[0].file, 60)}, which is the default model again, fp32, or int8 "
            f"for an x86 engine: run your own int8 model (qnnpack TorchScript or ONNX) on the Pi"
        )
    for field, what in SAME_PI_FIELDS.items():
        if opened.run.get(field) != default.run.get(field):
            return None, (
                f"{name} and {default.file} differ in {what} ({clean_text(opened.run.get(field), 40)} against "
                f"{clean_text(default.run.get(field), 40)}): run both on the same Pi with the same settings"
            )
    open_fps, why = model_fps(opened)
    default_fps, default_why = model_fps(default)
    if why or default_why:
        return None, why or default_why
    best = min(candidates, key=lambda model: model.top1_drop if model.top1_drop is not None else math.inf)
    allowed = rubric["open"]["max_drop"]
    if best.top1_drop is None:
        return None, f"{name}: the top-1 of {best.file} is unknown (no fp32 row to compare with): no open points"
    if best.top1_drop > allowed:
        return None, (
            f"{name}: {best.file} loses {best.top1_drop:.2f} points of top-1 against fp32, more than the "
            f"{allowed:g} the open target allows: no open points"
        )
    return open_fps / default_fps, None
