"""The student editions as students get them (this file also runs in the student release, tools/release.py).

Each student notebook installs the kit's tagged release from quantlab.project's repository, opens
itself from its badge, keeps every exercise unwritten (no solution marker, a NotImplementedError at each),
and the Markdown's Colab links name the same repository and tag.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from quantlab import project

REPO = Path(__file__).resolve().parents[1]
STUDENT = sorted((REPO / project.STUDENT_DIR).glob("*.ipynb"))
SOLUTION_MARKER = "(this solution runs in CI: hide it and write your own)"
COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/([^/\s)]+/[^/\s)]+)/blob/([^/\s)]+)/([^\s)]+)")


def test_there_are_student_editions() -> None:
    assert len(STUDENT) >= 5, f"expected the student notebooks in {REPO / project.STUDENT_DIR}"


@pytest.mark.parametrize("notebook", STUDENT, ids=lambda p: p.name)
def test_student_edition_installs_the_release_and_hides_its_solutions(notebook: Path) -> None:
    cells = nbformat.read(notebook, as_version=4).cells
    setup = [cell for cell in cells if cell.get("id") == "setup"]
    assert len(setup) == 1 and setup[0].source == project.setup_cell_source(notebook.name), "setup cell out of date"
    assert f"@{project.REF}" in setup[0].source and "@main" not in setup[0].source
    assert project.colab_badge(notebook.name, student=True) in cells[0].source
    code = "\n".join(cell.source for cell in cells if cell.cell_type == "code")
    assert SOLUTION_MARKER not in code
    assert 'raise NotImplementedError("your code here")' in code


def test_markdown_colab_links_name_the_release() -> None:
    documents = [*REPO.glob("*.md"), *REPO.glob("labs/*.md"), *REPO.glob("docs/*.md")]
    links = [(path.name, match) for path in documents for match in COLAB_LINK.finditer(path.read_text("utf-8"))]
    assert links, "no Colab link in the Markdown"
    for name, match in links:
        assert (match[1], match[2]) == (project.REPO, project.REF), f"{name}: {match[0]}"
        assert (REPO / match[3]).is_file(), f"{name}: Colab link to {match[3]}, which does not exist"
