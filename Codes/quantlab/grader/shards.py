"""A grading run kept as a record: a whole class, or one shard of it (``grade.py --shard I/N``), and the merge.

A class too large for one machine is graded as N shards (a Slurm job array, a
CI matrix): shard I of N grades the student folders whose position in the
sorted list is I-1 modulo N, and writes its ``ClassRun`` as JSON, students
graded but not yet compared with each other. ``merge`` checks that the shards
are the N pieces of one run (same class, rubric, settings and kit; none
missing, none twice, none stopped by Ctrl-C) and puts their students together;
the class-wide steps (possible copying, the open target's bar) then run over
everyone, exactly as in a single run.

Example:
    run = shards.read_shard(Path("shard-1-of-3.json"))
    merged = shards.merge([run, shards.read_shard(...), shards.read_shard(...)])
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from quantlab import files
from quantlab.errors import KitError
from quantlab.grader.records import ModelGrade, StudentGrade

SCHEMA = "quantlab.grade-shard/1"
MAX_SHARD_BYTES = 256 << 20  # a shard of 1,000 students is a few MB


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` as (I, N), 1 <= I <= N; a KitError naming --shard otherwise."""
    index, slash, count = text.partition("/")
    if not slash or not index.strip().isdigit() or not count.strip().isdigit():
        raise KitError(f"--shard {text!r}: write it as I/N, e.g. --shard 2/8 for the second of 8 shards")
    index_number, count_number = int(index), int(count)
    if count_number < 1 or not 1 <= index_number <= count_number:
        raise KitError(f"--shard {text}: I must be between 1 and N (shards are numbered 1/{max(count_number, 1)} up)")
    return index_number, count_number


def share(folders: list[Path], shard: tuple[int, int]) -> list[Path]:
    """Shard I of N's folders: every N-th of the sorted list, starting at the I-th (deterministic, and even)."""
    index, count = shard
    return sorted(folders, key=lambda folder: folder.name)[index - 1 :: count]


@dataclass
class ClassRun:
    """What one grading run produced, before the class-wide steps: enough to write the leaderboard later."""

    settings: dict  # what every shard must share: kit and torch versions, rubric, measuring, limits, isolation
    shown: dict  # what the leaderboard's header prints: the rubric's path, the machine
    folders: list[str]  # the whole class's folder names, sorted: every shard lists the same
    shard: list[int]  # [I, N]; [1, 1] for a whole run
    graded: int  # folders in this run's share
    interrupted: bool  # stopped by Ctrl-C
    baseline: dict  # runner.Baseline's fields
    students: list[StudentGrade]


def _student_from(document: dict) -> StudentGrade:
    student = StudentGrade(**{key: value for key, value in document.items() if key not in ("models", "best")})
    student.models = [ModelGrade(**model) for model in document["models"]]
    best = document.get("best")
    if best is not None:  # the same object as its row in models, as grade_student leaves it
        student.best = next((model for model in student.models if asdict(model) == best), ModelGrade(**best))
    return student


def write_shard(run: ClassRun, path: Path) -> None:
    """The run as JSON, written atomically (a stopped job leaves no half-written shard)."""
    document = {"schema": SCHEMA, **asdict(run)}
    files.write_text(path, json.dumps(document, indent=1, allow_nan=True) + "\n", "--output")


def read_shard(path: Path) -> ClassRun:
    """A shard file written by ``write_shard``, or a KitError saying why it is not one."""
    if not path.is_file():
        raise KitError(f"shard file {path} does not exist; pass the shard-I-of-N.json files grade.py --shard wrote")
    if path.stat().st_size > MAX_SHARD_BYTES:
        raise KitError(f"{path} is over {MAX_SHARD_BYTES >> 20} MB: not a shard file grade.py wrote")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise KitError(f"{path} is not valid JSON: pass the shard files grade.py --shard wrote") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise KitError(f"{path} is not a {SCHEMA} shard file (grade.py --shard I/N writes them)")
    try:
        names = {field.name for field in fields(ClassRun)}
        run = ClassRun(**{key: value for key, value in document.items() if key in names})
        run.students = [_student_from(student) for student in document["students"]]
    except (TypeError, KeyError, AttributeError):
        raise KitError(f"{path} is an incomplete or edited shard file: grade that shard again") from None
    return run


def merge(runs: list[tuple[Path, ClassRun]]) -> ClassRun:
    """The N shards of one run, checked and put together, students in the order a single run grades them."""
    first_path, first = runs[0]
    count = first.shard[1]
    seen: dict[int, Path] = {}
    for path, run in runs:
        for what, mine, theirs in (
            ("settings (rubric, --remeasure, limits, isolation, kit or torch version)", run.settings, first.settings),
            ("class (the student folders)", run.folders, first.folders),
            ("number of shards", run.shard[1], count),
        ):
            if mine != theirs:
                changed = _first_difference(mine, theirs) if isinstance(mine, dict) else ""
                raise KitError(
                    f"{path} and {first_path} differ in their {what}{changed}: they are not one run's shards"
                )
        index = run.shard[0]
        if index in seen:
            raise KitError(f"{path} and {seen[index]} are both shard {index}/{count}: pass each shard once")
        seen[index] = path
        if run.interrupted:
            raise KitError(f"{path}: shard {index}/{count} was stopped by Ctrl-C; grade it again, then merge")
    missing = [f"{index}/{count}" for index in range(1, count + 1) if index not in seen]
    if missing:
        raise KitError(f"shard {', '.join(missing)} missing: merge needs all {count} shards of the run")
    by_shard = {run.shard[0]: run for _, run in runs}
    for index, run in by_shard.items():
        if len(run.students) != len(first.folders[index - 1 :: count]):
            raise KitError(f"{seen[index]} holds {len(run.students)} students, not its share: grade that shard again")
    # shard I holds folders I-1, I-1+N, ...: dealt back, the students are in the order one run grades them
    students = [by_shard[position % count + 1].students[position // count] for position in range(len(first.folders))]
    by_index = sorted(runs, key=lambda item: item[1].shard[0])
    return ClassRun(
        settings=first.settings,
        shown={**by_index[0][1].shown, "machines": [run.shown.get("machine") for _, run in by_index]},
        folders=first.folders,
        shard=[1, 1],
        graded=sum(run.graded for _, run in runs),
        interrupted=False,
        baseline=by_index[0][1].baseline,
        students=students,
    )


def _first_difference(mine: dict, theirs: dict) -> str:
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key) != theirs.get(key):
            return f" ({key})"
    return ""
