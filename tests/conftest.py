"""Shared fixtures: the offline assets (skip when absent) and a runner for the kit's scripts."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import platform
import subprocess
import sys
import textwrap
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

# `make test` runs two xdist workers on two cores: OpenMP threads that spin while they wait take the core the
# other worker needs (notebook 4's smoke run took 93 s beside another worker, 14 s alone). Waiting threads sleep
# instead; every script, notebook kernel and sandboxed model the tests start inherits it. Tests never time.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from quantlab import cpu
from quantlab.assets import ASSETS_ENV, FLOAT_WEIGHTS, IMAGENET_SAMPLE, INT8_WEIGHTS, assets_dir
from quantlab.errors import run_cli

REPO = Path(__file__).resolve().parents[1]
CODES = REPO / "Codes"


# Which tests `make test-fast` leaves out, by file: the edit-run loop keeps the in-process checks.
SLOW_FILES = {
    "test_benchmark.py",
    "test_errors.py",
    "test_grade.py",
    "test_grader_sandbox.py",
    "test_onnx_tools.py",
    "test_quantize.py",
    "test_quantize_model.py",
    "test_speed_suite.py",
    "test_user_model.py",
}
EMULATION = {"test_pi_check.py": None, "test_onnx_tools.py": {"test_onnx_runtime_format_is_exact_on_an_avx2_cpu"}}
NOTEBOOK_FILES = {"test_notebooks.py"}


# The longest files first: `make test` runs the files on two workers (pytest-xdist, --dist loadfile), which take
# them in this order, so the Pi emulation and the notebooks do not start last and leave one worker idle.
LONGEST_FIRST = [
    "test_pi_check.py",
    "test_notebooks.py",
    "test_grader_sandbox.py",
    "test_onnx_tools.py",
    "test_engines.py",
    "test_grade.py",
]


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order
    for item in items:
        file = item.path.name
        if file in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
        if file in NOTEBOOK_FILES:
            item.add_marker(pytest.mark.notebooks)
        if file in EMULATION and (EMULATION[file] is None or item.originalname in EMULATION[file]):
            item.add_marker(pytest.mark.emulation)


def _asset(relative: str) -> Path:
    path = assets_dir() / relative
    if not path.exists():
        pytest.skip(f"offline asset {relative} not found under {assets_dir()} (set {ASSETS_ENV})")
    return path


@pytest.fixture(scope="session")
def int8_weights() -> Path:
    return _asset(INT8_WEIGHTS)


@pytest.fixture(scope="session")
def float_weights() -> Path:
    return _asset(FLOAT_WEIGHTS)


@pytest.fixture(scope="session")
def sample_photos() -> Path:
    return _asset(IMAGENET_SAMPLE)


def run_script(script: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``Codes/<script>`` as a student would, in a fresh process."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(CODES / script), *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
    )


def run_in_process(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``Codes/<script>`` as ``run_script`` does, but inside this process: its ``main(argv)`` through
    ``run_cli``, as ``python Codes/<script>`` runs it, with no interpreter start-up (seconds per case), for the
    error paths that stop before any model runs. ``test_each_cli_exits_2_in_a_fresh_interpreter`` keeps one real
    process per script."""
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    try:
        with pytest.MonkeyPatch.context() as patch, redirect_stdout(stdout), redirect_stderr(stderr):
            patch.chdir(REPO)
            for key, value in (env or {}).items():
                patch.setenv(key, value)
            run_cli(load_script(script).main, [str(arg) for arg in args])
    except SystemExit as exited:
        code = exited.code if isinstance(exited.code, int) else 1
    return subprocess.CompletedProcess([script, *args], code, stdout.getvalue(), stderr.getvalue())


def load_script(script: str):
    """``Codes/<script>`` imported as a module (its ``main`` does not run): its settings and functions."""
    spec = importlib.util.spec_from_file_location(Path(script).stem, CODES / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run():
    return run_script


# The non-VNNI int8 path, forced in a fresh Python (the variables are read once per process): test_cpu,
# test_engines and test_onnx_tools check both kinds of x86 CPU on any x86 machine.
X86 = platform.machine().lower() in ("x86_64", "amd64")
NON_VNNI = {cpu.FBGEMM_ENV: "AVX2", cpu.ONEDNN_ENV: "AVX2"}  # what PyTorch's x86 engines use on an AVX2-only CPU
needs_x86_avx2 = pytest.mark.skipif(not X86 or cpu.int8_isa().name == "sse", reason="needs an x86 CPU with AVX2")


def run_python(code: str, env: dict[str, str], prefix: tuple[str, ...] = (), timeout: float = 300) -> dict:
    """Run ``code`` in a fresh Python (under ``prefix``, e.g. qemu) and return the JSON it prints last."""
    result = subprocess.run(
        [*prefix, sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
