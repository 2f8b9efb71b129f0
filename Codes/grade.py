"""Grade the quantization homework: check every submission, score it by a rubric, write a leaderboard.

SUBMISSIONS_DIR holds one folder per student (the folder's name is the
student's name on the leaderboard), laid out as labs/homework.md asks:
benchmark.json, the model files it lists with their sidecar JSONs, pi_run.json and pi_open.json.

For each folder the grader validates benchmark.json, checks each model file's
sha256 against it, checks the file before loading it (zip bombs, code that
runs at load time, operators a classifier never needs), then loads and runs
the student's models in one sandboxed child process with time, CPU and memory
limits per model (bubblewrap where installed; the output says which isolation
is in use), re-measures their size and, with --remeasure, their accuracy and
latency on this machine, so that everyone is compared on the same hardware
against fp32 MobileNetV2 measured the same way. Claims that disagree with the
files or the re-measured numbers beyond the rubric's tolerance are flagged;
files identical across students are listed under "Possible copying". A bad
submission gets its reasons in the leaderboard and never stops the run;
Ctrl-C stops it and writes what was graded. labs/instructor_guide.md explains
the rubric, tolerances and limits.

A large class: --jobs N grades N students at once (the threads are split
between them); --shard I/N on each of N machines grades every N-th folder and
writes shard-I-of-N.json, and --merge puts the shards together into the
leaderboard one run would write. Numbers to publish (--remeasure) want
--jobs 1 on a quiet machine: students measured side by side slow each other.

Examples:
    python Codes/grade.py submissions/                                   # quick: checks + the students' claims
    python Codes/grade.py submissions/ --jobs 2                          # two students at a time
    python Codes/grade.py submissions/ --data test_photos/ --remeasure   # the numbers to publish
    python Codes/grade.py submissions/ --data photos/ --holdout 100 --remeasure --images 300
    python Codes/grade.py submissions/ --rubric my_rubric.yaml --output results/
    python Codes/grade.py submissions/ --shard 2/3 --output shards/      # on machine 2 of 3
    python Codes/grade.py --merge shards/shard-*-of-3.json --output results/
"""

import argparse
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

import quantlab
from quantlab import bench, engines
from quantlab.errors import KitError, at_least, between, run_cli
from quantlab.grader import grading_machine, leaderboard, records, rubric, runner, sandbox, scoring, shards

