"""Grade homework submissions: check each student's files, score them by a rubric, write a leaderboard.

``Codes/grade.py`` is the command-line front end. A submission is one folder per
student (``labs/homework.md``) holding ``benchmark.json`` (``Codes/benchmark.py
--json``), the model files it lists with their sidecar JSONs
(``Codes/quantize_model.py``) and ``pi_run.json`` (``Codes/mobile_net.py --json``
on the Raspberry Pi).

Nothing a student sends is trusted: the report is validated, every model file
must have the sha256 the report recorded, model files load only as TorchScript,
ONNX or state dicts (``weights_only=True``, so pickled Python objects are
refused), and with ``--remeasure`` the grader measures accuracy and latency
itself. One bad submission gives its reasons in the leaderboard; it never stops
the run.

Example:
    from quantlab import grading
    rubric = grading.load_rubric(None)   # configs/rubric.yaml
    baseline = grading.Baseline.measure(threads=2, measure=None)
    student = grading.grade_student(Path("submissions/ada"), rubric, baseline, threads=2, measure=None)
"""

from __future__ import annotations

import csv
import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import yaml

from quantlab import bench, engines, models
from quantlab.assets import REPO_ROOT
from quantlab.errors import KitError

REPORT_FILE = "benchmark.json"   # Codes/benchmark.py --json
PI_RUN_FILE = "pi_run.json"      # Codes/mobile_net.py --json, on the Pi
RESERVED_STEMS = {Path(REPORT_FILE).stem, Path(PI_RUN_FILE).stem}  # a model named so would share their JSON name
TORCH_SUFFIXES = (".pt", ".pth", ".ptl")
MODEL_SUFFIXES = TORCH_SUFFIXES + models.ONNX_SUFFIXES
KNOWN_PARTS = ("baseline", "dynamic", "static", "qat", "pi")
DEFAULT_RUBRIC = REPO_ROOT / "configs" / "rubric.yaml"
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"  # pickle protocol 2 and later start with PROTO


# ---- the rubric ----------------------------------------------------------------

