"""Scoring: each model against the baseline and the rubric, each student's parts, then the class-wide steps.

The score adds the scored model's points (accuracy kept, speed-up, size; rubric ``scored_model``: the model of
the student's own recipe, or their best), the parts handed in, the recipe (task 3b) and the open target (``score_open_target``, once the whole
class is graded: its full mark can be the class's best), minus a penalty per
flagged claim (a claim that disagrees with the files or the re-measured numbers).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from quantlab import files, report, vocab
from quantlab.errors import KitError
from quantlab.grader import emulated_pi, gates, grading_machine, model_checks, pi_runs, recipes, sandbox
from quantlab.grader.intake import (
    GRADED_SUFFIXES,
    OPEN_RUN_FILE,
    PI_RUN_FILE,
    REPORT_FILE,
    checked_sidecar,
    content_problem,
    display_name,
    fingerprint,
    folder_problem,
    model_file,
    read_report,
    static_problem,
)
from quantlab.grader.records import ModelGrade, StudentGrade
from quantlab.grader.rubric import ramp
from quantlab.grader.runner import Baseline, ModelRunner, measured_numbers
from quantlab.grader.untrusted import clean_text

# a student's models together get this many times the limit per model: 50 rows of models that each run
# out the limit would cost the class 50 limits; an honest submission needs a small part of one
STUDENT_BUDGET_TIMEOUTS = 2.0


def _claimed(row: dict, reference: dict | None) -> dict | None:
    """The report's own ratios of ``row`` against its fp32 row (same machine, same images)."""
    return report.ratios(row, reference) if reference is not None else None


def _set_recipe(grade: ModelGrade, sidecar: dict) -> None:
    """How the sidecar says the model was quantized, kept only when it is one of quantize_model.py's choices."""
    granularity, observer = sidecar.get("granularity"), sidecar.get("observer")
    grade.granularity = granularity if granularity in vocab.GRANULARITIES else None
    grade.observer = observer if observer in vocab.OBSERVERS else None
    calibration = sidecar.get("calibration")
    images = calibration.get("images") if isinstance(calibration, dict) else None
    grade.calibration_images = images if isinstance(images, int) and not isinstance(images, bool) else None
    seed, arch = sidecar.get("seed"), sidecar.get("arch")
    grade.seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    grade.arch = arch if isinstance(arch, str) else None
    grade.keep_float = recipes.sidecar_float_layers(sidecar)


def _child_reason(name: str, result: dict, memory_mb: int) -> str:
    reason = clean_text(result.get("reason") or "no reason given", 200)
    if reason == "ran out of memory":
        return f"{name} ran out of memory (the grader gives each model {memory_mb} MB): not scored"
    reason = reason.replace(f"{sandbox.SANDBOX_MODEL_DIR}/", "")
    if result.get("refused") is True:  # the reason names the operator and ends in "refused"
        return f"{name}: {reason}"
    return f"{name} {reason if reason.startswith('does not') else 'does not load: ' + reason}"