# ---- settings (command-line flags override them) -----------------------------
runs = 50  # timed batch-1 runs per model (with --remeasure)
warmup = 10  # untimed runs first
batch_size = 16  # images per batch when measuring accuracy
jobs = 1  # students graded at once
# -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("submissions", type=Path, nargs="?", metavar="SUBMISSIONS_DIR", help="one folder per student")
    parser.add_argument(
        "--data",
        type=Path,
        help="photos to measure accuracy on (flat ImageNet-sample layout or "
        "one folder per class); needed with --remeasure",
    )
    parser.add_argument(
        "--remeasure",
        action="store_true",
        help="measure accuracy and latency of every model here instead of trusting the claims "
        "(numbers to publish: --jobs 1 on a quiet machine)",
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
    parser.add_argument("--threads", type=int, default=None, help="CPU threads in all (default: physical cores)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=jobs,
        help="students graded at once, each with --threads / N threads (default 1). With --remeasure at most "
        "--threads, and the students measured side by side slow each other: publish numbers from --jobs 1",
    )
    parser.add_argument(
        "--shard",
        metavar="I/N",
        help="grade only every N-th student folder (sorted by name), starting at the I-th, and write "
        "shard-I-of-N.json to --output for --merge (one shard per machine)",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="SHARD_FILE",
        help="write the leaderboard of the N shard files of one run (needs --output)",
    )
    parser.add_argument(
        "--isolation",
        choices=("auto", "bwrap", "rlimits"),
        default=None,
        help="how each student's models run: bwrap (bubblewrap sandbox), rlimits (child process with limits "
        f"only); default auto: bwrap where it works (or ${sandbox.ISOLATION_ENV})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds one model may take to load, run and be measured (default: 120, plus time "
        f"per image and per run with --remeasure); a student's models get {scoring.STUDENT_BUDGET_TIMEOUTS:g} x "
        "that in all",
    )
    parser.add_argument(
        "--memory-mb", type=int, default=sandbox.Limits.memory_mb, help="memory one model may use, in MB"
    )
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> list[Path]:
    """The student folders to grade (this shard's share); a KitError for what argparse cannot check."""
    if args.submissions is None:
        raise KitError("pass SUBMISSIONS_DIR, the folder holding one folder per student (or --merge SHARD_FILES)")
    if not args.submissions.is_dir():
        raise KitError(
            f"submissions folder {args.submissions} does not exist; pass the folder holding one folder per student"
        )
    if args.remeasure and args.data is None:
        raise KitError("--remeasure needs --data FOLDER: the photos every model is measured on")
    for flag, value, least in (("--images", args.images, 1), ("--runs", args.runs, 1), ("--holdout", args.holdout, 1)):
        at_least(flag, value, least)
    at_least("--warmup", args.warmup, 0)
    between("--jobs", args.jobs, 1, 256)
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


def threads_per_job(args: argparse.Namespace, threads: int) -> int:
    """Each of --jobs N students gets threads // N threads; measured students each need a core of their own."""
    if args.remeasure and args.jobs > threads:
        raise KitError(
            f"--remeasure with --jobs {args.jobs} needs a thread per job: use --jobs {threads} at most "
            f"(--threads {threads}), or --jobs 1 for the numbers to publish"
        )
    return max(1, threads // args.jobs)


def measure_settings(args: argparse.Namespace, threads: int) -> runner.MeasureSettings | None:
    """With --remeasure, what every model is measured on (the photos are read once here to count them)."""
    if not args.remeasure:
        if args.data is not None:
            print("note: --data is only used with --remeasure; grading the students' claimed numbers")
        return None
    evaluation = bench.evaluation_dataset(args.data, 224, args.holdout, args.images, args.seed)
    at_once = f", {args.jobs} students at a time" if args.jobs > 1 else ""
    print(
        f"re-measuring on this machine: {len(evaluation)} images from {args.data}, {args.runs} timed runs, "
        f"{threads} threads{at_once}"
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


def describe_baseline(baseline: dict) -> str:
    measured = baseline["result"]
    numbers = f"top-1 {measured['top1']:.1f} %, median {measured['latency_ms']['median']:.2f} ms, " if measured else ""
    return f"baseline fp32 MobileNetV2 {numbers}{baseline['size_mb']:.2f} MB"


# the grader's own checks run one student at a time (with --jobs only the sandboxed children run side by
# side): they are quick, and Python 3.11's ast.parse, which reads TorchScript code, is not thread-safe
checking = threading.Lock()


def grade_folder(
    folder: Path, marks: dict, baseline: runner.Baseline, models: runner.ModelRunner
) -> records.StudentGrade:
    """One student: the checks find the models to run, one sandboxed child runs them all, then the scoring."""
    student_models = runner.StudentModels(models, scoring.STUDENT_BUDGET_TIMEOUTS)
    try:
        with checking:
            scoring.grade_student(folder, marks, baseline, student_models)  # collects what the checks let through
        student_models.run()
        with checking:
            return scoring.grade_student(folder, marks, baseline, student_models)
    except (KitError, OSError, ValueError, TypeError, KeyError, AttributeError, ArithmeticError) as error:
        # its reason is ours, not an internal text
        reason = f"the grader could not read this submission ({type(error).__name__}); check its files"
        return scoring.rejected(folder, marks, reason)


def grade_all(
    folders: list[Path], marks: dict, baseline: runner.Baseline, models: runner.ModelRunner, jobs: int
) -> tuple[list[records.StudentGrade], bool]:
    """Every folder graded, ``jobs`` at a time (one broken submission never stops the others), in folder order;
    True when Ctrl-C stopped it."""
    graded: dict[int, records.StudentGrade] = {}
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="grade")
    try:
        futures = {pool.submit(grade_folder, folder, marks, baseline, models): i for i, folder in enumerate(folders)}
        for future in tqdm(as_completed(futures), total=len(folders), desc="grading", unit="student"):
            graded[futures[future]] = future.result()
    except KeyboardInterrupt:  # the sandboxed children are killed; keep what was graded
        sandbox.stop_all()
        pool.shutdown(wait=True, cancel_futures=True)
        return [graded[i] for i in sorted(graded)], True
    pool.shutdown()
    return [graded[i] for i in range(len(folders))], False


def class_run(
    args: argparse.Namespace,
    folders: list[Path],
    graded: list[Path],
    students: list[records.StudentGrade],
    interrupted: bool,
    marks: dict,
    models: runner.ModelRunner,
    baseline: runner.Baseline,
    threads: int,
) -> shards.ClassRun:
    """What this run graded and with what: all a leaderboard needs, now or after merging shards."""
    measure = models.measure
    machine = bench.machine_info(threads, engine=None)
    settings = {
        "kit": quantlab.__version__,
        "torch": machine["torch"],
        "rubric": marks,
        "measure": None if measure is None else {**asdict(measure), "data": str(measure.data)},
        "isolation": models.isolation,
        "timeout": models.timeout,
        "memory_mb": models.memory_mb,
        # what the measured numbers mean (quick grading's results do not depend on them)
        "threads": models.threads if measure else None,
        "jobs": args.jobs if measure else 1,  # students measured side by side
    }
    return shards.ClassRun(
        settings=settings,
        shown={"rubric": str(args.rubric or rubric.DEFAULT_RUBRIC), "machine": machine["cpu"] if measure else None},
        folders=[folder.name for folder in folders],
        shard=list(shards.parse_shard(args.shard)) if args.shard else [1, 1],
        graded=len(graded),
        interrupted=interrupted,
        baseline=asdict(baseline),
        students=students,
    )


def leaderboard_header(run: shards.ClassRun, open_full_at: float | None) -> list[str]:
    """The lines above the ranking: what was measured where, the rubric, the open target's bar, the isolation."""
    settings, marks, baseline = run.settings, run.settings["rubric"], run.baseline
    students, measure = run.students, run.settings["measure"]
    if measure:
        machines = sorted({machine for machine in run.shown.get("machines", [run.shown["machine"]])})
        at_once = f", {settings['jobs']} students at a time" if settings["jobs"] > 1 else ""
        mode = (
            f"re-measured on {' and '.join(machines)} ({settings['threads']} threads{at_once}, torch "
            f"{settings['torch']}), {measure['image_count']} images of {measure['data']}"
        )
    else:
        mode = "students' claimed numbers (run with --remeasure to measure them here)"
    stopped = f" (stopped by Ctrl-C: {len(students)} of {run.graded} folders)" if run.interrupted else ""
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
        f"rubric: {run.shown['rubric']}; {describe_baseline(baseline)}",
        f"open target (pi_open.json): {open_line}",
        f"isolation: {sandbox.DESCRIPTIONS[settings['isolation']]}; limits per model {settings['timeout']:.0f} s, "
        f"{settings['memory_mb']} MB",
    ]
    header += grading_machine.header_lines(marks, Path(measure["data"]) if measure else None, students)
    # student names follow intake.FOLDER_NAME, so they are safe to print in the Markdown header
    unstable = [student.student for student in students if any(model.unstable for model in student.models)]
    if measure and (baseline["result"]["unstable"] or unstable):  # the instructor's machine, not the students
        header.append(
            "WARNING: unstable latencies (the machine was busy or changed speed) for "
            + ", ".join((["the fp32 baseline"] if baseline["result"]["unstable"] else []) + unstable[:10])
            + (f" and {len(unstable) - 10} more" if len(unstable) > 10 else "")
            + ": speed-ups are unreliable; grade again on a quiet machine"
        )
    if measure and settings["jobs"] > 1:
        header.append(
            f"NOTE: {settings['jobs']} students were measured at a time: their latencies include each other's load; "
            "publish speed-ups measured with --jobs 1"
        )
    return header


def publish(run: shards.ClassRun, output: Path) -> int:
    """The class-wide steps over every student, then the leaderboard files and the summary."""
    students = run.students
    marks = run.settings["rubric"]
    scoring.flag_copies(students)
    open_full_at = scoring.score_open_target(students, marks)
    header = leaderboard_header(run, open_full_at)
    paths = leaderboard.write_leaderboard(students, output, header)
    print(leaderboard.summary_table(students))
    print("\n".join(header))
    print(f"wrote {', '.join(map(str, paths))}")
    if run.interrupted:
        print("error: stopped by Ctrl-C; the leaderboard holds the folders graded so far", file=sys.stderr)
        return 130
    return 0


def merge_shards(args: argparse.Namespace) -> int:
    """--merge: the shards of one run, checked and put together, then the leaderboard one run would write."""
    if args.submissions is not None or args.shard:
        raise KitError("--merge takes shard files only: leave out SUBMISSIONS_DIR and --shard")
    if args.output is None:
        raise KitError("--merge needs --output DIR: where the merged leaderboard goes")
    run = shards.merge([(path, shards.read_shard(path)) for path in args.merge])
    print(f"merged {len(args.merge)} shards: {len(run.students)} students")
    return publish(run, args.output)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        return merge_shards(args)
    shard = shards.parse_shard(args.shard) if args.shard else (1, 1)
    threads = engines.set_threads(args.threads)  # first: a bad --threads is the user's, not a file's, problem
    folders = check_args(args)
    per_job = threads_per_job(args, threads)
    marks = rubric.load_rubric(args.rubric)
    isolation = sandbox.isolation(args.isolation)
    print(f"isolation: {sandbox.DESCRIPTIONS[isolation]}")
    engines.resolve_engine("auto")  # measured once here and cached: the children read the cache

    measure = measure_settings(args, per_job)
    models = runner.ModelRunner(per_job, measure, isolation, args.timeout, args.memory_mb)
    print(f"limits per model: {models.timeout:.0f} s, {args.memory_mb} MB; {args.jobs} x {per_job} threads")
    baseline = runner.Baseline.measure(models)
    print(describe_baseline(asdict(baseline)))

    share = shards.share(folders, shard)
    if args.shard:
        print(f"shard {shard[0]}/{shard[1]}: {len(share)} of {len(folders)} student folders")
    students, interrupted = grade_all(share, marks, baseline, models, args.jobs)
    run = class_run(args, folders, share, students, interrupted, marks, models, baseline, threads)

    if args.shard:  # the class-wide steps wait for --merge
        path = (args.output or args.submissions) / f"shard-{shard[0]}-of-{shard[1]}.json"
        shards.write_shard(run, path)
        print(f"wrote {path} ({len(students)} students); put the shards together with --merge")
        return 130 if interrupted else 0
    return publish(run, args.output or args.submissions)


if __name__ == "__main__":
    run_cli(main)
