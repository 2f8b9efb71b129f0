"""Grade homework submissions: check each student's files, score them by a rubric, write a leaderboard.

``Codes/grade.py`` is the command-line front end. A submission is one folder per
student (``labs/homework.md``) holding ``benchmark.json`` (``Codes/benchmark.py
--json``), the model files it lists with their sidecar JSONs
(``Codes/quantize_model.py``), and ``pi_run.json`` and ``pi_open.json``
(``Codes/mobile_net.py --json`` on the Raspberry Pi, checked by ``quantlab.pi_runs``).
The score adds the best model's points, the parts handed in and the open target
(``score_open_target``, once the whole class is graded: its full mark can be the
class's best).

Nothing a student sends is trusted. Links are refused everywhere; JSON files
are size-capped and validated (finite numbers, sane ranges); model files must
have the sha256 the report recorded, pass ``quantlab.model_checks`` (zip-bomb
caps, no load-time code, an operator allowlist) and are loaded, run and
measured only in a sandboxed child process (``quantlab.sandbox``) that can be
stopped, never in the grader. What a child sends back is validated too. One bad
submission gives its reasons in the leaderboard; it never stops the run, and a
broken sidecar or ``pi_run.json`` costs only its part. Every student-controlled
string is capped and escaped in the leaderboard files.

Example:
    from quantlab import grading, sandbox
    rubric = grading.load_rubric(None)   # quantlab/rubric.yaml
    runner = grading.ModelRunner(threads=2, measure=None, isolation=sandbox.isolation())
    baseline = grading.Baseline.measure(runner)
    student = grading.grade_student(Path("submissions/ada"), rubric, baseline, runner)
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from quantlab import config, engines, files, loading, model_checks, models, pi_runs, report, sandbox
from quantlab.errors import KitError
from quantlab.untrusted import clean_text, finite_number, link_problem, read_json_file

REPORT_FILE = "benchmark.json"  # Codes/benchmark.py --json
PI_RUN_FILE, OPEN_RUN_FILE = pi_runs.PI_RUN_FILE, pi_runs.OPEN_RUN_FILE  # Codes/mobile_net.py --json, on the Pi
RESERVED_STEMS = {
    Path(name).stem for name in (REPORT_FILE, PI_RUN_FILE, OPEN_RUN_FILE)
}  # a model named so would share their JSON name
TORCH_SUFFIXES = (".pt", ".pth", ".ptl")
MODEL_SUFFIXES = TORCH_SUFFIXES + models.ONNX_SUFFIXES
KNOWN_PARTS = ("baseline", "dynamic", "static", "ptq_table", "qat", "pi")
KNOWN_METHODS = ("fp32", "static", "dynamic", "qat", "int8")
# the default rubric ships inside the package (configs/rubric.yaml links to it): a pip install without -e has it
DEFAULT_RUBRIC = "rubric.yaml"
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"  # pickle protocol 2 and later start with PROTO

# labs/homework.md: a student folder is named with letters, digits, '-' and '_' (it is the leaderboard name)
FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MAX_REPORT_BYTES = 1 << 20  # an honest benchmark.json of five models is about 10 kB
MAX_SIDECAR_BYTES = 64 << 10  # a sidecar is under 1 kB
MAX_REASONS = 8  # reasons listed per student (the rest are counted)


# ---- the rubric ----------------------------------------------------------------


def _overlay(defaults: dict, overrides: dict, where: str, source: Path) -> dict:
    """``defaults`` with ``overrides`` on top; an unknown key or a wrong type is a KitError naming it."""
    merged = dict(defaults)
    for key, value in overrides.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in defaults:
            known = ", ".join(map(str, defaults))
            raise KitError(
                f"rubric {source}: unknown key '{clean_text(name, 60)}' (known here: {known}); fix its spelling"
            )
        default = defaults[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise KitError(f"rubric {source}: '{name}' must be a mapping of {', '.join(default)}")
            merged[key] = _overlay(default, value, name, source)
        elif isinstance(default, list):
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise KitError(f"rubric {source}: '{name}' must be a list of names, e.g. {default}")
            if len(value) > len(KNOWN_PARTS) * 2:
                raise KitError(
                    f"rubric {source}: '{name}' lists {len(value)} names; the parts are {', '.join(KNOWN_PARTS)}"
                )
            merged[key] = value
        elif isinstance(default, str) and value == default:  # a word the rubric allows instead of a number
            merged[key] = value
        elif finite_number(value, low=-1e12, high=1e12) is None:  # not a number, NaN, or a typo's 400 digits
            allowed = f" or '{default}'" if isinstance(default, str) else ""
            raise KitError(f"rubric {source}: '{name}' must be a number{allowed}, got {clean_text(repr(value), 60)}")
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict:
    loaded = config.read_yaml(path, "rubric")  # no aliases: a 350-byte alias bomb would expand to gigabytes
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise KitError(
            f"rubric {path} must be a YAML mapping (weights:, accuracy:, ...), not a {type(loaded).__name__}"
        )
    return loaded


def load_rubric(path: Path | None) -> dict:
    """The default rubric (``quantlab/rubric.yaml``, package data), with the keys of ``path`` on top when given."""
    with resources.as_file(resources.files("quantlab") / DEFAULT_RUBRIC) as default:
        if not default.is_file():
            raise KitError(f"the default rubric {default} is missing; reinstall the kit or pass --rubric")
        rubric = _read_yaml(default)
    if path is not None:
        rubric = _overlay(rubric, _read_yaml(path), "", path)
    source = path or f"quantlab/{DEFAULT_RUBRIC}"
    unknown = [part for part in rubric["parts"] if part not in KNOWN_PARTS]
    if unknown:
        raise KitError(
            f"rubric {source}: unknown part '{clean_text(unknown[0], 40)}' in parts (known: {', '.join(KNOWN_PARTS)})"
        )
    if any(value < 0 for value in rubric["weights"].values()) or sum(rubric["weights"].values()) <= 0:
        raise KitError(f"rubric {source}: weights must be zero or more, and not all zero")
    for section, low, high in (
        ("accuracy", "full_at_drop", "zero_at_drop"),
        ("speedup", "zero_at", "full_at"),
        ("size", "zero_at", "full_at"),
    ):
        if not rubric[section][low] < rubric[section][high]:
            raise KitError(f"rubric {source}: {section}.{low} must be below {section}.{high}")
    open_target = rubric["open"]
    if open_target["max_drop"] < 0:
        raise KitError(f"rubric {source}: open.max_drop is the top-1 points the open model may lose, 0 or more")
    if open_target["zero_at"] < 1:
        raise KitError(f"rubric {source}: open.zero_at is a speed-up over the default model, at least 1")
    if open_target["full_at"] != "best" and not open_target["zero_at"] < open_target["full_at"]:
        raise KitError(f"rubric {source}: open.zero_at must be below open.full_at (or full_at: best)")
    if rubric["pi"]["max_fps"] <= 0 or rubric["pi"]["max_model_fps"] <= 0:
        raise KitError(f"rubric {source}: pi.max_fps and pi.max_model_fps must be positive")
    if rubric["tolerance"]["speedup_factor"] < 1:
        raise KitError(f"rubric {source}: tolerance.speedup_factor is a factor (x/÷), at least 1")
    return rubric


def ramp(value: float, zero_at: float, full_at: float) -> float:
    """0 at ``zero_at``, 1 at ``full_at``, a straight line between, clipped (works both ways round)."""
    return min(1.0, max(0.0, (value - zero_at) / (full_at - zero_at)))


# ---- running students' models (in the sandbox) ---------------------------------------


@dataclass
class MeasureSettings:
    """What --remeasure measures every model on (the child rebuilds the same images)."""

    data: Path
    holdout: int | None
    images: int | None
    seed: int
    batch_size: int
    runs: int
    warmup: int
    image_count: int  # how many images that selects: sizes the time limit


class ModelRunner:
    """Loads, checks, runs and (with ``measure``) measures model files in the sandbox, once per distinct file.

    Identical files with identical sidecars get identical numbers, and are run once.
    """

    def __init__(
        self,
        threads: int,
        measure: MeasureSettings | None,
        isolation: str,
        timeout: float | None = None,
        memory_mb: int = sandbox.Limits.memory_mb,
    ) -> None:
        self.threads = threads
        self.measure = measure
        self.isolation = isolation
        self.memory_mb = memory_mb
        self.timeout = timeout or self.default_timeout(measure)
        self.cache: dict[tuple, sandbox.Outcome] = {}

    @staticmethod
    def default_timeout(measure: MeasureSettings | None) -> float:
        """Loading and one run take seconds; measuring adds time per image and per timed run (slow engines too)."""
        if measure is None:
            return 120.0
        return 120.0 + 0.5 * measure.image_count + 0.5 * (measure.runs + measure.warmup)

    def __call__(self, path: Path, sidecar: dict | None) -> sandbox.Outcome:
        if sidecar is not None and path.suffix.lower() in TORCH_SUFFIXES:
            # the child needs only the engine (the method is the sidecar's, read here): a model handed in again
            # with an edited method runs once
            sidecar = {"engine": sidecar["engine"]} if "engine" in sidecar else None
        key = (files.sha256_of(path), json.dumps(sidecar, sort_keys=True))
        if key not in self.cache:
            request: dict = {"task": "check", "threads": self.threads, "data": None}
            read_only = []
            if self.measure is not None:
                settings = self.measure
                request["task"] = "measure"
                request["data"] = {
                    "path": str(Path(settings.data).resolve()),
                    "holdout": settings.holdout,
                    "images": settings.images,
                    "seed": settings.seed,
                    "batch_size": settings.batch_size,
                    "runs": settings.runs,
                    "warmup": settings.warmup,
                }
                read_only = [Path(settings.data).resolve()]
            limits = sandbox.Limits(wall_seconds=self.timeout, memory_mb=self.memory_mb, threads=self.threads)
            self.cache[key] = sandbox.run_model(path, sidecar, request, limits, self.isolation, read_only)
        return self.cache[key]


def measured_numbers(result: dict) -> dict | None:
    """The measurement a child reported, when every number in it is believable; None otherwise."""
    measured = result.get("measured")
    if not isinstance(measured, dict) or not isinstance(measured.get("latency_ms"), dict):
        return None
    median = finite_number(measured["latency_ms"].get("median"), 0.0, 1e7, strict_low=True)
    top1, top5 = finite_number(measured.get("top1"), 0, 100), finite_number(measured.get("top5"), 0, 100)
    if median is None or top1 is None or top5 is None:
        return None
    return {"top1": top1, "top5": top5, "latency_ms": {"median": median}, "unstable": measured.get("unstable") is True}


@dataclass
class Baseline:
    """fp32 MobileNetV2 as the grader measures it: size always, accuracy and latency with --remeasure.

    It is measured by the same sandboxed child as the students' models, so
    speed-ups compare like with like.
    """

    size_mb: float
    result: dict | None  # {"top1", "top5", "latency_ms": {"median"}}, None without --remeasure
    parameters: int | None = None  # MobileNetV2's weights and biases, BatchNorm folded (the loader's count)

    @classmethod
    def measure(cls, runner: ModelRunner) -> Baseline:
        loaded = loading.load_any("mobilenet_v2", engine="auto", threads=runner.threads)
        if runner.measure is None:
            return cls(size_mb=loaded.size_mb, result=None, parameters=loaded.parameters)
        import torch

        with tempfile.TemporaryDirectory(prefix="quantlab-baseline-") as folder:
            path = Path(folder) / "mobilenet_v2_fp32.pt"
            torch.jit.save(loaded.model, str(path))
            outcome = runner(path, None)
        numbers = measured_numbers(outcome.result) if outcome.result and outcome.result.get("ok") else None
        if numbers is None:
            why = outcome.failure or clean_text((outcome.result or {}).get("reason", "no numbers"))
            raise KitError(
                f"the fp32 baseline could not be measured in the grader's sandbox ({why}); "
                "check --data and the memory and time limits"
            )
        return cls(size_mb=loaded.size_mb, result=numbers, parameters=loaded.parameters)


# ---- one student -----------------------------------------------------------------


@dataclass
class ModelGrade:
    """One model file of a submission: checks, the numbers scored, and the points."""

    file: str
    method: str
    engine: str | None = None
    size_mb: float | None = None  # the file's size, measured here
    top1: float | None = None  # re-measured, or claimed without --remeasure
    top1_drop: float | None = None  # vs fp32 (the grader's with --remeasure, the report's row without)
    speedup: float | None = None
    size_ratio: float | None = None
    points: dict[str, float] = field(default_factory=dict)
    excluded: str | None = None  # why the model is not scored
    unstable: bool = False  # its re-measured latency was unstable (the grader's machine was busy)
    sha256: str | None = None  # the file's bytes
    weights: str | None = None  # its weights, whatever the file's name or metadata
    answers: str | None = None  # what it computes (its logits on a fixed input): one model, whatever its bytes
    parameters: int | None = None  # weights and biases, counted by the grader's child
    # how it was quantized, from its sidecar (the student's word; task 3's table and the open target read it)
    granularity: str | None = None
    observer: str | None = None
    calibration_images: int | None = None

    @property
    def total(self) -> float:
        return sum(self.points.values())


@dataclass
class StudentGrade:
    """A student's line in the leaderboard."""

    student: str
    score: float = 0.0
    status: str = "ok"  # ok | problems | flagged | rejected
    numbers: str = "claimed"  # re-measured | claimed
    best: ModelGrade | None = None
    models: list[ModelGrade] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    points: dict[str, float] = field(default_factory=dict)
    pi_fps: float | None = None
    open_speedup: float | None = None  # the open target: pi_open.json's model-only FPS / pi_run.json's
    flags: list[str] = field(default_factory=list)  # claims that disagree with the files or re-measurements
    problems: list[str] = field(default_factory=list)  # everything else that is wrong
    copying: list[str] = field(default_factory=list)  # files identical to another student's (for the instructor)
    fingerprints: dict[str, str] = field(default_factory=dict)  # what copying is detected on: label -> digest

    @property
    def reasons(self) -> list[str]:
        return self.flags + self.problems


