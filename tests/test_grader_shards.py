"""Grading a class in shards (issue #28): ``grade.py --shard I/N`` on N machines, then ``--merge``.

A small class of tiny int8 models (test_grader_sandbox.py's) is graded once
whole, with ``--jobs 2``, and once as 3 shards merged: the leaderboard files
must be the same bytes. Copying across shards and the open target's class-wide
bar are computed at merge time, over everyone. Bad shard sets are refused with
one line and exit code 2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_in_process, run_script
from test_grader_sandbox import TEST_RUBRIC, hand_in, int8_tiny_bytes, pi_run

LEADERBOARD_FILES = ("leaderboard.csv", "leaderboard.md", "leaderboard.png")


def check(result) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def small_class(tmp_path_factory) -> dict:
    """Seven students: distinct models, one copy across shards, Pi runs, one broken submission."""
    root = tmp_path_factory.mktemp("class")
    work = tmp_path_factory.mktemp("work")
    models = [int8_tiny_bytes(seed, work, f"m{seed}.pt") for seed in range(5)]
    for_pi = int8_tiny_bytes(9, work, "pi.pt", engine="qnnpack")
    hand_in(root / "ada", {"a.pt": (models[0], "static"), "pi.pt": (for_pi, "dynamic", "qnnpack")}, pi=pi_run(for_pi))
    hand_in(root / "bo", {"b.pt": (models[1], "static"), "b2.pt": (models[2], "dynamic")})
    hand_in(root / "cy", {"c.pt": (models[3], "static")})
    hand_in(root / "dan", {"d.pt": (models[4], "static")})
    hand_in(root / "eve_copy", {"a.pt": (models[0], "static")})  # shard 2 of 3; ada is in shard 1
    hand_in(root / "fay", {"f.pt": (models[2], "static")})
    (root / "gus_broken").mkdir()
    (root / "gus_broken" / "benchmark.json").write_text("{not json")
    rubric = root.parent / "rubric.yaml"
    rubric.write_text(TEST_RUBRIC)
    common = ("--rubric", rubric, "--threads", "2", "--timeout", "60", "--isolation", "rlimits")
    return {"root": root, "common": common, "work": tmp_path_factory.mktemp("boards")}


@pytest.fixture(scope="module")
def single_and_merged(small_class) -> dict:
    root, common, work = small_class["root"], small_class["common"], small_class["work"]
    single = work / "single"
    check(run_script("grade.py", root, "--output", single, "--jobs", "2", *common))
    shard_dir = work / "shards"
    for index in (1, 2, 3):
        check(run_script("grade.py", root, "--shard", f"{index}/3", "--output", shard_dir, *common))
    shard_files = [shard_dir / f"shard-{index}-of-3.json" for index in (1, 2, 3)]
    merged = work / "merged"
    result = run_in_process("grade.py", "--merge", *reversed(shard_files), "--output", merged)  # any order
    check(result)
    return {"single": single, "merged": merged, "shards": shard_files, "stdout": result.stdout}


def test_shards_merged_equal_a_single_run_byte_for_byte(single_and_merged):
    for name in LEADERBOARD_FILES:
        single = (single_and_merged["single"] / name).read_bytes()
        assert single == (single_and_merged["merged"] / name).read_bytes(), name
    csv = (single_and_merged["merged"] / "leaderboard.csv").read_text()
    # copying across shards is found at merge time: ada is in shard 1, eve_copy in shard 2
    assert "model a.pt identical to eve_copy" in csv and "model a.pt identical to ada" in csv
    assert "benchmark.json is not valid JSON" in csv
    assert "7 submissions graded" in (single_and_merged["merged"] / "leaderboard.md").read_text()


def test_each_shard_holds_its_share_only(single_and_merged):
    shares = [[s["student"] for s in json.loads(path.read_text())["students"]] for path in single_and_merged["shards"]]
    assert shares == [["ada", "dan", "gus_broken"], ["bo", "eve_copy"], ["cy", "fay"]]  # every 3rd, sorted
    first = json.loads(single_and_merged["shards"][0].read_text())
    assert first["shard"] == [1, 3] and first["folders"][0] == "ada" and len(first["folders"]) == 7
    assert all(student["copying"] == [] for student in first["students"])  # class-wide: left to --merge


def _edited(source: Path, into: Path, change) -> Path:
    document = json.loads(source.read_text())
    change(document)
    path = into / f"{change.__name__}-{source.name}"
    path.write_text(json.dumps(document))
    return path


def test_bad_shards_and_merges_give_one_error_line(single_and_merged, small_class, tmp_path):
    one, two, three = single_and_merged["shards"]
    root, common = small_class["root"], small_class["common"]

    def other_rubric(document: dict) -> None:
        document["settings"]["rubric"]["penalty_per_flag"] += 1

    def stopped(document: dict) -> None:
        document["interrupted"] = True

    shutil.copy(three, tmp_path / "copy.json")
    cases = (
        ((root, "--shard", "0/3", *common), "I must be between 1 and N"),
        ((root, "--shard", "4/3", *common), "I must be between 1 and N"),
        ((root, "--shard", "two", *common), "write it as I/N"),
        ((root, "--remeasure", "--data", root, "--jobs", "3", *common), "needs a thread per job"),
        (("--merge", one, two, "--output", tmp_path), "shard 3/3 missing"),
        (("--merge", one, two, three, tmp_path / "copy.json", "--output", tmp_path), "are both shard 3/3"),
        (("--merge", one, two, _edited(three, tmp_path, other_rubric), "--output", tmp_path), "(rubric)"),
        (("--merge", one, two, _edited(three, tmp_path, stopped), "--output", tmp_path), "stopped by Ctrl-C"),
        (("--merge", one, two, root / "ada" / "benchmark.json", "--output", tmp_path), "is not a quantlab.grade"),
        (("--merge", one, two, three), "--merge needs --output"),
        (("--merge", one, two, tmp_path / "nothing.json", "--output", tmp_path), "does not exist"),
    )
    for args, message in cases:
        result = run_in_process("grade.py", *args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (message, result.stderr)
    assert not (tmp_path / "leaderboard.csv").exists()