def grade_model(
    folder: Path,
    row: dict,
    reference: dict | None,
    rubric: dict,
    baseline: Baseline,
    runner: ModelRunner,
    flags: list[str],
) -> ModelGrade:
    """Check one model row of the report against its file, run it in the sandbox, and give it points."""
    name = row["file"]
    grade = ModelGrade(file=clean_text(name, 80), method=row["method"], engine=row["engine"])
    path, why = model_file(folder, name)
    if path is None:
        grade.excluded = why
        return grade
    why = content_problem(path) or static_problem(path)
    if why:
        grade.excluded = why
        return grade
    digest = files.sha256_of(path)
    grade.sha256 = digest
    if row["sha256"] != digest:
        grade.excluded = f"{name}: sha256 differs from {REPORT_FILE}: the file changed after it was benchmarked"
        flags.append(grade.excluded)
        return grade
    sidecar, why, is_flag = checked_sidecar(path, digest)
    if why:
        grade.excluded = why
        if is_flag:
            flags.append(why)
        return grade
    if sidecar:
        _set_recipe(grade, sidecar)
        if runner.measure is not None:
            grade.source_note = grading_machine.source_note(name, sidecar, runner.measure.data, runner.measure.holdout)
        sidecar = {key: sidecar[key] for key in ("engine", "method") if sidecar.get(key) is not None}  # the loader's
    outcome = runner(path, sidecar)
    if outcome.failure:
        grade.excluded = f"{name} {outcome.failure}"
        return grade
    result = outcome.result or {}
    if result.get("ok") is not True:
        grade.excluded = _child_reason(name, result, runner.memory_mb)
        if (
            "does not load" in grade.excluded
            and not files.is_torchscript_file(path)
            and path.suffix.lower() in vocab.TORCH_SUFFIXES
        ):
            grade.excluded += " (a torch.save of a Python object, e.g. a whole model, is refused: hand in TorchScript)"
        return grade
    method, engine = result.get("method"), result.get("engine")
    if sidecar and sidecar.get("method") and path.suffix.lower() in vocab.TORCH_SUFFIXES:
        method = sidecar["method"]
    if method in vocab.RECORDED_METHODS and method != "fp32" and result.get("quantized") is False:  # "int8" too
        # the sidecar (or ONNX metadata) is the student's word; the loaded graph is the file's
        grade.excluded = (
            f"{name}: its sidecar says {method}, but the model holds no int8 layers (it runs in "
            "fp32): quantize it with Codes/quantize_model.py"
        )
        flags.append(grade.excluded)
        return grade
    why = _convs_problem(name, method, grade, result.get("convs"))
    if why:
        grade.excluded = why
        flags.append(why)
        return grade
    grade.method = method if method in vocab.RECORDED_METHODS else "int8"
    grade.engine = engine if engine in vocab.ENGINE_CHOICES else None
    why = grading_machine.saturation_problem(name, grade.engine) or grading_machine.onnx_saturation_problem(
        name, result.get("int8_weight_max") if path.suffix.lower() in vocab.ONNX_SUFFIXES else None
    )
    if why:  # the grading CPU's fault, not the student's: not scored here, never a penalty
        grade.excluded = why
        return grade
    grade.answers = _digest(result.get("answers_sha256"))
    parameters = result.get("parameters")
    grade.parameters = parameters if isinstance(parameters, int) and not isinstance(parameters, bool) else None
    convs = result.get("convs")
    grade.int8_weights = _digest(convs.get("weights_sha256")) if isinstance(convs, dict) else None
    grade.weights = (
        model_checks.archive_content_hash(path)
        if path.suffix.lower() in vocab.TORCH_SUFFIXES
        else _digest(result.get("weights_sha256"))
    )
    if row["method"] != grade.method:
        flags.append(f"{name}: {REPORT_FILE} says method {row['method']}, its sidecar says {grade.method}")
    grade.size_mb = files.file_size_mb(path)
    tolerance = rubric["tolerance"]
    if abs(row["size_mb"] - grade.size_mb) > tolerance["size_relative"] * grade.size_mb:
        flags.append(f"{name}: {REPORT_FILE} claims {row['size_mb']:.2f} MB, the file is {grade.size_mb:.2f} MB")
    grade.size_ratio = baseline.size_mb / grade.size_mb

    claimed = _claimed(row, reference)
    if runner.measure is not None:
        measured = measured_numbers(result)
        if measured is None:
            grade.excluded = f"{name}: its measurement came back without believable numbers; not scored"
            return grade
        base = baseline.result
        grade.top1 = measured["top1"]
        grade.top1_drop = base["top1"] - measured["top1"]
        _set_drop_interval(grade, base.get("hits"), measured.get("hits"))
        grade.speedup = base["latency_ms"]["median"] / measured["latency_ms"]["median"]
        grade.unstable = measured["unstable"]
        _check_claims(name, row, claimed, grade, tolerance, flags, rubric["accuracy"]["gate"])
        if claimed is not None and _claims_faster(claimed["speedup"], grade.speedup, tolerance):
            _measure_speed_again(path, sidecar, grade, runner, base)
            grade.speed_claim = _speed_verdict(
                name, claimed["speedup"], grade, tolerance, _own_unstable(row, reference)
            )
    elif claimed is not None:
        grade.top1, grade.top1_drop, grade.speedup = row["top1"], claimed["top1_drop"], claimed["speedup"]
    _give_points(grade, rubric)
    return grade