def content_problem(path: Path) -> str | None:
    """What the file really is when that is not what its suffix says; None when it fits."""
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        return f"{path.name}: '{suffix or 'no suffix'}' is not a model file type (TorchScript .pt or ONNX .onnx)"
    if suffix not in TORCH_SUFFIXES:
        return None  # ONNX is protobuf, no magic bytes: checked against the operator allowlist in the sandbox
    with open(path, "rb") as file:
        head = file.read(512)
    if head.startswith(ZIP_MAGIC):
        return None  # TorchScript or torch.save: the sandboxed loader tells which, without unpickling objects
    if not head:
        return f"{path.name} is empty"
    if head.startswith(PICKLE_MAGIC):
        return f"{path.name} is a raw Python pickle, not a TorchScript archive: refused (pickles can run code)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return f"{path.name} is not a TorchScript archive (not a zip file)"
    return f"{path.name} is a text file, not a TorchScript archive"


def static_problem(path: Path) -> str | None:
    """The checks made before any loader sees the file (zip bombs, load-time code, banned operators)."""
    if path.suffix.lower() in TORCH_SUFFIXES:
        why = model_checks.check_zip(path)
        if why and "not a readable zip" in why:
            return f"{path.name} does not load: it is not a complete zip archive (damaged or cut short)"
        return why or model_checks.check_code_text(path)
    if path.stat().st_size > model_checks.MAX_ONNX_BYTES:
        return f"{path.name} is over {model_checks.MAX_ONNX_BYTES / 1e6:.0f} MB: refused"
    return None


