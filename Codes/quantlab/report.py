"""The benchmark report: its schema, checks, writers and table (every field: docs/benchmark_schema.md).

A report is a JSON-ready dict with schema ``quantlab.benchmark/1``:
``make_report(results, make_settings(...), bench.machine_info(...))``.
``validate_report`` checks one that a student hands in (the grader's first
step); ``write_csv(path, report)`` and ``write_plot(path, report)`` write it
atomically (the JSON: ``files.write_json(path, report)``), and ``format_table``
prints it, with ratios against the first model.
"""

from __future__ import annotations

import csv
import datetime
import io
import math
from pathlib import Path

from quantlab import files
from quantlab.errors import KitError

SCHEMA = "quantlab.benchmark/1"
SCHEMA_FAMILY = "quantlab.benchmark/"


def make_report(results: list[dict], settings: dict, machine: dict) -> dict:
    """The JSON document benchmark.py --json writes."""
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"schema": SCHEMA, "created": created, "machine": machine, "settings": settings, "results": results}


def make_settings(
    runs: int,
    warmup: int,
    input_size: int,
    data: str | Path | None,
    holdout: int | None,
    seed: int,
    threads: int,
    engine: str | None,
) -> dict:
    """The report's "settings": how every model was measured (latency is always batch 1)."""
    return {
        "runs": runs,
        "warmup": warmup,
        "batch_size": 1,
        "input_size": input_size,
        "data": str(data) if data is not None else None,
        "holdout": holdout,
        "seed": seed,
        "threads": threads,
        "engine": engine,
    }


def ratios(result: dict, baseline: dict) -> dict:
    """How ``result`` compares with ``baseline`` (the first model): x faster, x smaller, top-1 points lost."""
    drop = None
    if result.get("top1") is not None and baseline.get("top1") is not None:
        drop = round(baseline["top1"] - result["top1"], 2)
    return {
        "speedup": round(baseline["latency_ms"]["median"] / result["latency_ms"]["median"], 3),
        "size_ratio": round(baseline["size_mb"] / result["size_mb"], 3),
        "top1_drop": drop,
    }


# ---- validation (the grader) -------------------------------------------------------

_NUMBER = (int, float)
_OPTIONAL_STR = (str, type(None))
_OPTIONAL_INT = (int, type(None))
_OPTIONAL_NUMBER = (int, float, type(None))

MACHINE_FIELDS = {
    "cpu": str,
    "arch": str,
    "os": str,
    "python": str,
    "torch": str,
    "torchvision": str,
    "onnxruntime": _OPTIONAL_STR,
    "threads": int,
    "physical_cores": int,
    "engine": _OPTIONAL_STR,
}
SETTINGS_FIELDS = {
    "runs": int,
    "warmup": int,
    "batch_size": int,
    "input_size": int,
    "data": _OPTIONAL_STR,
    "holdout": _OPTIONAL_INT,
    "seed": int,
    "threads": int,
    "engine": _OPTIONAL_STR,
}
RESULT_FIELDS = {
    "name": str,
    "file": _OPTIONAL_STR,
    "path": _OPTIONAL_STR,
    "format": str,
    "runtime": str,
    "method": str,
    "engine": _OPTIONAL_STR,
    "sha256": _OPTIONAL_STR,
    "size_mb": _NUMBER,
    "parameters": _OPTIONAL_INT,
    "latency_ms": dict,
    "fps": _NUMBER,
    "top1": _OPTIONAL_NUMBER,
    "top5": _OPTIONAL_NUMBER,
    "images": _OPTIONAL_INT,
    "skipped": _OPTIONAL_INT,
}
# written by newer versions of the kit; a report without them is still valid
OPTIONAL_RESULT_FIELDS = {
    "unstable": _OPTIONAL_STR,
    "peak_rss_mb": _OPTIONAL_NUMBER,
    "recipe": _OPTIONAL_STR,
    "coverage": (dict, type(None)),
    "compile_s": _OPTIONAL_NUMBER,
}
COVERAGE_FIELDS = {"layers": int, "int8_layers": int, "float_layers": list, "int8_weight_mb": _NUMBER,
                   "float_weight_mb": _NUMBER}  # fmt: skip
