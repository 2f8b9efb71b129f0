"""quantlab.grader.emulated_pi: pi_check.json, a student without a Pi proving their qnnpack model's answers on ARM.

Hand-made files and grades; the file pi_check.py really writes is checked in test_pi_check.py (emulation).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import quantlab
from quantlab.grader import emulated_pi, leaderboard, pi_runs, rubric, scoring
from quantlab.grader.records import ModelGrade, StudentGrade

RUBRIC = rubric.load_rubric(None)
OPTIONAL = {**RUBRIC, "pi": {**RUBRIC["pi"], "optional": True}}
QNNPACK = ModelGrade(file="mnv2_qnnpack.pt", method="static", engine="qnnpack", sha256="a" * 64)
X86 = ModelGrade(file="mnv2_x86.pt", method="static", engine="x86", sha256="b" * 64)


def pi_check_document(**changes: object) -> dict:
    """What ``pi_check.py --model`` writes for QNNPACK's file (16 photos, 15 answers alike)."""
    x86 = list(range(100, 116))
    document = {
        "schema": emulated_pi.SCHEMA,
        "made_by": "tools/pi_check/pi_check.py --model",
        "emulated": True,
        "cpu": "cortex-a72",
        "board": "Raspberry Pi 4 / 400 / CM4",
        "arch": "aarch64",
        "engine": "qnnpack",
        "model": QNNPACK.file,
        "model_sha256": QNNPACK.sha256,
        "kit_version": quantlab.__version__,
        "photos": 16,
        "names": [f"photo{i}" for i in range(16)],
        "x86_top1": x86,
        "pi_top1": x86[:-1] + [999],
        "top1_agree": 15,
        "created": "2026-12-04T21:00:00Z",
    }
    document.update(changes)
    return document


def checked(tmp_path: Path, document: dict, graded=(QNNPACK, X86)) -> tuple:
    path = tmp_path / emulated_pi.PI_CHECK_FILE
    path.write_text(json.dumps(document))
    return emulated_pi.check_pi_check(path, list(graded))


def test_pi_checks_own_output_counts_for_the_pi_part(tmp_path):
    check, why = checked(tmp_path, pi_check_document())
    assert why is None and (check.cpu, check.photos, check.agree, check.model) == ("cortex-a72", 16, 15, QNNPACK.file)
    assert check.summary.startswith("emulated Pi check (cortex-a72, Raspberry Pi 4): mnv2_qnnpack.pt gave x86's top-1")


@pytest.mark.parametrize(
    ("changes", "words", "flagged"),
    [
        ({"mean_fps": 30.0}, "holds 'mean_fps': pi_check records no speed", True),
        ({"stages_ms": {"inference": 20}}, "holds 'stages_ms'", True),
        ({"emulated": False}, 'does not say "emulated": true', True),
        ({"top1_agree": 16}, "top1_agree is not the count of equal answers", True),
        ({"kit_version": "0.0.9"}, "was made with kit 0.0.9, the grader is kit", False),
        ({"model_sha256": "c" * 64}, "sha256 is not that of a submitted model", False),
        ({"model_sha256": X86.sha256}, "mnv2_x86.pt, which is not int8 for qnnpack", False),
        ({"cpu": "cortex-x925"}, "is not a Raspberry Pi's", False),
        ({"pi_top1": [0] * 16, "top1_agree": 0}, "x86's top-1 on 0 of 16 photos only", False),
        ({"schema": "quantlab.benchmark/1"}, "is not the output of tools/pi_check/pi_check.py --model", False),
        (
            {"photos": 4, "names": ["a"] * 4, "x86_top1": [1] * 4, "pi_top1": [1] * 4, "top1_agree": 4},
            "compared 4 photos",
            False,
        ),
    ],
)
def test_a_forged_or_foreign_file_earns_nothing_and_says_why(tmp_path, changes, words, flagged):
    check, why = checked(tmp_path, pi_check_document(**changes))
    assert check is None and words in why, why
    assert (pi_runs.EDITED in why) is flagged  # edited numbers are flagged; an old kit or another model is not


def test_a_file_that_is_no_json_is_one_line(tmp_path):
    path = tmp_path / emulated_pi.PI_CHECK_FILE
    path.write_text("{not json")
    check, why = emulated_pi.check_pi_check(path, [QNNPACK])
    assert check is None and "\n" not in why


def test_with_pi_optional_the_emulated_check_fills_the_pi_part_never_the_open_target(tmp_path):
    (tmp_path / emulated_pi.PI_CHECK_FILE).write_text(json.dumps(pi_check_document()))
    student, present = StudentGrade(student="ada"), {"baseline", "static"}
    scoring._emulated_pi_part(tmp_path / emulated_pi.PI_CHECK_FILE, student, [QNNPACK, X86], present, OPTIONAL)
    assert "pi" in present and student.pi_emulated.startswith("emulated Pi check") and student.open_speedup is None
    assert scoring.pi_optional_scale(OPTIONAL) == pytest.approx(100 / 85)  # only the open target's points move

    strict, present = StudentGrade(student="bo"), {"baseline"}
    scoring._emulated_pi_part(tmp_path / emulated_pi.PI_CHECK_FILE, strict, [QNNPACK], present, RUBRIC)
    assert "pi" not in present and strict.problems == [
        "pi_check.json (the emulated Pi check) does not count: the rubric asks for pi_run.json from a real Pi "
        "(pi.optional: false)"
    ]
    real, present = StudentGrade(student="cy"), {"pi"}
    scoring._emulated_pi_part(tmp_path / emulated_pi.PI_CHECK_FILE, real, [QNNPACK], present, OPTIONAL)
    assert real.pi_emulated is None and "pi_run.json from a real Pi counts" in real.notes[0]

    (tmp_path / emulated_pi.PI_CHECK_FILE).write_text(json.dumps(pi_check_document(fps=31.0)))
    forger, present = StudentGrade(student="dee"), set()
    scoring._emulated_pi_part(tmp_path / emulated_pi.PI_CHECK_FILE, forger, [QNNPACK], present, OPTIONAL)
    assert "pi" not in present and len(forger.flags) == 1 and "holds 'fps'" in forger.flags[0]


def test_the_leaderboard_marks_the_emulated_check_where_the_pi_fps_would_be():
    emulated = StudentGrade(student="ada", pi_emulated="emulated Pi check (cortex-a72, Raspberry Pi 4): ...")
    real = StudentGrade(student="bo", pi_fps=24.5)
    rows = {row["student"]: row for row in leaderboard.leaderboard_rows([emulated, real])}
    assert (rows["ada"]["pi_fps"], rows["ada"]["pi_check"]) == (None, "emulated Pi check")
    assert (rows["bo"]["pi_fps"], rows["bo"]["pi_check"]) == (24.5, None)
    markdown = leaderboard.leaderboard_markdown([emulated, real], ["header"])
    assert "Pi FPS (or emulated Pi check: no FPS)" in markdown
    ada_line = next(line for line in markdown.splitlines() if "| ada |" in line)
    assert "emulated Pi check" in ada_line