def read_report(path: Path) -> dict:
    """The student's benchmark.json, valid for schema quantlab.benchmark/1, or a KitError saying why not."""
    if not path.exists() and not path.is_symlink():
        raise KitError(f"no {path.name}: make it with Codes/benchmark.py --json {path.name}")
    document, why = read_json_file(path, MAX_REPORT_BYTES, "Codes/benchmark.py --json")
    if why:
        raise KitError(why)
    problems = report.validate_report(document)
    if problems:
        more = f" (+{len(problems) - 2} more)" if len(problems) > 2 else ""
        shown = "; ".join(clean_text(problem, 200) for problem in problems[:2])
        raise KitError(f"{path.name} is not a valid {report.SCHEMA} report: {shown}{more}")
    return document


def _claimed(row: dict, reference: dict | None) -> dict | None:
    """The report's own ratios of ``row`` against its fp32 row (same machine, same images)."""
    return report.ratios(row, reference) if reference is not None else None


def _safe_file(folder: Path, name: str) -> tuple[Path | None, str | None]:
    """The model file ``name`` inside ``folder``, or why it cannot be graded."""
    if name != Path(name).name or name.startswith(".") or "\\" in name:
        return (
            None,
            f"{clean_text(name, 60)}: a model file must be named without folders (benchmark.json lists basenames)",
        )
    path = folder / name
    why = link_problem(path, name)
    if why:
        return None, why
    if not path.is_file():
        return None, f"missing model file {name} (listed in {REPORT_FILE})"
    if path.stem in RESERVED_STEMS:
        return (
            None,
            f"{name}: its sidecar would be {path.stem}.json, which the submission uses for something else; rename it",
        )
    return path, None