def _set_drop_interval(grade: ModelGrade, baseline_hits: object, model_hits: object) -> None:
    """The paired 95 % interval of the drop, when both runs sent their per-photo answers on the same photos."""
    if baseline_hits is None or model_hits is None:
        return
    drop = gates.drop_interval(baseline_hits, model_hits)
    if drop is not None:
        grade.top1_drop_low, grade.top1_drop_high = drop["low"], drop["high"]


def _claims_faster(claimed: float, measured: float, tolerance: dict) -> bool:
    """A speed-up claim better than the re-measured one beyond the tolerance (a slower claim is never flagged)."""
    return claimed > measured * tolerance["speedup_factor"]


def _measure_speed_again(path: Path, sidecar: dict | None, grade: ModelGrade, runner, base: dict) -> None:
    """Measure the model a second time before a speed claim is flagged; keep both speed-ups.

    The points stay the first measurement's, as every other model's: a second chance only for the suspect
    claims would favour them.
    """
    again = runner.measure_again(path, sidecar) if hasattr(runner, "measure_again") else None
    measured = measured_numbers(again.result) if again and again.result and again.result.get("ok") else None
    if measured is None:
        grade.speedup_range = (grade.speedup, grade.speedup)
        return
    second = base["latency_ms"]["median"] / measured["latency_ms"]["median"]
    grade.speedup_range = (min(grade.speedup, second), max(grade.speedup, second))
    grade.unstable = grade.unstable or measured["unstable"]


def _own_unstable(row: dict, reference: dict | None) -> bool:
    """The student's benchmark said its own latency (the model's or its fp32 row's) was not to be trusted."""
    return bool(row.get("unstable")) or bool(reference is not None and reference.get("unstable"))


def _speed_verdict(
    name: str, claimed: float, grade: ModelGrade, tolerance: dict, claim_unstable: bool = False
) -> str | None:
    """After two measurements: None when the claim is within tolerance of the better one, an "unstable" note
    (starting so) when either side's measurement was unstable (the grader's spread covers the claim, the child
    saw a busy machine, or the student's benchmark marked its own latency unstable), else the flag's text.

    A busy machine on either side makes the ratio unreliable, not a lie; the points come from the grader's
    measurement either way, so a note costs nothing but the instructor's look."""
    factor = tolerance["speedup_factor"]
    low, high = grade.speedup_range or (grade.speedup, grade.speedup)
    if claimed <= high * factor:
        return None
    spread = high / low
    if grade.unstable or claimed <= high * factor * spread:
        return (
            f"unstable: {name} claims a {claimed:.2f}x speed-up, the grader measured {low:.2f}x and {high:.2f}x "
            "on a busy machine; not flagged (grade again on a quiet machine)"
        )
    if claim_unstable:
        return (
            f"unstable: {name} claims a {claimed:.2f}x speed-up, the grader measured {low:.2f}x and {high:.2f}x; "
            "the student's benchmark.json marks that latency unstable (a busy machine): not flagged"
        )
    return f"{name}: claimed speed-up {claimed:.2f}x, re-measured {low:.2f}x and {high:.2f}x (tolerance x/÷ {factor:g})"


def _convs_problem(name: str, method: str | None, grade: ModelGrade, convs: object) -> str | None:
    """Why the convolutions the child found contradict the sidecar's static/QAT recipe; None when they agree.

    A dynamic model (fp32 convolutions, int8 Linear) with a static sidecar passes as task 5's default model,
    and one file with four sidecars fills task 3's table: the packed convolution weights tell the truth.
    """
    if not isinstance(convs, dict):
        return None  # ONNX, or a graph the child could not read: the other checks still apply
    int8, floating, granularities = convs.get("int8"), convs.get("float"), convs.get("granularities")
    if not isinstance(int8, int) or not isinstance(floating, int) or not isinstance(granularities, list):
        return None
    if method in ("static", "qat") and (floating > 0 or grade.keep_float):
        why = recipes.float_layers_problem(name, method, grade.keep_float, grade.arch, convs)
        if why:
            return why
    grade.float_layers = grade.keep_float  # the child's float convolutions are the sidecar's (task 3b reads it)
    if grade.granularity and granularities and granularities != [grade.granularity]:
        found = clean_text(", ".join(str(word) for word in granularities), 60)
        return f"{name}: its sidecar says {grade.granularity} weights, its convolutions' packed weights are {found}"
    return None