def _overlay(defaults: dict, overrides: dict, where: str, source: Path) -> dict:
    """``defaults`` with ``overrides`` on top; an unknown key or a wrong type is a KitError naming it."""
    merged = dict(defaults)
    for key, value in overrides.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in defaults:
            known = ", ".join(map(str, defaults))
            raise KitError(f"rubric {source}: unknown key '{name}' (known here: {known}); fix its spelling")
        default = defaults[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise KitError(f"rubric {source}: '{name}' must be a mapping of {', '.join(default)}")
            merged[key] = _overlay(default, value, name, source)
        elif isinstance(default, list):
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise KitError(f"rubric {source}: '{name}' must be a list of names, e.g. {default}")
            merged[key] = value
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise KitError(f"rubric {source}: '{name}' must be a number, got {value!r}")
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise KitError(f"cannot read rubric {path} ({error.strerror}); check the path given to --rubric") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise KitError(f"rubric {path} is not valid YAML{where}; fix it or start from {DEFAULT_RUBRIC}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise KitError(f"rubric {path} must be a YAML mapping (weights:, accuracy:, ...), not a {type(loaded).__name__}")
    return loaded


def load_rubric(path: Path | None) -> dict:
    """The default rubric (``configs/rubric.yaml``), with the keys of ``path`` on top when given."""
    if not DEFAULT_RUBRIC.is_file():
        raise KitError(f"the default rubric {DEFAULT_RUBRIC} is missing; restore it from the kit or pass --rubric")
    rubric = _read_yaml(DEFAULT_RUBRIC)
    if path is not None:
        rubric = _overlay(rubric, _read_yaml(path), "", path)
    source = path or DEFAULT_RUBRIC
    unknown = [part for part in rubric["parts"] if part not in KNOWN_PARTS]
    if unknown:
        raise KitError(f"rubric {source}: unknown part '{unknown[0]}' in parts (known: {', '.join(KNOWN_PARTS)})")
    if any(value < 0 for value in rubric["weights"].values()) or sum(rubric["weights"].values()) <= 0:
        raise KitError(f"rubric {source}: weights must be zero or more, and not all zero")
    for section, low, high in (("accuracy", "full_at_drop", "zero_at_drop"), ("speedup", "zero_at", "full_at"),
                               ("size", "zero_at", "full_at")):
        if not rubric[section][low] < rubric[section][high]:
            raise KitError(f"rubric {source}: {section}.{low} must be below {section}.{high}")
    if rubric["tolerance"]["speedup_factor"] < 1:
        raise KitError(f"rubric {source}: tolerance.speedup_factor is a factor (x/÷), at least 1")
    return rubric


def ramp(value: float, zero_at: float, full_at: float) -> float:
    """0 at ``zero_at``, 1 at ``full_at``, a straight line between, clipped (works both ways round)."""
    return min(1.0, max(0.0, (value - zero_at) / (full_at - zero_at)))


# ---- what the grader compares against --------------------------------------------

@dataclass
class Baseline:
    """fp32 MobileNetV2 as the grader measures it: size always, accuracy and latency with --remeasure."""

    size_mb: float
    result: dict | None  # a bench.benchmark_model entry, None without --remeasure

    @classmethod
    def measure(cls, threads: int, measure: Callable[[bench.LoadedModel], dict] | None) -> "Baseline":
        loaded = bench.load_any("mobilenet_v2", engine="auto", threads=threads)
        return cls(size_mb=loaded.size_mb, result=measure(loaded) if measure else None)


class Measurer:
    """Measures models on this machine, once per distinct file: identical files get identical numbers."""

    def __init__(self, batches: Callable[[], object], runs: int, warmup: int) -> None:
        self.batches = batches  # a fresh iterable of (images, labels) batches for each model
        self.runs = runs
        self.warmup = warmup
        self.cache: dict[str, dict] = {}

    def __call__(self, loaded: bench.LoadedModel) -> dict:
        key = loaded.sha256 or loaded.name
        if key not in self.cache:
            self.cache[key] = bench.benchmark_model(loaded, self.batches(), self.runs, self.warmup, progress=False)
        return self.cache[key]


# ---- one student -----------------------------------------------------------------

@dataclass
class ModelGrade:
    """One model file of a submission: checks, the numbers scored, and the points."""

    file: str
    method: str
    engine: str | None = None
    size_mb: float | None = None       # the file's size, measured here
    top1: float | None = None          # re-measured, or claimed without --remeasure
    top1_drop: float | None = None     # vs fp32 (the grader's with --remeasure, the report's row without)
    speedup: float | None = None
    size_ratio: float | None = None
    points: dict[str, float] = field(default_factory=dict)
    excluded: str | None = None        # why the model is not scored

    @property
    def total(self) -> float:
        return sum(self.points.values())


@dataclass
class StudentGrade:
    """A student's line in the leaderboard."""

    student: str
    score: float = 0.0
    status: str = "ok"                 # ok | problems | flagged | rejected
    numbers: str = "claimed"           # re-measured | claimed
    best: ModelGrade | None = None
    models: list[ModelGrade] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    points: dict[str, float] = field(default_factory=dict)
    pi_fps: float | None = None
    flags: list[str] = field(default_factory=list)     # claims that disagree with the files or re-measurements
    problems: list[str] = field(default_factory=list)  # everything else that is wrong

    @property
    def reasons(self) -> list[str]:
        return self.flags + self.problems


def content_problem(path: Path) -> str | None:
    """What the file really is when that is not what its suffix says; None when it fits."""
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        return f"{path.name}: '{suffix or 'no suffix'}' is not a model file type (TorchScript .pt or ONNX .onnx)"
    if suffix not in TORCH_SUFFIXES:
        return None  # ONNX is protobuf, no magic bytes: ONNX Runtime's loader tells
    with open(path, "rb") as file:
        head = file.read(512)
    if head.startswith(ZIP_MAGIC):
        return None  # TorchScript or torch.save: bench.load_any tells which, without unpickling objects
    if not head:
        return f"{path.name} is empty"
    if head.startswith(PICKLE_MAGIC):
        return f"{path.name} is a raw Python pickle, not a TorchScript archive: refused (pickles can run code)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return f"{path.name} is not a TorchScript archive (not a zip file)"
    return f"{path.name} is a text file, not a TorchScript archive"


def read_report(path: Path) -> dict:
    """The student's benchmark.json, valid for schema quantlab.benchmark/1, or a KitError saying why not."""
    if not path.is_file():
        raise KitError(f"no {path.name}: make it with Codes/benchmark.py --json {path.name}")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise KitError(f"{path.name} is not a text file") from None
    except json.JSONDecodeError as error:
        raise KitError(f"{path.name} is not valid JSON (line {error.lineno}: {error.msg})") from None
    problems = bench.validate_report(report)
    if problems:
        more = f" (+{len(problems) - 2} more)" if len(problems) > 2 else ""
        raise KitError(f"{path.name} is not a valid {bench.SCHEMA} report: {'; '.join(problems[:2])}{more}")
    return report


def _claimed(row: dict, reference: dict | None) -> dict | None:
    """The report's own ratios of ``row`` against its fp32 row (same machine, same images)."""
    return bench.ratios(row, reference) if reference is not None else None


def _safe_file(folder: Path, name: str) -> tuple[Path | None, str | None]:
    """The model file ``name`` inside ``folder``, or why it cannot be graded."""
    if name != Path(name).name or name.startswith("."):
        return None, f"{name}: a model file must be named without folders (benchmark.json lists basenames)"
    path = folder / name
    if path.is_symlink():
        return None, f"{name} is a link: submit the file itself"
    if not path.is_file():
        return None, f"missing model file {name} (listed in {REPORT_FILE})"
    if path.stem in RESERVED_STEMS:
        return None, f"{name}: its sidecar would be {path.stem}.json, which the submission uses for something else; rename it"
    return path, None


def grade_model(folder: Path, row: dict, reference: dict | None, rubric: dict, baseline: Baseline,
                threads: int, measure: Callable[[bench.LoadedModel], dict] | None,
                flags: list[str]) -> ModelGrade:
    """Check one model row of the report against its file, measure it when asked, and give it points."""
    name = row["file"]
    grade = ModelGrade(file=name, method=row["method"], engine=row["engine"])
    path, why = _safe_file(folder, name)
    if path is None:
        grade.excluded = why
        return grade
    why = content_problem(path)
    if why:
        grade.excluded = why
        return grade
    digest = models.sha256_of(path)
    if row["sha256"] != digest:
        grade.excluded = f"{name}: sha256 differs from {REPORT_FILE}: the file changed after it was benchmarked"
        flags.append(grade.excluded)
        return grade
    sidecar = models.read_sidecar(path)
    if sidecar.get("sha256") not in (None, digest):
        grade.excluded = f"{name}: sha256 differs from its sidecar {models.sidecar_path(path).name}"
        flags.append(grade.excluded)
        return grade
    try:
        loaded = bench.load_any(str(path), engine="auto", threads=threads)
        if loaded.engine is not None:
            engines.set_engine(loaded.engine)
        with torch.inference_mode():  # prove it runs and is a 1000-class classifier
            logits = loaded.model(torch.zeros(1, 3, 224, 224))
        if tuple(logits.shape) != (1, 1000):
            raise KitError(f"it returns shape {list(logits.shape)}, not the 1000 ImageNet logits [1, 1000]")
    except KitError as error:
        grade.excluded = f"{name} does not load: {str(error).replace(str(path), name)}"
        if zipfile.is_zipfile(path) and not bench.is_torchscript_archive(path):
            grade.excluded += " (a torch.save of a Python object, e.g. a whole model, is refused: hand in TorchScript)"
        return grade
    except Exception as error:  # a student's file can fail in any way inside torch; it must not stop the run
        first = str(error).splitlines()[0][:120] if str(error) else "no details"
        grade.excluded = f"{name} does not load or run ({type(error).__name__}: {first})"
        return grade
    grade.method, grade.engine = loaded.method, loaded.engine
    if row["method"] != loaded.method:
        flags.append(f"{name}: {REPORT_FILE} says method {row['method']}, its sidecar says {loaded.method}")
    grade.size_mb = models.file_size_mb(path)
    tolerance = rubric["tolerance"]
    if abs(row["size_mb"] - grade.size_mb) > tolerance["size_relative"] * grade.size_mb:
        flags.append(f"{name}: {REPORT_FILE} claims {row['size_mb']:.2f} MB, the file is {grade.size_mb:.2f} MB")
    grade.size_ratio = baseline.size_mb / grade.size_mb

    claimed = _claimed(row, reference)
    if measure is not None:
        measured = measure(loaded)
        base = baseline.result
        grade.top1 = measured["top1"]
        grade.top1_drop = base["top1"] - measured["top1"]
        grade.speedup = base["latency_ms"]["median"] / measured["latency_ms"]["median"]
        _check_claims(name, row, claimed, grade, tolerance, flags)
    elif claimed is not None:
        grade.top1, grade.top1_drop, grade.speedup = row["top1"], claimed["top1_drop"], claimed["speedup"]
    _give_points(grade, rubric)
    return grade


def _check_claims(name: str, row: dict, claimed: dict | None, grade: ModelGrade, tolerance: dict,
                  flags: list[str]) -> None:
    """Flag claims that disagree with the re-measured numbers beyond the rubric's tolerance.

    Ratios against the report's own fp32 row are compared, not raw numbers:
    they carry over from the student's machine and images to the grader's.
    """
    points = tolerance["top1_points"]
    if claimed is not None and claimed["top1_drop"] is not None:
        if abs(claimed["top1_drop"] - grade.top1_drop) > points:
            flags.append(f"{name}: claimed top-1 drop {claimed['top1_drop']:+.1f} points, re-measured "
                         f"{grade.top1_drop:+.1f} (tolerance {points:g})")
    elif row["top1"] is not None and abs(row["top1"] - grade.top1) > points:  # no fp32 row: raw top-1
        flags.append(f"{name}: claimed top-1 {row['top1']:.1f} %, re-measured {grade.top1:.1f} % "
                     f"(tolerance {points:g} points)")
    factor = tolerance["speedup_factor"]
    if claimed is not None and not 1 / factor <= claimed["speedup"] / grade.speedup <= factor:
        flags.append(f"{name}: claimed speed-up {claimed['speedup']:.2f}x, re-measured {grade.speedup:.2f}x "
                     f"(tolerance x/÷ {factor:g})")


def _give_points(grade: ModelGrade, rubric: dict) -> None:
    weights = rubric["weights"]
    accuracy, speedup, size = rubric["accuracy"], rubric["speedup"], rubric["size"]
    grade.points = {
        "accuracy": 0.0 if grade.top1_drop is None else
        weights["accuracy"] * ramp(grade.top1_drop, accuracy["zero_at_drop"], accuracy["full_at_drop"]),
        "speedup": 0.0 if grade.speedup is None else
        weights["speedup"] * ramp(grade.speedup, speedup["zero_at"], speedup["full_at"]),
        "size": weights["size"] * ramp(grade.size_ratio, size["zero_at"], size["full_at"]),
    }


def check_pi_run(path: Path, graded_files: set[str], rubric: dict) -> tuple[float | None, str | None]:
    """The Pi's mean FPS from ``pi_run.json``, and why the Pi part does not count (None when it does)."""
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, f"{path.name} is not valid JSON: make it with Codes/mobile_net.py --json {path.name}"
    fields = {"frames": int, "mean_fps": (int, float), "engine": str, "model": str}
    if not isinstance(run, dict) or any(not isinstance(run.get(key), kind) for key, kind in fields.items()):
        return None, f"{path.name} is not a Codes/mobile_net.py --json summary (needs {', '.join(fields)})"
    fps = float(run["mean_fps"])
    if run["engine"] != "qnnpack":
        return fps, f"{path.name}: engine {run['engine']}, not qnnpack: not a run of an int8 model on the Pi"
    minimum = rubric["pi"]["min_frames"]
    if run["frames"] < minimum:
        return fps, f"{path.name}: {run['frames']} frames, the rubric asks for {minimum:g} or more"
    # mobile_net.py describes a --model run as "PATH (N MB)"
    ran = Path(run["model"].rsplit(" (", 1)[0]).name
    if ran not in graded_files:
        return fps, f"{path.name} ran '{run['model']}', not one of the submitted models that passed the checks"
    return fps, None


def grade_student(folder: Path, rubric: dict, baseline: Baseline, threads: int,
                  measure: Callable[[bench.LoadedModel], dict] | None) -> StudentGrade:
    """Check, measure (when ``measure`` is given) and score one student's folder."""
    student = StudentGrade(student=folder.name, numbers="re-measured" if measure else "claimed")
    try:
        report = read_report(folder / REPORT_FILE)
    except KitError as error:
        return rejected(folder, rubric, str(error))
    results = report["results"]
    reference = next((row for row in results if row["method"] == "fp32"), None)
    present = {"baseline"} if reference is not None else set()
    if reference is None:
        student.problems.append(f"no fp32 row in {REPORT_FILE}: benchmark mobilenet_v2 too (the baseline part)")
    if report["settings"]["data"] is None:
        student.problems.append(f"{REPORT_FILE} was made without --data: it claims no accuracy")
    listed = set()
    for row in results:
        if row["file"] is None:
            continue
        listed.add(row["file"])
        grade = grade_model(folder, row, reference, rubric, baseline, threads, measure, student.flags)
        student.models.append(grade)
        if grade.excluded and grade.excluded not in student.flags:
            student.problems.append(grade.excluded)
    graded = [m for m in student.models if m.excluded is None]
    present |= {m.method for m in graded}
    unlisted = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in MODEL_SUFFIXES and p.name not in listed)
    if unlisted:
        student.problems.append(f"not in {REPORT_FILE}, so not graded: {', '.join(unlisted)}")

    pi_path = folder / PI_RUN_FILE
    if pi_path.is_file():
        student.pi_fps, why = check_pi_run(pi_path, {m.file for m in graded}, rubric)
        if why:
            student.problems.append(why)
        else:
            present.add("pi")

    candidates = [m for m in graded if m.method != "fp32"]
    if measure is None and candidates and reference is None:
        student.problems.append("without --remeasure, accuracy and speed points need the report's fp32 row")
    student.best = max(candidates, key=lambda m: m.total, default=None)
    if student.best is None:
        student.problems.append("no quantized model passed the checks: no accuracy, speed or size points")
    student.parts = [part for part in rubric["parts"] if part in present]
    student.missing = [part for part in rubric["parts"] if part not in present]
    weights = rubric["weights"]
    student.points = dict(student.best.points) if student.best else {"accuracy": 0.0, "speedup": 0.0, "size": 0.0}
    student.points["parts"] = weights["parts"] * len(student.parts) / max(1, len(rubric["parts"]))
    student.points["penalty"] = -rubric["penalty_per_flag"] * len(student.flags)
    student.score = round(max(0.0, sum(student.points.values())), 1)
    student.status = "flagged" if student.flags else "problems" if student.problems else "ok"
    return student


def rejected(folder: Path, rubric: dict, reason: str) -> StudentGrade:
    """A leaderboard line for a folder that could not be graded at all."""
    return StudentGrade(student=folder.name, status="rejected", numbers="", problems=[reason],
                        missing=list(rubric["parts"]))


def ranked(students: list[StudentGrade]) -> list[StudentGrade]:
    """Best score first; rejected submissions last; ties by name."""
    return sorted(students, key=lambda s: (s.status == "rejected", -s.score, s.student))


# ---- the leaderboard -------------------------------------------------------------

LEADERBOARD_COLUMNS = ("rank", "student", "score", "status", "numbers", "best_model", "method", "engine",
                       "top1", "top1_drop", "speedup", "size_mb", "size_ratio", "points_accuracy",
                       "points_speedup", "points_size", "points_parts", "penalty", "parts", "missing_parts",
                       "pi_fps", "reasons")


def _rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def leaderboard_rows(students: list[StudentGrade]) -> list[dict]:
    """One dict per student, ranked, with the columns of leaderboard.csv."""
    rows = []
    for rank, student in enumerate(ranked(students), start=1):
        best = student.best
        points = student.points
        rows.append({
            "rank": "-" if student.status == "rejected" else rank,
            "student": student.student,
            "score": student.score,
            "status": student.status,
            "numbers": student.numbers,
            "best_model": best.file if best else None,
            "method": best.method if best else None,
            "engine": best.engine if best else None,
            "top1": _rounded(best.top1) if best else None,
            "top1_drop": _rounded(best.top1_drop) if best else None,
            "speedup": _rounded(best.speedup) if best else None,
            "size_mb": _rounded(best.size_mb, 3) if best else None,
            "size_ratio": _rounded(best.size_ratio) if best else None,
            **{f"points_{key}": _rounded(points.get(key), 1) for key in ("accuracy", "speedup", "size", "parts")},
            "penalty": _rounded(points.get("penalty"), 1),
            "parts": " ".join(student.parts),
            "missing_parts": " ".join(student.missing),
            "pi_fps": _rounded(student.pi_fps, 1),
            "reasons": " | ".join(student.reasons),
        })
    return rows


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LEADERBOARD_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _cell(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    return str(value).replace("|", "\\|")


def markdown_text(students: list[StudentGrade], header: list[str]) -> str:
    """The leaderboard as Markdown: the context, the ranking, then every submission's problems."""
    rows = leaderboard_rows(students)
    shown = ("rank", "student", "score", "status", "best_model", "method", "top1_drop", "speedup", "size_ratio",
             "parts", "pi_fps")
    titles = ("rank", "student", "score", "status", "best model", "method", "top-1 drop (points)", "speed-up",
              "smaller", "parts", "Pi FPS")
    lines = ["# Leaderboard", "", *header, "",
             "| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    lines += ["| " + " | ".join(_cell(row[key]) for key in shown) + " |" for row in rows]
    lines += ["", "## Problems", ""]
    troubled = [student for student in ranked(students) if student.reasons]
    for student in troubled:
        lines.append(f"- **{student.student}** ({student.status}):")
        lines += [f"  - {reason}" for reason in student.reasons]
    if not troubled:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def write_plot(students: list[StudentGrade], path: Path, title: str) -> None:
    """Stacked bars of each student's points (why they rank where they do); atomic PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    ordered = ranked(students)
    names = [s.student for s in ordered]
    figure, axes = plt.subplots(figsize=(8, 1.2 + 0.4 * len(names)))
    left = [0.0] * len(names)
    for key, colour in (("accuracy", "tab:green"), ("speedup", "tab:blue"), ("size", "tab:orange"),
                        ("parts", "tab:purple")):
        widths = [s.points.get(key, 0.0) for s in ordered]
        axes.barh(names, widths, left=left, color=colour, label=key)
        left = [a + b for a, b in zip(left, widths)]
    penalised = [(index, -s.points["penalty"]) for index, s in enumerate(ordered) if s.points.get("penalty")]
    if penalised:  # hatched over the points they took off
        axes.barh([names[i] for i, _ in penalised], [width for _, width in penalised],
                  left=[left[i] - width for i, width in penalised], color="none", edgecolor="tab:red", hatch="//",
                  label="penalty (taken off)")
    for index, student in enumerate(ordered):
        axes.text(max(left[index], 0) + 1, index, f"{student.score:g}" if student.status != "rejected" else "rejected",
                  va="center", fontsize=8)
    axes.invert_yaxis()  # rank 1 on top
    axes.set_xlabel("points")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7, loc="lower right")
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    try:
        models.atomic_write(path, lambda partial: figure.savefig(partial, format="png", dpi=110), "--output")
    finally:
        plt.close(figure)


def write_leaderboard(students: list[StudentGrade], output: Path, header: list[str]) -> list[Path]:
    """leaderboard.csv, leaderboard.md and leaderboard.png in ``output``, each written atomically."""
    rows = leaderboard_rows(students)
    paths = [output / "leaderboard.csv", output / "leaderboard.md", output / "leaderboard.png"]
    models.atomic_write(paths[0], lambda partial: partial.write_text(csv_text(rows), encoding="utf-8"), "--output")
    markdown = markdown_text(students, header)
    models.atomic_write(paths[1], lambda partial: partial.write_text(markdown, encoding="utf-8"), "--output")
    write_plot(students, paths[2], header[0].replace("; ", "\n") if header else "leaderboard")
    return paths


def _shown(value, spec: str, unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def format_summary(students: list[StudentGrade]) -> str:
    """The leaderboard as a text table for the terminal."""
    header = (f"{'rank':>4}  {'student':<16}{'score':>7}  {'status':<9}{'best model':<22}{'drop':>8}"
              f"{'faster':>10}{'smaller':>9}  {'parts':<28}{'problems':>8}")
    lines = [header, "-" * len(header)]
    for row in leaderboard_rows(students):
        reasons = row["reasons"].count(" | ") + 1 if row["reasons"] else 0
        lines.append(f"{row['rank']:>4}  {row['student'][:15]:<16}{row['score']:>7.1f}  {row['status']:<9}"
                     f"{(row['best_model'] or '-')[:21]:<22}{_shown(row['top1_drop'], '+.1f'):>8}"
                     f"{_shown(row['speedup'], '.2f', 'x'):>10}{_shown(row['size_ratio'], '.2f', 'x'):>9}  "
                     f"{row['parts'][:27]:<28}{reasons:>8}")
    lines.append("drop: top-1 points lost vs fp32; faster, smaller: vs fp32; problems: see leaderboard.md")
    return "\n".join(lines)
