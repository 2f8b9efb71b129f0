"""Fair grading (issue 29): noise-aware accuracy gates, the grading CPU's int8 path, photos students have, no Pi.

Constructed records and photos; the end-to-end path with real models is in test_grade.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantlab import cpu, stats
from quantlab.assets import IMAGENET_SAMPLE, asset_path
from quantlab.grader import gates, grading_machine, leaderboard, pi_runs, rubric, sandbox, scoring
from quantlab.grader.records import ModelGrade, StudentGrade

RUBRIC = rubric.load_rubric(None)
FORCED_AVX2 = {cpu.ONEDNN_ENV: "AVX2", cpu.FBGEMM_ENV: "AVX2"}


def hits_with(photos: int, wrong: list[int]) -> np.ndarray:
    right = np.ones(photos, dtype=bool)
    right[wrong] = False
    return right


def test_per_photo_answers_travel_as_hex_and_are_checked():
    right = hits_with(900, [3, 17, 899])
    packed = gates.pack_hits(right)
    assert len(packed) == 226 and np.array_equal(gates.unpack_hits(packed, 900), right)
    for bad, images in ((packed, 905), (packed[:-2], 900), (packed.upper(), 900), ("zz" * 113, 900), (7, 900),
                        (packed, True), (packed, -1)):  # fmt: skip
        assert gates.unpack_hits(bad, images) is None


def test_the_drop_interval_is_the_notebooks_paired_interval():
    baseline, model = hits_with(900, list(range(0, 90))), hits_with(900, list(range(0, 90)) + list(range(100, 111)))
    drop = gates.drop_interval(baseline, model)
    assert drop["difference"] == pytest.approx(100 * 11 / 900, abs=0.01)  # 11 photos of 900 lost: 1.22 points
    assert drop["low"] > 0 and drop["low"] < 1.0 < drop["high"]  # the answer key's case: lost, but maybe < 1 point
    import torch

    same = stats.paired_difference(torch.from_numpy(baseline), torch.from_numpy(model), resamples=gates.RESAMPLES)
    assert (drop["low"], drop["high"]) == (same["low"], same["high"])
    assert gates.drop_interval(baseline, model[:899]) is None  # not the same photos: no pairing


@pytest.mark.parametrize(
    "point, low, rule, fails",
    [
        (1.22, 0.11, "interval", False),  # the answer key's default model: the interval reaches below 1 point
        (1.22, 0.11, "point", True),
        (2.5, 1.2, "interval", True),  # wholly beyond: fails under both rules
        (2.5, 1.2, "point", True),
        (0.8, -0.3, "interval", False),
        (1.5, None, "interval", True),  # no interval (claimed numbers): the point decides
    ],
)
def test_a_gate_fails_only_when_the_whole_interval_is_beyond_it(point, low, rule, fails):
    assert gates.fails_gate(point, low, 1.0, rule) is fails


def test_the_open_target_gate_reads_the_interval():
    model = ModelGrade(file="open.pt", method="static", engine="qnnpack", top1_drop=1.22, top1_drop_low=0.11,
                       top1_drop_high=2.33)  # fmt: skip
    assert pi_runs._gate_drop(model, "interval") == 0.11 and pi_runs._gate_drop(model, "point") == 1.22
    assert pi_runs._gate_drop(ModelGrade(file="x.pt", method="static"), "interval") == float("inf")


def test_rubric_gate_engine_and_pi_words_are_checked(tmp_path):
    assert (RUBRIC["accuracy"]["gate"], RUBRIC["engines"]["pc"], RUBRIC["pi"]["optional"]) == ("interval", "x86", False)
    path = tmp_path / "rubric.yaml"
    path.write_text("accuracy: {gate: point}\nengines: {pc: any}\npi: {optional: true}\nopen: {full_at: best}\n")
    marks = rubric.load_rubric(path)
    assert (marks["accuracy"]["gate"], marks["engines"]["pc"], marks["pi"]["optional"]) == ("point", "any", True)
    assert marks["open"]["full_at"] == "best"
    for text, message in (
        ("accuracy: {gate: median}\n", "'accuracy.gate' must be 'interval' or 'point'"),
        ("accuracy: {gate: 1}\n", "'accuracy.gate' must be 'interval' or 'point'"),
        ("engines: {pc: auto}\n", "'engines.pc' must be 'x86' or 'onednn' or 'fbgemm' or 'any'"),
        ("pi: {optional: 1}\n", "'pi.optional' must be true or false"),
        ("open: {full_at: second}\n", "'open.full_at' must be a number or 'best'"),
    ):
        path.write_text(text)
        with pytest.raises(rubric.KitError, match=message):
            rubric.load_rubric(path)


def test_a_model_for_another_x86_engine_counts_for_its_part_not_for_points():
    pupil = StudentGrade(student="ada")
    assert scoring._scored_engine(ModelGrade(file="a.pt", method="static", engine="x86"), "x86", pupil)
    assert scoring._scored_engine(ModelGrade(file="q.pt", method="static", engine="qnnpack"), "x86", pupil)
    assert scoring._scored_engine(ModelGrade(file="o.onnx", method="static", engine=None), "x86", pupil)
    assert pupil.notes == []
    assert not scoring._scored_engine(ModelGrade(file="d.pt", method="static", engine="onednn"), "x86", pupil)
    assert "d.pt is quantized for onednn; the rubric's engine is x86" in pupil.notes[0]
    assert scoring._scored_engine(ModelGrade(file="d.pt", method="static", engine="onednn"), "any", pupil)


def test_without_a_pi_the_other_points_are_scaled_to_the_same_total():
    marks = {**RUBRIC, "pi": {**RUBRIC["pi"], "optional": True}}
    assert scoring.pi_optional_scale(marks) == pytest.approx(100 / 85)  # the open target's 15 points move


def _saturation_in_child(engine: str, forced: bool) -> str:
    """saturation_problem in a fresh process (the int8 level is read when the engine first runs)."""
    environment = {key: value for key, value in os.environ.items() if key not in FORCED_AVX2}
    if forced:
        environment.update(FORCED_AVX2)
    code = f"from quantlab.grader import grading_machine as g; print(g.saturation_problem('m.pt', {engine!r}))"
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_a_model_whose_engine_saturates_on_the_grading_cpu_is_named_not_scored():
    if cpu.int8_isa().name not in cpu.X86_LEVELS:
        pytest.skip("the non-VNNI x86 path exists on x86 CPUs only")
    forced = _saturation_in_child("onednn", forced=True)
    assert forced.startswith("m.pt not scored on this grading CPU: onednn's int8 sums saturate here")
    assert _saturation_in_child("x86", forced=True) == "None"  # x86 keeps 7-bit activations: exact on AVX2
    native = _saturation_in_child("onednn", forced=False)
    assert (native != "None") is cpu.engine_isa("onednn", honour_env=False).saturates_u8s8
    assert grading_machine.saturation_problem("q.pt", "qnnpack") is None


def test_the_sandboxed_child_gets_the_int8_level_the_grader_was_given(monkeypatch, tmp_path):
    for key, value in FORCED_AVX2.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SECRET_TOKEN", "x")  # everything else stays out
    child = sandbox._child_env(tmp_path, tmp_path)
    assert {key: child[key] for key in FORCED_AVX2} == FORCED_AVX2 and "SECRET_TOKEN" not in child
    monkeypatch.delenv(cpu.ONEDNN_ENV)
    assert cpu.ONEDNN_ENV not in sandbox._child_env(tmp_path, tmp_path)


def test_the_header_names_the_int8_path_and_the_gate_rule(monkeypatch):
    for key, value in FORCED_AVX2.items():
        monkeypatch.setenv(key, value)
    lines = grading_machine.header_lines(RUBRIC, None, [])
    assert lines[0].startswith("accuracy gates: rule 'interval', but without --remeasure")
    if cpu.int8_isa().name in cpu.X86_LEVELS:
        assert lines[1].startswith("int8 path graded: x86 avx2 (no VNNI), onednn avx2 (no VNNI); rubric's PC tasks: ")
        assert "forced by environment" in lines[1]
    marks = {**RUBRIC, "pi": {**RUBRIC["pi"], "optional": True}}
    without = StudentGrade(student="ada", pi_scale=100 / 85)
    assert (
        "1 student(s) without pi_run.json" in grading_machine.header_lines(marks, None, [without, StudentGrade("b")])[2]
    )


@pytest.fixture
def public_sample() -> Path:
    sample = asset_path(IMAGENET_SAMPLE)
    if sample is None:
        pytest.skip("the kit's offline imagenet-sample is not installed")
    return sample


def test_grading_on_photos_students_have_is_warned(public_sample, tmp_path):
    mixed = tmp_path / "photos"
    mixed.mkdir()
    for photo in sorted(public_sample.iterdir())[:3]:
        shutil.copy(photo, mixed / ("renamed_" + photo.name))  # renaming does not hide a photo: contents count
    (mixed / "n01440764_mine.JPEG").write_bytes(b"\xff\xd8 not in the sample")
    warning = grading_machine.public_sample_warning(mixed)
    assert warning.startswith("WARNING: 3 of the 4 grading photos are the kit's public imagenet-sample")
    (mixed / "n01440764_mine.JPEG").rename(tmp_path / "kept.JPEG")
    for photo in mixed.iterdir():
        photo.unlink()
    (mixed / "n01440764_own.JPEG").write_bytes(b"\xff\xd8 own photo")
    assert grading_machine.public_sample_warning(mixed) is None


def test_the_public_sample_is_known_by_its_names_without_the_assets(public_sample, tmp_path, monkeypatch):
    copy = tmp_path / "imagenet-sample-copy"
    copy.mkdir()
    for photo in public_sample.iterdir():
        (copy / photo.name).write_bytes(b"")  # names only: the recorded hash of the sample's file list
    monkeypatch.setattr(grading_machine, "asset_path", lambda relative: None)
    assert grading_machine.public_sample_warning(copy).startswith("WARNING: 1000 of the 1000 grading photos")


def test_a_sidecar_calibrated_on_the_grading_folder_gets_a_note(tmp_path):
    photos = tmp_path / "exam_photos"
    calibrated = {"calibration": {"source": "/content/exam_photos", "images": 100}}
    trained = {"training": {"source": "/content/exam_photos/ (calibration subset)", "images": 100}}
    assert "its calibration photos came from /content/exam_photos" in grading_machine.source_note(
        "m.pt", calibrated, photos
    )
    assert "its training photos" in grading_machine.source_note("q.pt", trained, photos)
    assert grading_machine.source_note("m.pt", {"calibration": {"source": "/content/train"}}, photos) is None
    assert grading_machine.source_note("m.pt", {"calibration": None}, photos) is None
    # the grader's --holdout 100 leaves out the 100 photos the homework's commands calibrate on
    assert grading_machine.source_note("m.pt", calibrated, photos, holdout=100) is None
    assert grading_machine.source_note("m.pt", calibrated, photos, holdout=50) is not None


def test_the_leaderboard_shows_the_drop_with_its_interval():
    best = ModelGrade(file="open.pt", method="static", engine="x86", top1_drop=1.22, top1_drop_low=0.11,
                      top1_drop_high=2.33, speedup=2.5, size_ratio=3.6, points={"accuracy": 30.0})  # fmt: skip
    ada = StudentGrade(student="ada", best=best, score=30.0, points={"accuracy": 30.0}, notes=["unstable: ..."])
    row = leaderboard.leaderboard_rows([ada])[0]
    assert (row["top1_drop"], row["top1_drop_low"], row["top1_drop_high"]) == (1.22, 0.11, 2.33)
    markdown = leaderboard.leaderboard_markdown([ada], ["header"])
    assert "+1.22 \\[+0.11, +2.33\\]" in markdown and "top-1 drop (points) \\[95 % interval\\]" not in markdown
    assert "## Notes" in markdown and "unstable: ..." in markdown


ANSWERS = """
import hashlib, sys, torch
torch.backends.quantized.engine = "x86"
model = torch.jit.load(sys.argv[1])
image = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
print(hashlib.sha256(model(image).contiguous().numpy().tobytes()).hexdigest())
"""


def test_an_x86_model_answers_the_same_with_the_non_vnni_path_forced(tmp_path):
    """The rubric's engine: FBGEMM keeps activations to 7 bits, so its sums are exact with and without VNNI."""
    if cpu.int8_isa().name not in cpu.X86_LEVELS:
        pytest.skip("x86 CPUs only")
    import torch

    from quantlab import engines
    from quantlab.quantize import quantize_static

    probe = engines._probe_model()  # three stages of MobileNetV2, as auto's probe
    calibration = [torch.randn(8, 3, 112, 112, generator=torch.Generator().manual_seed(0))]
    model = quantize_static(probe, calibration, "x86", observer="histogram", progress=False)
    path = tmp_path / "x86.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    answers = []
    for forced in (False, True):
        environment = {key: value for key, value in os.environ.items() if key not in FORCED_AVX2}
        environment.update(FORCED_AVX2 if forced else {})
        done = subprocess.run([sys.executable, "-c", ANSWERS, str(path)], env=environment, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        answers.append(done.stdout.split()[-1])
    assert answers[0] == answers[1]


def test_an_onnx_file_with_8_bit_weights_is_not_scored_where_onnx_runtime_saturates(monkeypatch, tmp_path):
    """ONNX Runtime has no switch like ONEDNN_MAX_CPU_ISA: the probe's measurement is stood in for a CPU without
    VNNI (test_onnx_tools runs the real probe under qemu -cpu Haswell); the weights are read from the file."""
    from quantlab.grader import model_checks

    full, seven_bit = tmp_path / "full.onnx", tmp_path / "seven.onnx"
    full.write_bytes(cpu._u8s8_probe_model(127))  # a QDQ convolution, int8 weights of 127 (the kit on VNNI)
    seven_bit.write_bytes(cpu._u8s8_probe_model(63))  # 7-bit weights (the kit without VNNI: reduce_range)
    assert model_checks.onnx_int8_weight_max(full) == 127 and model_checks.onnx_int8_weight_max(seven_bit) == 63
    assert model_checks.onnx_int8_weight_max(tmp_path / "missing.onnx") is None
    assert grading_machine.onnx_saturation_problem("full.onnx", None) is None  # no int8 weights (uint8, fp32)
    native = grading_machine.onnx_saturation_problem("full.onnx", 127)
    assert (native is None) is (cpu.onnxruntime_u8s8_error() <= 0.05)  # on a VNNI CPU: exact, scored
    monkeypatch.setattr(grading_machine, "_onnxruntime_u8s8_error", lambda: 0.49)  # what an AVX2 CPU measures
    saturated = grading_machine.onnx_saturation_problem("full.onnx", 127)
    assert saturated.startswith("full.onnx not scored on this grading CPU: ONNX Runtime's uint8 x int8 sums saturate")
    assert "weights reach 127 (8 bits)" in saturated
    assert grading_machine.onnx_saturation_problem("seven.onnx", 63) is None  # 2 x 255 x 63 fits in 16 bits
    assert grading_machine.onnx_saturation_problem("odd.onnx", True) is None  # the child's word, checked
    assert "U8S8 saturates: 8-bit ONNX weights not scored" in grading_machine.int8_path_line("x86")