def read_sidecar(path: Path, digest: str) -> tuple[dict | None, str | None, bool]:
    """The model's sidecar, checked: (the sidecar, why it cannot be used, is that a flag)."""
    side = models.sidecar_path(path)
    if not side.exists() and not side.is_symlink():
        return None, None, False  # allowed: the model runs on auto's engine, method from its graph
    sidecar, why = read_json_file(side, MAX_SIDECAR_BYTES, "Codes/quantize_model.py")
    if why:
        return None, f"{path.name}: its sidecar {why}; hand in the sidecar quantize_model.py wrote", False
    if not isinstance(sidecar, dict):
        return (
            None,
            f"{path.name}: its sidecar {side.name} is not a JSON object; hand in the one quantize_model.py wrote",
            False,
        )
    if sidecar.get("sha256") not in (None, digest):
        return None, f"{path.name}: sha256 differs from its sidecar {side.name}", True
    engine, method = sidecar.get("engine"), sidecar.get("method")
    if engine is not None and engine not in engines.ENGINE_CHOICES:
        return None, f"{path.name}: its sidecar names engine '{clean_text(engine, 30)}', not one of the kit's", False
    if method is not None and method not in KNOWN_METHODS:
        return None, f"{path.name}: its sidecar names method '{clean_text(method, 30)}', not one of the kit's", False
    return sidecar, None, False


