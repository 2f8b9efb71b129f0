"""The leaderboard: one row per student, ranked, as CSV, Markdown, a plot of the points and a terminal table.

Every student-controlled string is capped and escaped for where it goes: CSV
cells a spreadsheet would run as formulas, Markdown that could form links,
tables or HTML.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Callable
from pathlib import Path

from quantlab import files
from quantlab.grader.records import StudentGrade, ranked
from quantlab.grader.untrusted import clean_text

MAX_REASONS = 8  # reasons listed per student (the rest are counted)

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
    "top1_drop_low",
    "top1_drop_high",
    "speedup",
    "size_mb",
    "size_ratio",
    "points_accuracy",
    "points_speedup",
    "points_size",
    "points_parts",
    "points_recipe",
    "points_open",
    "penalty",
    "parts",
    "missing_parts",
    "pi_fps",
    "pi_check",
    "pi_open_speedup",
    "reasons",
    "notes",
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
                "top1_drop_low": _rounded(best.top1_drop_low) if best else None,
                "top1_drop_high": _rounded(best.top1_drop_high) if best else None,
                "speedup": _rounded(best.speedup) if best else None,
                "size_mb": _rounded(best.size_mb, 3) if best else None,
                "size_ratio": _rounded(best.size_ratio) if best else None,
                **{
                    f"points_{key}": _rounded(points.get(key), 1)
                    for key in ("accuracy", "speedup", "size", "parts", "recipe", "open")
                },
                "penalty": _rounded(points.get("penalty"), 1),
                "parts": " ".join(student.parts),
                "missing_parts": " ".join(student.missing),
                "pi_fps": _rounded(student.pi_fps, 1),
                "pi_check": "emulated Pi check" if student.pi_emulated else None,  # answers only: never an FPS
                "pi_open_speedup": _rounded(student.open_speedup),
                "reasons": " | ".join(capped_reasons(student.reasons)),
                "notes": " | ".join(capped_reasons(student.notes)),
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


def leaderboard_csv(rows: list[dict]) -> str:
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


def _drop_shown(row: dict) -> str | None:
    """'+1.22 [+0.11, +2.33]': the drop with its paired interval when the grader measured one."""
    if row["top1_drop"] is None:
        return None
    if row["top1_drop_low"] is None or row["top1_drop_high"] is None:
        return f"{row['top1_drop']:+.2f}"
    return f"{row['top1_drop']:+.2f} [{row['top1_drop_low']:+.2f}, {row['top1_drop_high']:+.2f}]"


def leaderboard_markdown(students: list[StudentGrade], header: list[str]) -> str:
    """The leaderboard as Markdown: the context, the ranking, then every submission's problems."""
    rows = leaderboard_rows(students)
    shown = (
        "rank",
        "student",
        "score",
        "status",
        "best_model",
        "method",
        "drop_shown",
        "speedup",
        "size_ratio",
        "parts",
        "pi_shown",
        "pi_open_speedup",
    )
    titles = (
        "rank",
        "student",
        "score",
        "status",
        "scored model",
        "method",
        "top-1 drop (points) [95 % interval]",
        "speed-up",
        "smaller",
        "parts",
        "Pi FPS (or emulated Pi check: no FPS)",
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
    for row in rows:
        row["drop_shown"] = _drop_shown(row)
        row["pi_shown"] = row["pi_fps"] if row["pi_fps"] is not None else row["pi_check"]
    lines += ["| " + " | ".join(_cell(row[key]) for key in shown) + " |" for row in rows]
    lines += ["", "## Problems", "", *_notes_by_student(students, lambda student: student.reasons, with_status=True)]
    lines += [
        "",
        "## Notes",
        "",
        "No effect on the score or status: unstable speed measurements, models for another engine, photos a "
        "model may have been fitted to, a student graded without a Pi.",
        "",
        *_notes_by_student(students, lambda student: student.notes, with_status=False),
    ]
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


def write_points_plot(students: list[StudentGrade], path: Path, title: str) -> None:
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
        ("recipe", "tab:olive"),
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
    files.write_text(paths[0], leaderboard_csv(rows), "--output")
    markdown = leaderboard_markdown(students, header)
    files.write_text(paths[1], markdown, "--output")
    write_points_plot(students, paths[2], header[0].replace("; ", "\n") if header else "leaderboard")
    return paths


def _shown(value, spec: str, unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def summary_table(students: list[StudentGrade]) -> str:
    """The leaderboard as a text table for the terminal."""
    header = (
        f"{'rank':>4}  {'student':<16}{'score':>7}  {'status':<9}{'scored model':<22}{'drop':>8}"
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
