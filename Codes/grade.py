"""Grade the quantization homework: check every submission, score it by a rubric, write a leaderboard.

SUBMISSIONS_DIR holds one folder per student (the folder's name is the
student's name on the leaderboard), laid out as labs/homework.md asks:
benchmark.json, the model files it lists with their sidecar JSONs, pi_run.json and pi_open.json.

For each folder the grader validates benchmark.json, checks each model file's
sha256 against it, checks the file before loading it (zip bombs, code that
runs at load time, operators a classifier never needs), then loads and runs it
in a sandboxed child process with time, CPU and memory limits (bubblewrap
where installed; the output says which isolation is in use), re-measures its
size and, with --remeasure, its accuracy and latency on this machine, so that
everyone is compared on the same hardware against fp32 MobileNetV2 measured
the same way. Claims that disagree with the files or the re-measured numbers
beyond the rubric's tolerance are flagged; files identical across students
are listed under "Possible copying". A bad submission gets its reasons in the
leaderboard and never stops the run; Ctrl-C stops it and writes what was
graded. labs/instructor_guide.md explains the rubric, tolerances and limits.

Examples:
    python Codes/grade.py submissions/                                   # quick: checks + the students' claims
    python Codes/grade.py submissions/ --data test_photos/ --remeasure   # the numbers to publish
    python Codes/grade.py submissions/ --data photos/ --holdout 100 --remeasure --images 300
    python Codes/grade.py submissions/ --rubric my_rubric.yaml --output results/
"""

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from quantlab import bench, engines
from quantlab.errors import KitError, at_least, between, run_cli
from quantlab.grader import grading_machine, leaderboard, records, rubric, runner, sandbox, scoring

# ---- settings (command-line flags override them) -----------------------------
runs = 50  # timed batch-1 runs per model (with --remeasure)
warmup = 10  # untimed runs first
batch_size = 16  # images per batch when measuring accuracy
# -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("submissions", type=Path, metavar="SUBMISSIONS_DIR", help="one folder per student")
    parser.add_argument(
        "--data",
        type=Path,
        help="photos to measure accuracy on (flat ImageNet-sample layout or "
        "one folder per class); needed with --remeasure",
    )
    parser.add_argument(
        "--remeasure",
        action="store_true",
        help="measure accuracy and latency of every model here instead of trusting the claims",
    )
    parser.add_argument("--rubric", type=Path, help="a YAML rubric; its keys override configs/rubric.yaml")
    parser.add_argument("--output", type=Path, help="where the leaderboard files go (default: SUBMISSIONS_DIR)")
    parser.add_argument(
        "--holdout",
        type=int,
        default=None,
        help="evaluate on the images after the first N of a seeded shuffle of --data (the N "
        "the homework calibrated on; leave out for a private test folder)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the shuffle --holdout uses (as benchmark.py's)")
    parser.add_argument("--images", type=int, default=None, help="evaluate on at most N images")
    parser.add_argument("--runs", type=int, default=runs, help="timed runs per model")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed runs before timing")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    parser.add_argument(
        "--isolation",
        choices=("auto", "bwrap", "rlimits"),
        default=None,
        help="how each model runs: bwrap (bubblewrap sandbox), rlimits (child process with limits "
        f"only); default auto: bwrap where it works (or ${sandbox.ISOLATION_ENV})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds one model may take to load, run and be measured (default: 120, plus time "
        "per image and per run with --remeasure)",
    )
    parser.add_argument(
        "--memory-mb", type=int, default=sandbox.Limits.memory_mb, help="memory one model may use, in MB"
    )
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> list[Path]:
    """The student folders; a KitError for what argparse cannot check."""
    if not args.submissions.is_dir():
        raise KitError(
            f"submissions folder {args.submissions} does not exist; pass the folder holding one folder per student"
        )
    if args.remeasure and args.data is None:
        raise KitError("--remeasure needs --data FOLDER: the photos every model is measured on")
    for flag, value, least in (("--images", args.images, 1), ("--runs", args.runs, 1), ("--holdout", args.holdout, 1)):
        at_least(flag, value, least)
    at_least("--warmup", args.warmup, 0)
    between("--timeout", args.timeout, 1, 86400, " seconds")
    between("--memory-mb", args.memory_mb, 512, 1 << 20)
    # a link to a folder is listed too: the grader rejects it with its reason rather than grading a classmate's
    folders = sorted(
        p for p in args.submissions.iterdir() if (p.is_dir() or p.is_symlink()) and not p.name.startswith((".", "_"))
    )
    if not folders:
        raise KitError(
            f"{args.submissions} holds no student folders; each student's files go in a folder "
            "named after them (labs/homework.md)"
        )
    return folders


def measure_settings(args: argparse.Namespace, threads: int) -> runner.MeasureSettings | None:
    """With --remeasure, what every model is measured on (the photos are read once here to count them)."""
    if not args.remeasure:
        if args.data is not None:
            print("note: --data is only used with --remeasure; grading the students' claimed numbers")
        return None
    evaluation = bench.evaluation_dataset(args.data, 224, args.holdout, args.images, args.seed)
    print(
        f"re-measuring on this machine: {len(evaluation)} images from {args.data}, {args.runs} timed runs, "
        f"{threads} threads"
    )
    return runner.MeasureSettings(
        data=args.data,
        holdout=args.holdout,
        images=args.images,
        seed=args.seed,
        batch_size=batch_size,
        runs=args.runs,
        warmup=args.warmup,
        image_count=len(evaluation),
    )