def _set_recipe(grade: ModelGrade, sidecar: dict) -> None:
    """How the sidecar says the model was quantized, kept only when it is one of quantize_model.py's choices."""
    granularity, observer = sidecar.get("granularity"), sidecar.get("observer")
    grade.granularity = granularity if granularity in config.GRANULARITIES else None
    grade.observer = observer if observer in config.OBSERVERS else None
    calibration = sidecar.get("calibration")
    images = calibration.get("images") if isinstance(calibration, dict) else None
    grade.calibration_images = images if isinstance(images, int) and not isinstance(images, bool) else None


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
    path, why = _safe_file(folder, name)
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
    sidecar, why, is_flag = read_sidecar(path, digest)
    if why:
        grade.excluded = why
        if is_flag:
            flags.append(why)
        return grade
    if sidecar:
        _set_recipe(grade, sidecar)
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
            and not models.is_torchscript_file(path)
            and path.suffix.lower() in TORCH_SUFFIXES
        ):
            grade.excluded += " (a torch.save of a Python object, e.g. a whole model, is refused: hand in TorchScript)"
        return grade
    method, engine = result.get("method"), result.get("engine")
    if sidecar and sidecar.get("method") and path.suffix.lower() in TORCH_SUFFIXES:
        method = sidecar["method"]
    if method in ("static", "dynamic", "qat") and result.get("quantized") is False:
        # the sidecar (or ONNX metadata) is the student's word; the loaded graph is the file's
        grade.excluded = (
            f"{name}: its sidecar says {method}, but the model holds no int8 layers (it runs in "
            "fp32): quantize it with Codes/quantize_model.py"
        )
        flags.append(grade.excluded)
        return grade
    grade.method = method if method in KNOWN_METHODS else "int8"
    grade.engine = engine if engine in engines.ENGINE_CHOICES else None
    grade.answers = _digest(result.get("answers_sha256"))
    parameters = result.get("parameters")
    grade.parameters = parameters if isinstance(parameters, int) and not isinstance(parameters, bool) else None
    grade.weights = (
        model_checks.archive_content_hash(path)
        if path.suffix.lower() in TORCH_SUFFIXES
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
        grade.speedup = base["latency_ms"]["median"] / measured["latency_ms"]["median"]
        grade.unstable = measured["unstable"]
        _check_claims(name, row, claimed, grade, tolerance, flags)
    elif claimed is not None:
        grade.top1, grade.top1_drop, grade.speedup = row["top1"], claimed["top1_drop"], claimed["speedup"]
    _give_points(grade, rubric)
    return grade


def _digest(value: object) -> str | None:
    """A sha256 the child reported, or None when it is not one."""
    return value if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) else None