def _digest(value: object) -> str | None:
    """A sha256 the child reported, or None when it is not one."""
    return value if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) else None


def _check_claims(
    name: str, row: dict, claimed: dict | None, grade: ModelGrade, tolerance: dict, flags: list[str], rule: str
) -> None:
    """Flag a top-1 claim that disagrees with the re-measured numbers beyond the rubric's tolerance.

    Ratios against the report's own fp32 row are compared, not raw numbers:
    they carry over from the student's machine and images to the grader's. With the ``interval`` rule the
    claimed drop is flagged only when it lies more than the tolerance outside the re-measured drop's paired
    95 % interval. Speed claims are checked after a second measurement (``_speed_verdict``).
    """
    points = tolerance["top1_points"]
    if claimed is not None and claimed["top1_drop"] is not None:
        low, high = grade.top1_drop, grade.top1_drop
        if rule == "interval" and grade.top1_drop_low is not None and grade.top1_drop_high is not None:
            low, high = grade.top1_drop_low, grade.top1_drop_high
        if not low - points <= claimed["top1_drop"] <= high + points:
            measured = gates.describe_drop(grade.top1_drop, grade.top1_drop_low, grade.top1_drop_high)
            flags.append(
                f"{name}: claimed top-1 drop {claimed['top1_drop']:+.1f} points, re-measured {measured} "
                f"(tolerance {points:g})"
            )
    elif row["top1"] is not None and abs(row["top1"] - grade.top1) > points:  # no fp32 row: raw top-1
        flags.append(
            f"{name}: claimed top-1 {row['top1']:.1f} %, re-measured {grade.top1:.1f} % (tolerance {points:g} points)"
        )


def _give_points(grade: ModelGrade, rubric: dict) -> None:
    weights = rubric["weights"]
    accuracy, speedup, size = rubric["accuracy"], rubric["speedup"], rubric["size"]
    grade.points = {
        "accuracy": 0.0
        if grade.top1_drop is None
        else weights["accuracy"] * ramp(grade.top1_drop, accuracy["zero_at_drop"], accuracy["full_at_drop"]),
        "speedup": 0.0
        if grade.speedup is None
        else weights["speedup"] * ramp(grade.speedup, speedup["zero_at"], speedup["full_at"]),
        "size": weights["size"] * ramp(grade.size_ratio, size["zero_at"], size["full_at"]),
    }


def _duplicate_methods(student: StudentGrade) -> None:
    """One model handed in under several methods (same weights) earns one method's part, and is flagged."""
    first_by_weights: dict[str, ModelGrade] = {}
    for grade in student.models:
        if grade.excluded or grade.method == "fp32":
            continue
        key = grade.weights or grade.sha256
        first = first_by_weights.setdefault(key, grade) if key else grade
        if first is not grade and first.method != grade.method:
            grade.excluded = (
                f"{grade.file} holds the same weights as {first.file} ({first.method}), handed in again "
                f"as {grade.method}: counted once"
            )
            student.flags.append(grade.excluded)


