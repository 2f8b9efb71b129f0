"""The notebooks: each runs top to bottom in smoke mode, is stored clean, and its badge and setup cell
match Codes/quantlab/project.py.

Every ``notebooks/*.ipynb`` is executed with nbclient in a fresh kernel, with
``QUANTLAB_SMOKE=1`` (few photos, short training, few timing runs) and the
working folder set to a temporary directory (what a notebook writes lands there).
They need the offline assets (weights and sample photos): without them they skip.
A failing cell fails its test with the cell's source and traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from quantlab import project

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / project.NOTEBOOKS_DIR).glob("*.ipynb"))
CELL_TIMEOUT_S = 240  # one cell; the whole suite of notebooks stays under 5 minutes on 2 idle cores
COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/([^/\s)]+/[^/\s)]+)/blob/([^/\s)]+)/([^\s)]+)")


def test_there_are_notebooks() -> None:
    assert len(NOTEBOOKS) >= 5, f"expected the course notebooks in {REPO / project.NOTEBOOKS_DIR}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(
    notebook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, float_weights: Path, sample_photos: Path
) -> None:
    # the fixtures skip this test when the offline assets are absent (CI has no internet for downloads)
    # the kernel is a subprocess: it inherits this environment; "python" in the kernelspec must be ours
    monkeypatch.setenv("QUANTLAB_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"{notebook.name} failed in smoke mode:\n{error}", pytrace=False)
    noise = [
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("name") == "stderr"
    ]
    warnings = [line for text in noise for line in text.splitlines() if "Warning" in line]
    assert not warnings, f"{notebook.name} prints warnings students should not see:\n" + "\n".join(warnings)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    dirty = [
        index
        for index, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, (
        f"{notebook.name}: cells {dirty} carry outputs or execution counts; "
        "run python tools/sync_notebooks.py (it clears them)"
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_title_badge_and_smoke_switch(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), f"{notebook.name}: no H1 title first"
    assert project.colab_badge(notebook.name) in first.source, f"{notebook.name}: no Colab badge for itself"
    code = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert 'os.environ.get("QUANTLAB_SMOKE") == "1"' in code, f"{notebook.name}: no smoke switch"


def test_colab_links_point_at_notebooks_that_exist() -> None:
    documents = [*NOTEBOOKS, *sorted((REPO / "labs").glob("*.md")), REPO / "README.md"]
    links = [
        (document.name, match)
        for document in documents
        if document.exists()
        for match in COLAB_LINK.finditer(document.read_text(encoding="utf-8"))
    ]
    assert links, "no Colab links found"
    for document, match in links:
        repo, branch, path = match.groups()
        assert (repo, branch) == (project.REPO, project.BRANCH), (
            f"{document}: Colab link to {repo}@{branch}, but quantlab.project says {project.REPO}@{project.BRANCH}"
        )
        assert (REPO / path).is_file(), f"{document}: Colab link to {path}, which does not exist"


def test_badges_and_setup_cells_match_project() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "sync_notebooks.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr or result.stdout


def test_setup_cell_keeps_colabs_torch() -> None:
    source = project.setup_cell_source()
    assert "google.colab" in source and "--no-deps" in source
    compile(source, "setup cell", "exec")
    requirements = (REPO / "requirements-colab.txt").read_text(encoding="utf-8").splitlines()
    pinned = [
        line.split("=")[0].split(">")[0].strip().lower()
        for line in requirements
        if line.strip() and not line.startswith("#")
    ]
    assert "torch" not in pinned and "torchvision" not in pinned, "requirements-colab.txt would reinstall torch"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_says_before_it_starts_whether_the_machine_can_hold_it(notebook: Path) -> None:
    """A Colab runtime that runs out of memory dies without a word: the first cell that uses the kit checks
    first, with the notebook's full-mode peak measured by tools/notebook_memory.py."""
    nb = nbformat.read(notebook, as_version=4)
    first = next(cell for cell in nb.cells if cell.cell_type == "code" and "from quantlab import" in cell.source)
    match = re.search(r"memory\.check_room\((\d+),", first.source)
    assert match, f"{notebook.name}: its first kit cell should call memory.check_room(FULL_MODE_PEAK_MB, ...)"
    assert 1000 <= int(match.group(1)) <= 8000, "a free Colab runtime has about 12.7 GB: keep full mode well below"