def _check_claims(
    name: str, row: dict, claimed: dict | None, grade: ModelGrade, tolerance: dict, flags: list[str]
) -> None:
    """Flag claims that disagree with the re-measured numbers beyond the rubric's tolerance.

    Ratios against the report's own fp32 row are compared, not raw numbers:
    they carry over from the student's machine and images to the grader's.
    """
    points = tolerance["top1_points"]
    if claimed is not None and claimed["top1_drop"] is not None:
        if abs(claimed["top1_drop"] - grade.top1_drop) > points:
            flags.append(
                f"{name}: claimed top-1 drop {claimed['top1_drop']:+.1f} points, re-measured "
                f"{grade.top1_drop:+.1f} (tolerance {points:g})"
            )
    elif row["top1"] is not None and abs(row["top1"] - grade.top1) > points:  # no fp32 row: raw top-1
        flags.append(
            f"{name}: claimed top-1 {row['top1']:.1f} %, re-measured {grade.top1:.1f} % (tolerance {points:g} points)"
        )
    factor = tolerance["speedup_factor"]
    if claimed is not None and not 1 / factor <= claimed["speedup"] / grade.speedup <= factor:
        flags.append(
            f"{name}: claimed speed-up {claimed['speedup']:.2f}x, re-measured {grade.speedup:.2f}x "
            f"(tolerance x/÷ {factor:g})"
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


def _fingerprint(path: Path) -> str | None:
    """sha256 of a plain file of the submission, for copy detection; None for links and missing files."""
    if link_problem(path, path.name) or not path.is_file():
        return None
    return files.sha256_of(path)


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
        digest = _fingerprint(folder / label)
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
    for row in results:
        if row["file"] is None or row["file"] in listed:
            continue
        listed.add(row["file"])
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
    unlisted = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in MODEL_SUFFIXES and p.name not in listed)
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

    candidates = [m for m in graded if m.method != "fp32"]
    if runner.measure is None and candidates and reference is None:
        student.problems.append("without --remeasure, accuracy and speed points need the report's fp32 row")
    student.best = max(candidates, key=lambda m: m.total, default=None)
    if student.best is None:
        student.problems.append("no quantized model passed the checks: no accuracy, speed or size points")
    student.parts = [part for part in rubric["parts"] if part in present]
    student.missing = [part for part in rubric["parts"] if part not in present]
    weights = rubric["weights"]
    student.points = dict(student.best.points) if student.best else {"accuracy": 0.0, "speedup": 0.0, "size": 0.0}
    student.points["parts"] = weights["parts"] * len(student.parts) / max(1, len(rubric["parts"]))
    student.points["open"] = 0.0  # given by score_open_target, once the whole class is graded
    student.points["penalty"] = -rubric["penalty_per_flag"] * len(student.flags)
    student.score = round(max(0.0, sum(student.points.values())), 1)
    student.status = "flagged" if student.flags else "problems" if student.problems else "ok"
    return student


def ptq_table_complete(graded: list[ModelGrade]) -> bool:
    """Task 3's table: four static models, per-tensor/per-channel x MinMax/histogram, for one engine and one
    number of calibration photos, four distinct models (one file handed in four times is one model)."""
    cells: dict[tuple, dict[tuple[str, str], str]] = {}
    for model in graded:
        if model.method == "static" and model.granularity and model.observer and model.calibration_images:
            group = cells.setdefault((model.engine, model.calibration_images), {})
            # the observer changes activation scales only, so two of the four share their weights: models
            # are told apart by what they compute (one file re-saved with another sidecar computes the same)
            group.setdefault((model.granularity, model.observer), model.answers or model.sha256 or model.file)
    needed = len(config.GRANULARITIES) * len(config.OBSERVERS)
    return any(len(group) == needed and len(set(group.values())) == needed for group in cells.values())


def open_target_full_at(students: list[StudentGrade], rubric: dict) -> float | None:
    """The Pi speed-up that earns all the open target's points: the rubric's number, or the class's best.

    The class's best is taken over submissions that are not flagged: a forged file must not set the bar.
    """
    full_at = rubric["open"]["full_at"]
    if full_at != "best":
        return float(full_at)
    honest = [s.open_speedup for s in students if s.open_speedup is not None and s.status in ("ok", "problems")]
    best = max(honest, default=None)
    return best if best is not None and best > rubric["open"]["zero_at"] else None


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


def display_name(name: str) -> str:
    """A folder's name as the leaderboard shows it: the name itself when it follows the rule, else a safe stand-in."""
    if FOLDER_NAME.fullmatch(name):
        return name
    return "".join(ch if re.fullmatch(r"[A-Za-z0-9_-]", ch) else "?" for ch in name[:40]) or "?"


def folder_problem(folder: Path) -> str | None:
    """Why a student folder is not graded at all: a link, or a name outside the rule of labs/homework.md."""
    if folder.is_symlink():
        return "the student folder is a link (to another student's folder?): hand in a folder of your own"
    if not FOLDER_NAME.fullmatch(folder.name):
        return (
            "the folder name breaks the rule of labs/homework.md (letters, digits, '-' and '_', at most 64, "
            "starting with a letter or digit): rename it"
        )
    return None


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