def grade_student(folder: Path, rubric: dict, baseline: Baseline, runner: ModelRunner) -> StudentGrade:
    """Check, measure (when the runner measures) and score one student's folder."""
    student = StudentGrade(student=display_name(folder.name), numbers="re-measured" if runner.measure else "claimed")
    why = folder_problem(folder)
    if why:
        return rejected(folder, rubric, why)
    try:
        handed_in = read_report(folder / REPORT_FILE)
    except KitError as error:
        return rejected(folder, rubric, str(error))
    for label in (REPORT_FILE, PI_RUN_FILE, OPEN_RUN_FILE):
        digest = fingerprint(folder / label)
        if digest:
            student.fingerprints[label] = digest
    results = handed_in["results"]
    reference = next((row for row in results if row["method"] == "fp32"), None)
    present = {"baseline"} if reference is not None else set()
    if reference is None:
        student.problems.append(f"no fp32 row in {REPORT_FILE}: benchmark mobilenet_v2 too (the baseline part)")
    if handed_in["settings"]["data"] is None:
        student.problems.append(f"{REPORT_FILE} was made without --data: it claims no accuracy")
    listed = set()
    budget = STUDENT_BUDGET_TIMEOUTS * runner.timeout
    started = time.monotonic()
    for row in results:
        if row["file"] is None or row["file"] in listed:
            continue
        listed.add(row["file"])
        if time.monotonic() - started > budget:
            name = clean_text(row["file"], 80)
            student.models.append(ModelGrade(file=name, method=row["method"], excluded=(
                f"{name} was not run: this submission's models used up its {budget:.3g} s "
                f"({STUDENT_BUDGET_TIMEOUTS:g} x the limit per model); make the slow ones faster"
            )))  # fmt: skip
            continue
        try:
            grade = grade_model(folder, row, reference, rubric, baseline, runner, student.flags)
        except (OSError, ValueError, KitError):  # an unreadable file costs that model, never the submission
            grade = ModelGrade(
                file=clean_text(row["file"], 80),
                method=row["method"],
                excluded=f"{clean_text(row['file'], 80)} cannot be read by the grader; hand it in again",
            )
        student.models.append(grade)
    _duplicate_methods(student)
    _speed_flags(student)
    student.notes += [grade.source_note for grade in student.models if grade.source_note]
    for grade in student.models:
        if grade.excluded and grade.excluded not in student.flags:
            student.problems.append(grade.excluded)
        if grade.excluded is None or grade.sha256:
            if grade.sha256:
                student.fingerprints[f"model {grade.file}"] = grade.sha256
            if grade.weights and grade.excluded is None:
                student.fingerprints[f"weights of {grade.file}"] = grade.weights
    graded = [m for m in student.models if m.excluded is None]
    present |= {m.method for m in graded}
    unlisted = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in GRADED_SUFFIXES and p.name not in listed)
    if unlisted:
        student.problems.append(f"not in {REPORT_FILE}, so not graded: {clean_text(', '.join(unlisted), 120)}")

    if ptq_table_complete(graded):
        present.add("ptq_table")
    pi_path, open_path = folder / PI_RUN_FILE, folder / OPEN_RUN_FILE
    default_run = None
    if pi_path.exists() or pi_path.is_symlink():
        default_run, student.pi_fps, why = pi_runs.check_pi_run(pi_path, graded, rubric)
        if why:
            (student.flags if pi_runs.EDITED in why else student.problems).append(why)
        else:
            present.add("pi")
    if open_path.exists() or open_path.is_symlink():
        student.open_speedup, why = pi_runs.check_open_run(open_path, default_run, graded, rubric, baseline.parameters)
        if why:
            (student.flags if pi_runs.EDITED in why else student.problems).append(why)

    _emulated_pi_part(folder / emulated_pi.PI_CHECK_FILE, student, graded, present, rubric)

    pc_engine = rubric["engines"]["pc"]
    candidates = [m for m in graded if m.method != "fp32" and _scored_engine(m, pc_engine, student)]
    if runner.measure is None and candidates and reference is None:
        student.problems.append("without --remeasure, accuracy and speed points need the report's fp32 row")
    weights = rubric["weights"]
    recipe_problem = recipes.check_recipe(folder, graded) if weights.get("recipe") else None
    candidates, why_none = scored_models(candidates, rubric, recipe_problem)
    student.best = max(candidates, key=lambda m: m.total, default=None)
    if student.best is None:  # a note when the recipe's own line (missing part or problem) says what to fix
        (student.notes if recipe_problem else student.problems).append(why_none)
    no_pi = rubric["pi"]["optional"] and not any(p.exists() or p.is_symlink() for p in (pi_path, open_path))
    parts = list(rubric["parts"])  # without a Pi, the pi part is still due: pi_check.json (emulated) fills it
    student.parts = [part for part in parts if part in present]
    student.missing = [part for part in parts if part not in present]
    student.points = dict(student.best.points) if student.best else {"accuracy": 0.0, "speedup": 0.0, "size": 0.0}
    student.points["parts"] = weights["parts"] * len(student.parts) / max(1, len(parts))
    student.points["open"] = 0.0  # given by score_open_target, once the whole class is graded
    if weights.get("recipe"):  # task 3b: the student's own recipe and the model it made
        why = recipe_problem
        student.points["recipe"] = 0.0 if why else float(weights["recipe"])
        if why and why.startswith(f"no {recipes.RECIPE_FILE}"):  # not handed in: a missing task, like a part
            student.missing.append("recipe")
        elif why:
            student.problems.append(f"recipe (task 3b): {why}")
    if no_pi:  # the open target left out (it needs a Pi's speed); what remains scaled up to the same total
        student.pi_scale = pi_optional_scale(rubric)
        student.points = {key: value * student.pi_scale for key, value in student.points.items()}
        proof = "the emulated Pi check" if student.pi_emulated else "no pi_check.json (the emulated Pi check)"
        student.notes.append(
            f"no Pi: scored without the open target, the other points x{student.pi_scale:.3f} (the rubric makes "
            f"the Pi optional); the pi part: {proof}"
        )
    student.points["penalty"] = -rubric["penalty_per_flag"] * len(student.flags)
    student.score = round(max(0.0, sum(student.points.values())), 1)
    student.status = "flagged" if student.flags else "problems" if student.problems else "ok"
    return student


