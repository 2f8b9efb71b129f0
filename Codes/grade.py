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

from quantlab import bench, engines, grading, sandbox
from quantlab.errors import KitError, run_cli

# ---- settings (command-line flags override them) -----------------------------
runs = 50  # timed batch-1 runs per model (with --remeasure)
warmup = 10  # untimed runs first
batch_size = 16  # images per batch when measuring accuracy
# -------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
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
    return parser.parse_args()


def check_args(args: argparse.Namespace) -> list[Path]:
    """The student folders; a KitError for what argparse cannot check."""
    if not args.submissions.is_dir():
        raise KitError(
            f"submissions folder {args.submissions} does not exist; pass the folder holding one folder per student"
        )
    if args.remeasure and args.data is None:
        raise KitError("--remeasure needs --data FOLDER: the photos every model is measured on")
    for name in ("images", "runs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise KitError(f"--{name} must be at least 1, got {value}")
    if args.holdout is not None and args.holdout < 1:
        raise KitError(f"--holdout must be at least 1, got {args.holdout}")
    if args.warmup < 0:
        raise KitError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.timeout is not None and not 1 <= args.timeout <= 86400:
        raise KitError(f"--timeout must be between 1 and 86400 seconds, got {args.timeout:g}")
    if not 512 <= args.memory_mb <= 1 << 20:
        raise KitError(f"--memory-mb must be between 512 and 1048576, got {args.memory_mb}")
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


def main() -> int:
    args = parse_args()
    threads = engines.set_threads(args.threads)  # first: a bad --threads is the user's, not a file's, problem
    folders = check_args(args)
    rubric = grading.load_rubric(args.rubric)
    output = args.output or args.submissions
    isolation = sandbox.isolation(args.isolation)
    print(f"isolation: {sandbox.DESCRIPTIONS[isolation]}")
    engines.resolve_engine("auto")  # measured once here and cached: the children read the cache

    measure = None
    if args.remeasure:
        evaluation = bench.evaluation_dataset(args.data, 224, args.holdout, args.images, args.seed)
        measure = grading.MeasureSettings(
            data=args.data,
            holdout=args.holdout,
            images=args.images,
            seed=args.seed,
            batch_size=batch_size,
            runs=args.runs,
            warmup=args.warmup,
            image_count=len(evaluation),
        )
        print(
            f"re-measuring on this machine: {len(evaluation)} images from {args.data}, {args.runs} timed runs, "
            f"{threads} threads"
        )
    elif args.data is not None:
        print("note: --data is only used with --remeasure; grading the students' claimed numbers")
    runner = grading.ModelRunner(threads, measure, isolation, args.timeout, args.memory_mb)
    print(f"limits per model: {runner.timeout:.0f} s, {args.memory_mb} MB")
    baseline = grading.Baseline.measure(runner)
    about_baseline = (
        "baseline fp32 MobileNetV2 "
        + (
            f"top-1 {baseline.result['top1']:.1f} %, median {baseline.result['latency_ms']['median']:.2f} ms, "
            if baseline.result
            else ""
        )
        + f"{baseline.size_mb:.2f} MB"
    )
    print(about_baseline)

    students = []
    interrupted = False
    try:
        for folder in tqdm(folders, desc="grading", unit="student"):
            try:
                students.append(grading.grade_student(folder, rubric, baseline, runner))
            except (KitError, OSError, ValueError, TypeError, KeyError, AttributeError, ArithmeticError) as error:
                # one broken submission must not stop the others; its reason is ours, not an internal text
                students.append(
                    grading.rejected(
                        folder,
                        rubric,
                        f"the grader could not read this submission ({type(error).__name__}); check its files",
                    )
                )
    except KeyboardInterrupt:  # the sandboxed child is killed already; keep what was graded
        interrupted = True
    grading.flag_copies(students)
    open_full_at = grading.score_open_target(students, rubric)

    machine = bench.machine_info(threads, engine=None)
    mode = (
        f"re-measured on {machine['cpu']} ({threads} threads, torch {machine['torch']}), "
        f"{measure.image_count} images of {args.data}"
        if measure
        else "students' claimed numbers (run with --remeasure to measure them here)"
    )
    stopped = f" (stopped by Ctrl-C: {len(students)} of {len(folders)} folders)" if interrupted else ""
    header = [
        f"{len(students)} submissions graded{stopped}; numbers: {mode}",
        f"rubric: {args.rubric or grading.DEFAULT_RUBRIC}; {about_baseline}",
        "open target (pi_open.json): "
        + (
            f"all its points at {open_full_at:.2f}x the default model's Pi model-only FPS"
            + (" (the class's best)" if rubric["open"]["full_at"] == "best" else "")
            if open_full_at
            else f"no pi_open.json that counts beat the default model by more than {rubric['open']['zero_at']:g}x: "
            "no points given"
        ),
        f"isolation: {sandbox.DESCRIPTIONS[isolation]}; limits per model {runner.timeout:.0f} s, {args.memory_mb} MB",
    ]
    # student names follow grading.FOLDER_NAME, so they are safe to print in the Markdown header
    unstable = [student.student for student in students if any(model.unstable for model in student.models)]
    if measure and (baseline.result["unstable"] or unstable):  # the instructor's machine, not the students
        header.append(
            "WARNING: unstable latencies (the machine was busy or changed speed) for "
            + ", ".join((["the fp32 baseline"] if baseline.result["unstable"] else []) + unstable[:10])
            + (f" and {len(unstable) - 10} more" if len(unstable) > 10 else "")
            + ": speed-ups are unreliable; grade again on a quiet machine"
        )
    paths = grading.write_leaderboard(students, output, header)
    print(grading.format_summary(students))
    print("\n".join(header))
    print(f"wrote {', '.join(map(str, paths))}")
    if interrupted:
        print("error: stopped by Ctrl-C; the leaderboard holds the folders graded so far", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    run_cli(main)
