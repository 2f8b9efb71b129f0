"""Shared fixtures: the offline assets (skip when absent) and a runner for the kit's scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantlab.assets import ASSETS_ENV, FLOAT_WEIGHTS, IMAGENET_SAMPLE, INT8_WEIGHTS, assets_dir

REPO = Path(__file__).resolve().parents[1]
CODES = REPO / "Codes"


# Which tests `make test-fast` leaves out, by file: the edit-run loop keeps the in-process checks.
SLOW_FILES = {"test_benchmark.py", "test_grade.py", "test_onnx.py", "test_own_model.py", "test_quantize_model.py",
              "test_sandbox.py", "test_speed_suite.py"}
EMULATION = {"test_pi_emulation.py": None, "test_isa.py": {"test_onnx_runtime_format_is_exact_on_an_avx2_cpu"}}
NOTEBOOK_FILES = {"test_notebooks.py"}


def pytest_collection_modifyitems(config, items) -> None:
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
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO,
    )


@pytest.fixture
def run():
    return run_script