def scored_models(candidates: list[ModelGrade], rubric: dict, recipe_problem: str | None) -> tuple[list, str]:
    """The models that may earn accuracy, speed and size points (rubric ``scored_model``), and why there is none
    when none is left: ``recipe``, the model of the student's own recipe once its check passed (tasks 2-5 are
    commands to paste); ``best``, or the recipe task left out (weight 0), every quantized model for the PC engine."""
    if not (rubric["weights"].get("recipe") and rubric["scored_model"] == "recipe"):
        return candidates, "no quantized model passed the checks: no accuracy, speed or size points"
    mine = [] if recipe_problem else [m for m in candidates if m.file == recipes.RECIPE_MODEL]
    return mine, (
        f"accuracy, speed and size points are those of {recipes.RECIPE_MODEL}, the model of your own recipe "
        f"(task 3b; rubric scored_model: recipe): {recipe_problem or 'it is not scored for the PC engine'}"
    )


def pi_optional_scale(rubric: dict) -> float:
    """What a student without a Pi's points are multiplied by: the total over what is left without the open
    target (the pi part stays: the emulated Pi check, ``emulated_pi``, fills it)."""
    weights = rubric["weights"]
    total = sum(weights.values())
    left = total - weights["open"]
    return total / left if left > 0 else 1.0


def _emulated_pi_part(path: Path, student: StudentGrade, graded: list[ModelGrade], present: set, rubric: dict) -> None:
    """pi_check.json, the emulated Pi check: the pi part when the rubric makes the Pi optional and no real Pi run
    counts; never FPS or the open target. A file with edited numbers is flagged, other faults are problems."""
    if not (path.exists() or path.is_symlink()):
        return
    if "pi" in present:
        student.notes.append(f"{path.name} not read: {PI_RUN_FILE} from a real Pi counts for the pi part")
        return
    if not rubric["pi"]["optional"]:
        student.problems.append(
            f"{path.name} (the emulated Pi check) does not count: the rubric asks for {PI_RUN_FILE} from a real Pi "
            "(pi.optional: false)"
        )
        return
    check, why = emulated_pi.check_pi_check(path, graded)
    if why:
        (student.flags if pi_runs.EDITED in why else student.problems).append(why)
        return
    present.add("pi")
    student.pi_emulated = check.summary


def _speed_flags(student: StudentGrade) -> None:
    """At most one speed flag per student (the first disagreeing claim); "unstable" notes are notes."""
    flagged = False
    for grade in student.models:
        verdict = grade.speed_claim
        if verdict is None or grade.excluded:
            continue
        if verdict.startswith("unstable"):
            student.notes.append(verdict)
        elif not flagged:
            student.flags.append(verdict)
            flagged = True
        else:
            student.problems.append(f"{verdict}; counted in the one speed flag above")


def _scored_engine(model: ModelGrade, pc_engine: str, student: StudentGrade) -> bool:
    """Whether the model may earn accuracy, speed and size points: the rubric's engine (qnnpack, ONNX: any)."""
    if pc_engine == "any" or model.engine in (None, "qnnpack", pc_engine):
        return True
    student.notes.append(
        f"{model.file} is quantized for {model.engine}; the rubric's engine is {pc_engine} (the homework's "
        f"--engine {pc_engine}): it counts for its part, not for accuracy, speed or size points"
    )
    return False