def ranked(students: list[StudentGrade]) -> list[StudentGrade]:
    """Best score first; rejected submissions last; ties by name."""
    return sorted(students, key=lambda s: (s.status == "rejected", -s.score, s.student))


# ---- the leaderboard -------------------------------------------------------------

LEADERBOARD_COLUMNS = (
    "rank",
    "student",
    "score",
    "status",
    "numbers",
    "best_model",
    "method",
    "engine",
    "top1",
    "top1_drop",
    "speedup",
    "size_mb",
    "size_ratio",
    "points_accuracy",
    "points_speedup",
    "points_size",
    "points_parts",
    "points_open",
    "penalty",
    "parts",
    "missing_parts",
    "pi_fps",
    "pi_open_speedup",
    "reasons",
    "possible_copying",
)


def _rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def capped_reasons(reasons: list[str]) -> list[str]:
    """At most MAX_REASONS reasons, each one short line; the rest counted."""
    shown = [clean_text(reason, 300) for reason in reasons[:MAX_REASONS]]
    if len(reasons) > MAX_REASONS:
        shown.append(f"... and {len(reasons) - MAX_REASONS} more")
    return shown


def leaderboard_rows(students: list[StudentGrade]) -> list[dict]:
    """One dict per student, ranked, with the columns of leaderboard.csv."""
    rows = []
    for rank, student in enumerate(ranked(students), start=1):
        best = student.best
        points = student.points
        rows.append(
            {
                "rank": "-" if student.status == "rejected" else rank,
                "student": clean_text(student.student, 64),
                "score": student.score,
                "status": student.status,
                "numbers": student.numbers,
                "best_model": clean_text(best.file, 80) if best else None,
                "method": best.method if best else None,
                "engine": best.engine if best else None,
                "top1": _rounded(best.top1) if best else None,
                "top1_drop": _rounded(best.top1_drop) if best else None,
                "speedup": _rounded(best.speedup) if best else None,
                "size_mb": _rounded(best.size_mb, 3) if best else None,
                "size_ratio": _rounded(best.size_ratio) if best else None,
                **{
                    f"points_{key}": _rounded(points.get(key), 1)
                    for key in ("accuracy", "speedup", "size", "parts", "open")
                },
                "penalty": _rounded(points.get("penalty"), 1),
                "parts": " ".join(student.parts),
                "missing_parts": " ".join(student.missing),
                "pi_fps": _rounded(student.pi_fps, 1),
                "pi_open_speedup": _rounded(student.open_speedup),
                "reasons": " | ".join(capped_reasons(student.reasons)),
                "possible_copying": " | ".join(capped_reasons(student.copying)),
            }
        )
    return rows


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # spreadsheets run cells that start so as formulas


