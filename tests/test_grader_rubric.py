"""quantlab.grader.rubric: the default rubric, an instructor's overrides, and the ramp every score uses."""

from __future__ import annotations

import json

import pytest

from quantlab.errors import KitError
from quantlab.grader import rubric


def test_rubric_overrides_and_unknown_keys(tmp_path):
    default = rubric.load_rubric(None)
    assert set(default["parts"]) <= set(rubric.KNOWN_PARTS)
    changed = tmp_path / "rubric.yaml"
    changed.write_text("weights:\n  parts: 0\npenalty_per_flag: 5\n")
    marks = rubric.load_rubric(changed)
    assert (marks["weights"]["parts"], marks["penalty_per_flag"]) == (0, 5)
    assert marks["weights"]["accuracy"] == default["weights"]["accuracy"]  # the rest keeps the defaults
    for text, named in (
        ("weights:\n  acuracy: 10\n", "weights.acuracy"),
        ("bonus: 3\n", "'bonus'"),
        ("parts: [static, homework]\n", "'homework'"),
        ("speedup:\n  full_at: 0.5\n", "speedup"),
    ):
        changed.write_text(text)
        with pytest.raises(KitError, match=named):
            rubric.load_rubric(changed)


def test_ramp_and_grade_points():
    assert [rubric.ramp(x, 1.0, 3.0) for x in (0.5, 1.0, 2.0, 3.0, 9.0)] == [0, 0, 0.5, 1, 1]
    assert [rubric.ramp(drop, 10.0, 1.0) for drop in (-2.0, 1.0, 5.5, 10.0, 30.0)] == [1, 1, 0.5, 0, 0]


@pytest.mark.parametrize(
    "override, message",
    [
        ({"open": {"full_at": "fastest"}}, "'open.full_at' must be a number or 'best'"),
        ({"open": {"full_at": 0.9}}, "open.zero_at must be below open.full_at"),
        ({"open": {"max_drop": -1}}, "open.max_drop is the top-1 points"),
        ({"open": {"zero_at": 0.5}}, "open.zero_at is a speed-up over the default model, at least 1"),
        ({"open": {"best_cap": 0.5}}, "open.best_cap is a factor over the next best speed-up, at least 1"),
        ({"open": {"full_at": 10**400}}, "'open.full_at' must be a number or 'best'"),
        ({"pi": {"max_model_fps": 0}}, "pi.max_fps and pi.max_model_fps must be positive"),
        ({"parts": ["pi", "ptq_tabel"]}, "unknown part 'ptq_tabel'"),
    ],
)
def test_bad_open_target_rubrics_are_named(tmp_path, override, message):
    path = tmp_path / "rubric.yaml"
    path.write_text(json.dumps(override))  # JSON is YAML
    with pytest.raises(KitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rubric.load_rubric(path)