def ptq_table_complete(graded: list[ModelGrade]) -> bool:
    """Task 3's table: four static models, per-tensor/per-channel x MinMax/histogram, for one engine and one
    number of calibration photos, four distinct models (one file handed in four times is one model).

    The observer changes activation scales only, so the two models of one granularity may share their
    weights; the two granularities may not (a per-channel model's weights are other numbers than a
    per-tensor one's). Whether each granularity is the claimed one, the packed weights' qscheme has told
    already (``_convs_problem``): four wrappers of one model, each adding 1e-4 to the logits, fill two cells.
    """
    cells: dict[tuple, dict[tuple[str, str], ModelGrade]] = {}
    for model in graded:
        if model.method == "static" and model.granularity and model.observer and model.calibration_images:
            group = cells.setdefault((model.engine, model.calibration_images), {})
            group.setdefault((model.granularity, model.observer), model)
    needed = len(vocab.GRANULARITIES) * len(vocab.OBSERVERS)
    for group in cells.values():
        # models are told apart by what they compute (one file re-saved with another sidecar computes the same)
        answers = {model.answers or model.sha256 or model.file for model in group.values()}
        if len(group) != needed or len(answers) != needed:
            continue
        weights = [
            {model.int8_weights or model.weights for (granularity, _), model in group.items() if granularity == each}
            for each in vocab.GRANULARITIES
        ]
        if all(None not in one for one in weights) and set.intersection(*weights):
            continue  # the same weights under two granularities: one model
        return True
    return False


def open_target_full_at(students: list[StudentGrade], rubric: dict) -> float | None:
    """The Pi speed-up that earns all the open target's points: the rubric's number, or the class's best.

    The class's best is taken over submissions that are not flagged: a forged file must not set the bar.
    A forger who edits two Pi files consistently is not flagged, so the best counts at most ``best_cap``
    times the next best: one outlier cannot leave everyone else a sliver of the points.
    """
    full_at = rubric["open"]["full_at"]
    if full_at != "best":
        return float(full_at)
    honest = sorted(
        (s.open_speedup for s in students if s.open_speedup is not None and s.status in ("ok", "problems")),
        reverse=True,
    )
    if not honest:
        return None
    best = honest[0] if len(honest) == 1 else min(honest[0], honest[1] * rubric["open"]["best_cap"])
    return best if best > rubric["open"]["zero_at"] else None


def score_open_target(students: list[StudentGrade], rubric: dict) -> float | None:
    """Give each student the open target's points (after everyone is graded); return the speed-up of full points."""
    full_at = open_target_full_at(students, rubric)
    weight, zero_at = rubric["weights"]["open"], rubric["open"]["zero_at"]
    for student in students:
        if student.status == "rejected" or student.open_speedup is None or full_at is None:
            continue
        student.points["open"] = weight * ramp(student.open_speedup, zero_at, full_at)
        student.score = round(max(0.0, sum(student.points.values())), 1)
    return full_at


def flag_copies(students: list[StudentGrade]) -> None:
    """Note, on each student concerned, every file that is byte-identical to another student's (or same weights)."""
    owners: dict[str, list[tuple[str, str]]] = {}
    for student in students:
        for label, digest in student.fingerprints.items():
            owners.setdefault(digest, []).append((student.student, label))
    for student in students:
        notes = []
        for label, digest in student.fingerprints.items():
            others = sorted({name for name, _ in owners[digest] if name != student.student})
            same_file = f"model {label[len('weights of ') :]}"
            if (
                label.startswith("weights")
                and same_file in student.fingerprints
                and len(owners[student.fingerprints[same_file]]) > 1
            ):
                continue  # the identical file is listed already
            if others:
                kind = "same weights as" if label.startswith("weights") else "identical to"
                notes.append(f"{label} {kind} {', '.join(others[:5])}{' ...' if len(others) > 5 else ''}")
        # the same weights under another file name are listed once, after identical files
        student.copying = sorted(set(notes), key=lambda note: (note.startswith("weights"), note))


def rejected(folder: Path, rubric: dict, reason: str) -> StudentGrade:
    """A leaderboard line for a folder that could not be graded at all."""
    return StudentGrade(
        student=display_name(folder.name),
        status="rejected",
        numbers="",
        problems=[reason],
        missing=list(rubric["parts"]),
    )