def csv_cell(value):
    """A CSV cell a spreadsheet shows as text: a leading formula character gets a ' in front."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and value != "-":  # "-": no rank, not a formula
        return "'" + value
    return value


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LEADERBOARD_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: csv_cell(value) for key, value in row.items()} for row in rows)
    return buffer.getvalue()


def md_text(value: object) -> str:
    """Student-controlled text for Markdown: one line, HTML escaped, and no table, link or code syntax."""
    text = html.escape(clean_text(value, 400), quote=False)  # < > & : no HTML tag can form
    for char in "\\`*[]|":  # code spans, emphasis, links and images, table cells
        text = text.replace(char, "\\" + char)
    return text


def _cell(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    return md_text(value)


def _notes_by_student(
    students: list[StudentGrade], notes_of: Callable[[StudentGrade], list[str]], with_status: bool
) -> list[str]:
    """Markdown bullets: each student with notes (ranked), their notes escaped and capped below; "None." if none."""
    lines = []
    for student in ranked(students):
        notes = notes_of(student)
        if notes:
            lines.append(f"- **{md_text(student.student)}**" + (f" ({student.status}):" if with_status else ":"))
            lines += [f"  - {md_text(note)}" for note in capped_reasons(notes)]
    return lines or ["None."]


def markdown_text(students: list[StudentGrade], header: list[str]) -> str:
    """The leaderboard as Markdown: the context, the ranking, then every submission's problems."""
    rows = leaderboard_rows(students)
    shown = (
        "rank",
        "student",
        "score",
        "status",
        "best_model",
        "method",
        "top1_drop",
        "speedup",
        "size_ratio",
        "parts",
        "pi_fps",
        "pi_open_speedup",
    )
    titles = (
        "rank",
        "student",
        "score",
        "status",
        "best model",
        "method",
        "top-1 drop (points)",
        "speed-up",
        "smaller",
        "parts",
        "Pi FPS",
        "open target: Pi x default",
    )
    lines = [
        "# Leaderboard",
        "",
        *(md_text(line) for line in header),
        "",
        "| " + " | ".join(titles) + " |",
        "|" + "---|" * len(titles),
    ]
    lines += ["| " + " | ".join(_cell(row[key]) for key in shown) + " |" for row in rows]
    lines += ["", "## Problems", "", *_notes_by_student(students, lambda student: student.reasons, with_status=True)]
    lines += [
        "",
        "## Possible copying",
        "",
        "Files byte-identical to another student's, or the same weights under another name. Deterministic "
        "quantization with the same seed and photos gives identical models; identical reports or Pi runs "
        "(they hold timings and times) deserve a look.",
        "",
    ]
    lines += _notes_by_student(students, lambda student: student.copying, with_status=False)
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
    for key, colour in (
        ("accuracy", "tab:green"),
        ("speedup", "tab:blue"),
        ("size", "tab:orange"),
        ("parts", "tab:purple"),
        ("open", "tab:cyan"),
    ):
        widths = [s.points.get(key, 0.0) for s in ordered]
        axes.barh(names, widths, left=left, color=colour, label=key)
        left = [a + b for a, b in zip(left, widths)]
    penalised = [(index, -s.points["penalty"]) for index, s in enumerate(ordered) if s.points.get("penalty")]
    if penalised:  # hatched over the points they took off
        axes.barh(
            [names[i] for i, _ in penalised],
            [width for _, width in penalised],
            left=[left[i] - width for i, width in penalised],
            color="none",
            edgecolor="tab:red",
            hatch="//",
            label="penalty (taken off)",
        )
    for index, student in enumerate(ordered):
        axes.text(
            max(left[index], 0) + 1,
            index,
            f"{student.score:g}" if student.status != "rejected" else "rejected",
            va="center",
            fontsize=8,
        )
    axes.invert_yaxis()  # rank 1 on top
    axes.set_xlabel("points")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7, loc="lower right")
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    try:
        files.atomic_write(path, lambda partial: figure.savefig(partial, format="png", dpi=110), "--output")
    finally:
        plt.close(figure)


def write_leaderboard(students: list[StudentGrade], output: Path, header: list[str]) -> list[Path]:
    """leaderboard.csv, leaderboard.md and leaderboard.png in ``output``, each written atomically."""
    rows = leaderboard_rows(students)
    paths = [output / "leaderboard.csv", output / "leaderboard.md", output / "leaderboard.png"]
    files.write_text(paths[0], csv_text(rows), "--output")
    markdown = markdown_text(students, header)
    files.write_text(paths[1], markdown, "--output")
    write_plot(students, paths[2], header[0].replace("; ", "\n") if header else "leaderboard")
    return paths


def _shown(value, spec: str, unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def format_summary(students: list[StudentGrade]) -> str:
    """The leaderboard as a text table for the terminal."""
    header = (
        f"{'rank':>4}  {'student':<16}{'score':>7}  {'status':<9}{'best model':<22}{'drop':>8}"
        f"{'faster':>10}{'smaller':>9}{'Pi open':>9}  {'parts':<34}{'problems':>8}"
    )
    lines = [header, "-" * len(header)]
    for row in leaderboard_rows(students):
        reasons = row["reasons"].count(" | ") + 1 if row["reasons"] else 0
        lines.append(
            f"{row['rank']:>4}  {row['student'][:15]:<16}{row['score']:>7.1f}  {row['status']:<9}"
            f"{(row['best_model'] or '-')[:21]:<22}{_shown(row['top1_drop'], '+.1f'):>8}"
            f"{_shown(row['speedup'], '.2f', 'x'):>10}{_shown(row['size_ratio'], '.2f', 'x'):>9}"
            f"{_shown(row['pi_open_speedup'], '.2f', 'x'):>9}  {row['parts'][:33]:<34}{reasons:>8}"
        )
    lines.append(
        "drop: top-1 points lost vs fp32; faster, smaller: vs fp32; Pi open: the open target's model-only FPS "
        "over the default model's, same Pi; problems: see leaderboard.md"
    )
    return "\n".join(lines)
