"""torchao per torch: one table (quantlab.compat), checked before torchao is imported.

A torchao built for another torch can abort the process at ``import torchao``; the kit must say which
torchao to install in one line instead, and the notebooks' setup cells must install torchao only where
PT2E is used (notebook 7), picked by the same table.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from quantlab import compat, project

REPO = Path(__file__).resolve().parents[1]
CODES = REPO / "Codes"


def _pin(requirements: Path, package: str) -> str:
    match = re.search(rf"^{package}==(\S+)", requirements.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"{requirements.name} pins no {package}"
    return match.group(1)


def test_dev_pins_the_torchao_the_table_names_for_its_torch() -> None:
    requirements = REPO / "requirements-dev.txt"
    assert _pin(requirements, "torchao") == compat.torchao_for(_pin(requirements, "torch"))


def test_the_pis_torch_is_the_oldest_supported_and_has_a_torchao() -> None:
    pi_torch = _pin(REPO / "requirements-pi.txt", "torch")
    assert compat.minor_of(pi_torch) == compat.OLDEST_TORCH
    assert compat.torchao_problem(pi_torch, compat.torchao_for(pi_torch)) is None
    floor = re.search(r'"torch>=([\d.]+)"', (REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert floor and compat.minor_of(floor.group(1)) == compat.OLDEST_TORCH, "pyproject's torch floor"


@pytest.mark.parametrize(
    "torch_version, torchao_version, expected",
    [
        ("2.9.1", "0.15.0", None),
        ("2.9.1+cu128", "0.14.1", None),
        ("2.9.1", "0.18.0", "pip install torchao==0.15.0"),  # what Colab's setup cell used to pair
        ("2.14.1", "0.15.0", "pip install torchao==0.18.0"),
        ("2.10.0", None, "pip install torchao==0.16.0"),
        ("2.8.0", "0.13.0", "older than the kit supports"),
        ("2.20.0", "0.18.0", None),  # newer than the table: a torchao at least as new as the last pin is trusted
        ("2.20.0", "0.16.0", "pip install torchao==0.18.0"),
    ],
)
def test_a_mismatch_is_one_line_naming_the_torchao(torch_version: str, torchao_version: str | None, expected) -> None:
    problem = compat.torchao_problem(torch_version, torchao_version)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem and "\n" not in problem


def test_a_torchao_that_would_kill_the_process_is_refused_before_its_import(tmp_path: Path) -> None:
    """A stand-in torchao 0.13.0 whose import aborts the interpreter, as a mismatched build can: the kit must
    answer with one line and exit 2, never import it."""
    (tmp_path / "torchao").mkdir()
    (tmp_path / "torchao" / "__init__.py").write_text("import os\nos.abort()\n")
    info = tmp_path / "torchao-0.13.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchao\nVersion: 0.13.0\n")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from quantlab.errors import run_cli; from quantlab import pt2e; run_cli(lambda argv: pt2e.require_torchao())",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(CODES)])},
    )
    assert result.returncode == 2, f"rc {result.returncode}: {result.stderr[-500:]}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "torchao 0.13.0 does not fit torch" in lines[0], result.stderr
    assert f"pip install torchao=={compat.torchao_for(compat.installed_version('torch'))}" in lines[0]


def test_the_command_names_the_torchao_for_the_installed_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "quantlab.compat", "torchao"], capture_output=True, text=True, timeout=60
    )
    assert (
        result.returncode == 0
        and result.stdout.strip() == f"torchao=={compat.torchao_for(compat.installed_version('torch'))}"
    )
    wrong = subprocess.run([sys.executable, "-m", "quantlab.compat"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1


def test_only_notebook_7_installs_torchao_and_colab_requirements_do_not() -> None:
    assert not any(line.lower().startswith("torchao") for line in project.colab_requirements())
    notebooks = sorted(path.name for path in (REPO / project.STUDENT_DIR).glob("*.ipynb"))
    installing = [name for name in notebooks if "quantlab.compat" in project.setup_cell_source(name)]
    assert installing == ["07_pt2e.ipynb"], installing
    for name in notebooks:
        compile(project.setup_cell_source(name), name, "exec")
