"""Time the grader on a synthetic honest class: N students x 3 distinct models each (issue #28).

Builds the class once, outside the repo (default /tmp/class30; kept and reused), the way
labs/homework.md asks students to: three static models per student made by
Codes/quantize_model.py (per-channel histogram, per-tensor MinMax, per-channel MinMax,
each calibrated on a seeded draw of 8 photos: distinct files), one benchmark.json per
student with benchmark.py's rows for the fp32 model and the three files. Then it times
Codes/grade.py on it, quick and --remeasure, --jobs 1 and 2, for this checkout and
(with --before) another checkout of the kit, back to back, and prints a table with the
machine and its load: the figures mean something only next to them.

Examples:
    python tools/grading_class.py                                   # build /tmp/class30 if needed, time this kit
    python tools/grading_class.py --before ../kit-0.2.0             # and an older checkout's grader, back to back
    python tools/grading_class.py --students 10 --modes quick --jobs 1 2
    python tools/grading_class.py --build-only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Codes"))

from quantlab.assets import FLOAT_WEIGHTS, IMAGENET_SAMPLE, assets_dir  # noqa: E402

# ---- settings (command-line flags override them) -----------------------------
students = 30
recipes = (("per_channel", "histogram"), ("per_tensor", "minmax"), ("per_channel", "minmax"))  # 3 models each
calib_images = 8
# what --remeasure measures on (the sample photos after the calibration ones)
remeasure_args = ("--holdout", "8", "--images", "32", "--runs", "20", "--warmup", "5")
# -------------------------------------------------------------------------------


def student_name(index: int) -> str:
    return f"student{index:03d}"


def build_class(folder: Path, count: int, photos: Path, weights: Path) -> None:
    """``count`` student folders in ``folder``, each with 3 models, their sidecars and a benchmark.json."""
    import benchmark
    import quantize_model

    if (folder / "done.json").is_file() and json.loads((folder / "done.json").read_text())["students"] >= count:
        print(f"reusing the class in {folder}")
        return
    made = folder.parent / f"{folder.name}-made"
    made.mkdir(parents=True, exist_ok=True)
    models = []
    started = time.monotonic()
    for index in range(count):
        for number, (granularity, observer) in enumerate(recipes):
            path = made / f"{student_name(index)}_m{number}.pt"
            models.append(path)
            if path.is_file() and path.with_suffix(".json").is_file():
                continue
            quantize_model.main(
                ["--model", str(weights), "--output", str(path), "--engine", "x86", "--granularity", granularity,
                 "--observer", observer, "--calib-data", str(photos), "--calib-images", str(calib_images),
                 "--seed", str(1000 * number + index), "--threads", "2"]
            )  # fmt: skip
    print(f"built {len(models)} models in {time.monotonic() - started:.0f} s")
    report = made / f"benchmark-{count}.json"
    if not report.is_file():
        model_args = [arg for path in models for arg in ("--model", str(path))]
        sys.argv = ["benchmark.py"]  # benchmark.main reads its flags from sys.argv
        sys.argv += (
            ["--model", "mobilenet_v2", *model_args, "--data", str(photos), "--holdout", str(calib_images),
             "--images", "16", "--runs", "2", "--warmup", "1", "--threads", "2", "--json", str(report)]
        )  # fmt: skip
        benchmark.main()
    document = json.loads(report.read_text())
    rows = {row["file"]: row for row in document["results"]}
    for index in range(count):
        student = folder / student_name(index)
        shutil.rmtree(student, ignore_errors=True)
        student.mkdir(parents=True)
        mine = [made / f"{student_name(index)}_m{number}.pt" for number in range(len(recipes))]
        for path in mine:
            shutil.copy(path, student / path.name)
            shutil.copy(path.with_suffix(".json"), student / path.with_suffix(".json").name)
        own = {**document, "results": [rows[None]] + [rows[path.name] for path in mine]}
        (student / "benchmark.json").write_text(json.dumps(own, indent=1))
    (folder / "done.json").write_text(json.dumps({"students": count}))
    print(f"class of {count} students in {folder}")


def subset(folder: Path, count: int) -> Path:
    """The first ``count`` students as a class of their own (hard links: no copies, and no symlinks to refuse)."""
    names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if count >= len(names):
        return folder
    part = folder.parent / f"{folder.name}-first{count}"
    if not part.is_dir():
        for name in names[:count]:
            shutil.copytree(folder / name, part / name, copy_function=os.link)
    return part


def time_grader(kit: Path, submissions: Path, mode: str, jobs: int, photos: Path, output: Path) -> tuple[float, int]:
    """Wall seconds of one grade.py run of ``kit`` (its own quantlab), and its exit code."""
    command = [sys.executable, str(kit / "Codes" / "grade.py"), str(submissions), "--output", str(output)]
    command += ["--threads", "2"]
    if jobs != 1:
        command += ["--jobs", str(jobs)]
    if mode == "remeasure":
        command += ["--remeasure", "--data", str(photos), *remeasure_args]
    env = {**os.environ, "PYTHONPATH": str(kit / "Codes")}
    started = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        print(f"  {kit.name} {mode} --jobs {jobs}: exit {result.returncode}: {result.stderr.strip()[-300:]}")
    return seconds, result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--class-dir", type=Path, default=Path("/tmp/class30"), help="where the class is built")
    parser.add_argument("--students", type=int, default=students, help="students to time (the first N)")
    parser.add_argument(
        "--before",
        type=Path,
        help="another checkout of the kit to time too; a kit from before the per-student child (0.2.0) "
        "imports the installed quantlab in its sandbox: run it from the checkout the venv was installed from",
    )
    parser.add_argument("--modes", nargs="+", choices=("quick", "remeasure"), default=["quick", "remeasure"])
    parser.add_argument("--jobs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--build-only", action="store_true")
    args = parser.parse_args()
    photos, weights = assets_dir() / IMAGENET_SAMPLE, assets_dir() / FLOAT_WEIGHTS
    build_class(args.class_dir, args.students, photos, weights)
    if args.build_only:
        return 0
    submissions = subset(args.class_dir, args.students)
    kits = [("after", REPO)] + ([("before", args.before.resolve())] if args.before else [])
    rows = []
    load_before = os.getloadavg()
    for mode in args.modes:
        for jobs in args.jobs:
            for label, kit in kits:  # back to back: the same load for both
                if jobs != 1 and "--jobs" not in (kit / "Codes" / "grade.py").read_text():
                    rows.append((label, mode, jobs, None, None))
                    continue
                output = Path(f"/tmp/grading_class_board_{label}_{mode}_{jobs}")
                seconds, code = time_grader(kit, submissions, mode, jobs, photos, output)
                rows.append((label, mode, jobs, seconds, code))
                print(f"  {label:6} {mode:9} --jobs {jobs}: {seconds:7.1f} s (exit {code})", flush=True)
    load_after = os.getloadavg()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"\n{args.students} students x {len(recipes)} models, {submissions}")
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, {platform.machine()}; grade.py --threads 2")
    print(f"load average (1 min) at start {load_before[0]:.1f}, at end {load_after[0]:.1f}: other work shares the CPUs")
    print(f"--remeasure with --data {photos.name} {' '.join(remeasure_args)}\n")
    print(
        "| kit    | mode      | --jobs | seconds | s/student |\n|--------|-----------|--------|---------|-----------|"
    )
    for label, mode, jobs, seconds, code in rows:
        shown = "n/a (no --jobs)" if seconds is None else f"{seconds:.0f}" + ("" if code == 0 else f" (exit {code})")
        per = "" if seconds is None else f"{seconds / args.students:.1f}"
        print(f"| {label:6} | {mode:9} | {jobs:6} | {shown:7} | {per:9} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