FORMATS = ("torchvision", "state_dict", "torchscript", "onnx", "pt2", "python", "tflite", "pte")
RUNTIMES = ("pytorch", "onnxruntime", "litert", "executorch")


def _type_name(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


MAX_RESULTS = 50  # rows of a report: the homework has five models
MAX_STRING = 500  # characters of any text field (file names, CPU names, paths)
MAX_SIZE_MB = 1e5
MAX_LATENCY_MS = 1e7  # about 3 hours for one image: anything above is not a measurement
SIGNED_INTS = {"seed"}  # every other integer of the schema is a count


def _shown(value) -> str:
    """A value for a one-line problem, capped (reports come from students)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_fields(section: dict, fields: dict, where: str) -> list[str]:
    problems = []
    for key, types in fields.items():
        if key not in section:
            problems.append(f"{where}: missing field '{key}'")
            continue
        value = section[key]
        # bool is an int in Python, but true is not a thread count
        if isinstance(value, bool) or not isinstance(value, types):
            problems.append(f"{where}.{key}: expected {_type_name(types)}, got {type(value).__name__} {_shown(value)}")
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{where}.{key}: must be a finite number, got {value}")
        elif isinstance(value, int) and value < 0 and key not in SIGNED_INTS:
            problems.append(f"{where}.{key}: a count cannot be negative, got {value}")
        elif isinstance(value, str) and len(value) > MAX_STRING:
            problems.append(f"{where}.{key}: over {MAX_STRING} characters")
    return problems


def _check_result(result: dict, where: str, has_data: bool) -> list[str]:
    problems = _check_fields(result, RESULT_FIELDS, where)
    problems += _check_fields(
        result, {key: types for key, types in OPTIONAL_RESULT_FIELDS.items() if key in result}, where
    )
    if not problems and isinstance(result.get("coverage"), dict):
        problems += _check_fields(result["coverage"], COVERAGE_FIELDS, f"{where}.coverage")
        if not problems and result["coverage"]["int8_layers"] > result["coverage"]["layers"]:
            problems.append(f"{where}.coverage: int8_layers is more than layers")
    if problems:
        return problems
    if result["format"] not in FORMATS:
        problems.append(f"{where}.format: '{result['format']}' is not one of {', '.join(FORMATS)}")
    if result["runtime"] not in RUNTIMES:
        problems.append(f"{where}.runtime: '{result['runtime']}' is not one of {', '.join(RUNTIMES)}")
    if not 0 < result["size_mb"] <= MAX_SIZE_MB:
        problems.append(f"{where}.size_mb: must be positive and at most {MAX_SIZE_MB:g}, got {result['size_mb']}")
    if result["fps"] <= 0:
        problems.append(f"{where}.fps: must be positive, got {result['fps']}")
    latency = result["latency_ms"]
    for key in ("median", "p90", "mean"):
        value = latency.get(key)
        if isinstance(value, bool) or not isinstance(value, _NUMBER):
            problems.append(f"{where}.latency_ms.{key}: expected a number of milliseconds, got {_shown(value)}")
        elif not 0 < value <= MAX_LATENCY_MS:  # NaN fails this too
            problems.append(f"{where}.latency_ms.{key}: must be positive and at most {MAX_LATENCY_MS:g}, got {value}")
    if not any(p.startswith((f"{where}.latency_ms", f"{where}.fps")) for p in problems):
        if latency["p90"] < latency["median"]:
            problems.append(f"{where}.latency_ms: p90 {latency['p90']} is below the median {latency['median']}")
        # fps is written rounded to 0.01: at under 1 FPS (a loaded machine) that rounding alone exceeds 1 %
        if not math.isclose(result["fps"], 1e3 / latency["median"], rel_tol=0.01, abs_tol=0.006):
            problems.append(
                f"{where}.fps: {result['fps']} is not 1000 / median latency ({1e3 / latency['median']:.2f})"
            )
    for key in ("top1", "top5"):
        value = result[key]
        if value is not None and not 0 <= value <= 100:
            problems.append(f"{where}.{key}: a percentage must lie in 0..100, got {value}")
        if (value is None) == has_data:
            problems.append(
                f"{where}.{key}: must be "
                + ("a number when settings.data is set" if has_data else "null when settings.data is null")
            )
    if result["top1"] is not None and result["top5"] is not None and result["top5"] < result["top1"]:
        problems.append(f"{where}: top5 {result['top5']} is below top1 {result['top1']}")
    if has_data and (result["images"] is None or result["images"] < 1):
        problems.append(f"{where}.images: must be at least 1 when settings.data is set, got {result['images']}")
    return problems


def validate_report(report: dict) -> list[str]:
    """Problems with a benchmark report, one human-readable line each; [] when it is valid."""
    if not isinstance(report, dict):
        return [f"the report must be a JSON object, got {type(report).__name__}"]
    schema = report.get("schema")
    if schema != SCHEMA:
        if isinstance(schema, str) and schema.startswith(SCHEMA_FAMILY):
            return [
                f"schema '{schema[:40]}' is another version than this kit reads ('{SCHEMA}'); "
                "rerun benchmark.py from this kit"
            ]
        return [f"schema: expected '{SCHEMA}', got {_shown(schema)}: not a quantlab benchmark report"]
    problems = _check_fields(report, {"created": str, "machine": dict, "settings": dict, "results": list}, "report")
    if problems:
        return problems
    try:
        datetime.datetime.strptime(report["created"], "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        problems.append(f"report.created: expected UTC time like 2026-11-26T01:30:00Z, got {_shown(report['created'])}")
    problems += _check_fields(report["machine"], MACHINE_FIELDS, "machine")
    problems += _check_fields(report["settings"], SETTINGS_FIELDS, "settings")
    if not report["results"]:
        problems.append("results: empty; a report holds at least one model")
    if len(report["results"]) > MAX_RESULTS:
        return problems + [
            f"results: {len(report['results'])} rows, over the {MAX_RESULTS} a report may hold; "
            "benchmark only the models you hand in"
        ]
    has_data = report["settings"].get("data") is not None
    for index, result in enumerate(report["results"]):
        where = f"results[{index}]"
        if not isinstance(result, dict):
            problems.append(f"{where}: expected an object, got {type(result).__name__}")
        else:
            problems += _check_result(result, where, has_data)
    return problems


# ---- output files (written atomically: a failed run leaves no half-written file) --------------


CSV_COLUMNS = (
    "name",
    "path",
    "format",
    "runtime",
    "method",
    "recipe",
    "engine",
    "size_mb",
    "parameters",
    "latency_median_ms",
    "latency_p90_ms",
    "latency_mean_ms",
    "fps",
    "top1",
    "top5",
    "images",
    "skipped",
    "speedup_vs_first",
    "size_ratio_vs_first",
    "top1_drop_vs_first",
    "threads",
    "cpu",
    "sha256",
    "peak_rss_mb",
    "unstable",
)


def csv_text(report: dict) -> str:
    """One row per model, with the ratios against the first model and the machine in every row."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    first = report["results"][0]
    for result in report["results"]:
        compared = ratios(result, first)
        latency = result["latency_ms"]
        writer.writerow(
            {
                **{key: result[key] for key in CSV_COLUMNS if key in result},
                "latency_median_ms": latency["median"],
                "latency_p90_ms": latency["p90"],
                "latency_mean_ms": latency["mean"],
                "speedup_vs_first": compared["speedup"],
                "size_ratio_vs_first": compared["size_ratio"],
                "top1_drop_vs_first": compared["top1_drop"],
                "threads": report["settings"]["threads"],
                "cpu": report["machine"]["cpu"],
            }
        )
    return buffer.getvalue()


def write_csv(path: Path, report: dict) -> None:
    """Write the results as CSV, atomically."""
    files.write_text(path, csv_text(report), "--csv")


def write_plot(path: Path, report: dict) -> None:
    """Top-1 accuracy against median latency, marker area proportional to size on disk; atomic PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed (CI, ssh on a Pi)
    import matplotlib.pyplot as plt

    results = report["results"]
    if any(r["top1"] is None for r in results):
        raise KitError("the plot needs accuracy: pass --data FOLDER with --plot")
    largest = max(r["size_mb"] for r in results)
    figure, axes = plt.subplots(figsize=(9, 4.5))
    for result in results:
        axes.scatter(
            result["latency_ms"]["median"],
            result["top1"],
            s=1500 * result["size_mb"] / largest,
            alpha=0.6,
            label=f"{result['name']} ({result['size_mb']:.1f} MB)",
        )
    machine, settings = report["machine"], report["settings"]
    axes.set_xlabel("median batch-1 latency (ms, lower is better)")
    axes.set_ylabel(f"top-1 accuracy (%) on {results[0]['images']} images")
    axes.set_title(
        f"{machine['cpu']}, {settings['threads']} threads, torch {machine['torch']}\nmarker area = size on disk",
        fontsize=9,
    )
    axes.margins(0.25)
    axes.set_xlim(left=0)  # latency starts at zero: the gaps between models read as ratios
    axes.grid(alpha=0.3)
    # a legend rather than labels beside the markers: models of equal speed and accuracy would overlap
    legend = axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    for handle in legend.legend_handles:
        handle.set_sizes([40])
    figure.tight_layout()
    try:
        files.atomic_write(path, lambda partial: figure.savefig(partial, format="png", dpi=120), "--plot")
    finally:
        plt.close(figure)


def format_table(report: dict) -> str:
    """The results as a text table, ratios against the first model, the machine in the header."""
    machine, settings = report["machine"], report["settings"]
    lines = [
        f"machine: {machine['cpu']} ({machine['arch']}), {settings['threads']} threads "
        f"({machine['physical_cores']} physical cores), torch {machine['torch']}, engine {settings['engine']}"
        + (f", int8: {machine['int8_isa_note']}" if machine.get("int8_isa_note") else ""),
        f"latency: batch 1, {settings['input_size']}x{settings['input_size']}, {settings['runs']} runs after "
        f"{settings['warmup']} warm-up",
    ]
    header = (
        f"{'model':<24}{'format':<12}{'method':<8}{'engine':<8}{'MB':>7}{'params':>11}{'median ms':>11}"
        f"{'p90 ms':>9}{'mean ms':>9}{'FPS':>8}{'top-1':>7}{'top-5':>7}{'faster':>8}{'smaller':>8}{'top-1 drop':>11}"
        f"{'peak MB':>9}  recipe"
    )
    lines += [header, "-" * len(header)]
    first = report["results"][0]

    def shown(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for result in report["results"]:
        compared = ratios(result, first)
        latency = result["latency_ms"]
        lines.append(
            f"{result['name'][:23]:<24}{result['format']:<12}{result['method'][:7]:<8}{shown(result['engine'], 's'):<8}"
            f"{result['size_mb']:>7.2f}{shown(result['parameters'], ',d'):>11}"
            f"{('!' if result.get('unstable') else '') + format(latency['median'], '.2f'):>11}"
            f"{latency['p90']:>9.2f}{latency['mean']:>9.2f}{result['fps']:>8.1f}{shown(result['top1'], '.1f'):>7}"
            f"{shown(result['top5'], '.1f'):>7}{compared['speedup']:>7.2f}x{compared['size_ratio']:>7.2f}x"
            f"{shown(compared['top1_drop'], '+.1f'):>11}{shown(result.get('peak_rss_mb'), '.0f'):>9}"
            f"  {result.get('recipe') or '-'}"
        )
    if first["images"] is not None:
        skipped = first["skipped"]
        lines.append(
            f"accuracy on {first['images']} images from {settings['data']}"
            + (f" (holdout: after the first {settings['holdout']})" if settings["holdout"] else "")
            + (f"; {skipped} unreadable files skipped" if skipped else "")
        )
    lines.append(
        f"ratios against the first model ({first['name']}): faster = its median / this median, "
        "smaller = its size / this size, top-1 drop in percentage points; peak MB: the process's peak "
        "resident memory while that model ran (every model loaded so far included)"
    )
    unstable = [result for result in report["results"] if result.get("unstable")]
    for result in unstable:
        lines.append(f"! UNSTABLE latency of {result['name']}: {result['unstable']}")
    return "\n".join(lines)
