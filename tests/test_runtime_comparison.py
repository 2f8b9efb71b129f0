"""tools/runtime_comparison.py: models of any runtime measured in one run, with top-1 intervals and paired
differences against the first; bad flags are one line."""

from __future__ import annotations

import json

from conftest import run_in_process


def test_two_models_compared_on_a_few_photos(sample_photos, float_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTLAB_ASSETS", str(float_weights.parents[1]))
    out = tmp_path / "comparison.json"
    result = run_in_process(
        "../tools/runtime_comparison.py", "mobilenet_v2", "mobilenet_v2_int8", "--data", sample_photos,
        "--holdout", "984", "--runs", "2", "--warmup", "0", "--threads", "1", "--json", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    assert [row["name"] for row in document["results"]] == ["mobilenet_v2", "mobilenet_v2_int8"]
    assert all(row["images"] == 16 for row in document["results"])
    for row in document["results"]:
        low, high = row["top1_interval"]
        assert 0 <= low <= row["top1"] <= high <= 100
    assert "minus mobilenet_v2" in result.stdout  # the paired differences against the first model


def test_bad_flags_are_one_line(tmp_path):
    for arguments, message in (
        (["x.pt", "--data", tmp_path, "--runs", "0"], "--runs must be at least 1"),
        (["x.pt", "--data", tmp_path / "absent"], "--data must be a folder"),
        (["x.pt", "--data", tmp_path, "--json", tmp_path / "out.txt"], "must end in .json"),
    ):
        result = run_in_process("../tools/runtime_comparison.py", *arguments)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