def describe_baseline(baseline: runner.Baseline) -> str:
    measured = baseline.result
    numbers = f"top-1 {measured['top1']:.1f} %, median {measured['latency_ms']['median']:.2f} ms, " if measured else ""
    return f"baseline fp32 MobileNetV2 {numbers}{baseline.size_mb:.2f} MB"


def grade_all(
    folders: list[Path], marks: dict, baseline: runner.Baseline, models: runner.ModelRunner
) -> tuple[list[records.StudentGrade], bool]:
    """Every folder graded in turn (one broken submission never stops the others); True when Ctrl-C stopped it."""
    students = []
    try:
        for folder in tqdm(folders, desc="grading", unit="student"):
            try:
                students.append(scoring.grade_student(folder, marks, baseline, models))
            except (KitError, OSError, ValueError, TypeError, KeyError, AttributeError, ArithmeticError) as error:
                # its reason is ours, not an internal text
                reason = f"the grader could not read this submission ({type(error).__name__}); check its files"
                students.append(scoring.rejected(folder, marks, reason))
    except KeyboardInterrupt:  # the sandboxed child is killed already; keep what was graded
        return students, True
    return students, False


def leaderboard_header(
    args: argparse.Namespace,
    students: list[records.StudentGrade],
    folders: list[Path],
    interrupted: bool,
    marks: dict,
    open_full_at: float | None,
    models: runner.ModelRunner,
    baseline: runner.Baseline,
    threads: int,
) -> list[str]:
    """The lines above the ranking: what was measured where, the rubric, the open target's bar, the isolation."""
    measure = models.measure
    if measure:
        machine = bench.machine_info(threads, engine=None)
        mode = (
            f"re-measured on {machine['cpu']} ({threads} threads, torch {machine['torch']}), "
            f"{measure.image_count} images of {args.data}"
        )
    else:
        mode = "students' claimed numbers (run with --remeasure to measure them here)"
    stopped = f" (stopped by Ctrl-C: {len(students)} of {len(folders)} folders)" if interrupted else ""
    if open_full_at:
        best = " (the class's best)" if marks["open"]["full_at"] == "best" else ""
        open_line = f"all its points at {open_full_at:.2f}x the default model's Pi model-only FPS{best}"
    else:
        open_line = (
            f"no pi_open.json that counts beat the default model by more than {marks['open']['zero_at']:g}x: "
            "no points given"
        )
    header = [
        f"{len(students)} submissions graded{stopped}; numbers: {mode}",
        f"rubric: {args.rubric or rubric.DEFAULT_RUBRIC}; {describe_baseline(baseline)}",
        f"open target (pi_open.json): {open_line}",
        f"isolation: {sandbox.DESCRIPTIONS[models.isolation]}; limits per model {models.timeout:.0f} s, "
        f"{models.memory_mb} MB",
    ]
    header += grading_machine.header_lines(marks, measure.data if measure else None, students)  # issue 29
    # student names follow intake.FOLDER_NAME, so they are safe to print in the Markdown header
    unstable = [student.student for student in students if any(model.unstable for model in student.models)]
    if measure and (baseline.result["unstable"] or unstable):  # the instructor's machine, not the students
        header.append(
            "WARNING: unstable latencies (the machine was busy or changed speed) for "
            + ", ".join((["the fp32 baseline"] if baseline.result["unstable"] else []) + unstable[:10])
            + (f" and {len(unstable) - 10} more" if len(unstable) > 10 else "")
            + ": speed-ups are unreliable; grade again on a quiet machine"
        )
    return header


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = engines.set_threads(args.threads)  # first: a bad --threads is the user's, not a file's, problem
    folders = check_args(args)
    marks = rubric.load_rubric(args.rubric)
    isolation = sandbox.isolation(args.isolation)
    print(f"isolation: {sandbox.DESCRIPTIONS[isolation]}")
    engines.resolve_engine("auto")  # measured once here and cached: the children read the cache

    measure = measure_settings(args, threads)
    models = runner.ModelRunner(threads, measure, isolation, args.timeout, args.memory_mb)
    print(f"limits per model: {models.timeout:.0f} s, {args.memory_mb} MB")
    baseline = runner.Baseline.measure(models)
    print(describe_baseline(baseline))

    students, interrupted = grade_all(folders, marks, baseline, models)
    scoring.flag_copies(students)
    open_full_at = scoring.score_open_target(students, marks)

    header = leaderboard_header(args, students, folders, interrupted, marks, open_full_at, models, baseline, threads)
    paths = leaderboard.write_leaderboard(students, args.output or args.submissions, header)
    print(leaderboard.summary_table(students))
    print("\n".join(header))
    print(f"wrote {', '.join(map(str, paths))}")
    if interrupted:
        print("error: stopped by Ctrl-C; the leaderboard holds the folders graded so far", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    run_cli(main)
