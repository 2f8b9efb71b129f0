"""The student release (tools/release.py) holds no solution, and the kit's address is written in one place.

The release is built into a temporary folder as CI would: no solution notebook, no instructors' file, no
solution marker and no sentence of the answer key may be in it. The repository and tag come from
quantlab.project: changing them there and running tools/sync_notebooks.py must reach every notebook and
every Markdown link, and no other file may hold a copy.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quantlab import project
from quantlab.errors import KitError

REPO = Path(__file__).resolve().parents[1]
COLAB_ADDRESS = re.compile(r"colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/")  # a written-out Colab link


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def release_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("release") / "student"
    _tool("release").build(tree, commit=False)
    return tree


def test_release_holds_the_student_editions_and_no_solution(release_tree: Path) -> None:
    release = _tool("release")
    names = {path.relative_to(release_tree).as_posix() for path in release_tree.rglob("*") if path.is_file()}
    students = {f"{project.STUDENT_DIR}/{p.name}" for p in (REPO / project.STUDENT_DIR).glob("*.ipynb")}
    assert students <= names and "README.md" in names and "Codes/quantlab/project.py" in names
    assert not names & {"labs/answer_key.md", "labs/instructor_guide.md", "tests/test_notebooks.py"}
    assert not [name for name in names if name.startswith(("tests/wrong_answers", "tools/"))]
    assert not [name for name in names if name.startswith(f"{project.NOTEBOOKS_DIR}/") and "/student/" not in name]
    assert release.solution_problems(release_tree) == []


def test_the_check_finds_each_kind_of_leak(release_tree: Path, tmp_path: Path) -> None:
    """The check is not vacuous: a solution notebook, the answer key's sentence, a marker, each is found."""
    release = _tool("release")
    sentence = release.answer_key_sentences()[3]
    leaky = tmp_path / "leaky"
    shutil.copytree(release_tree, leaky)
    shutil.copy2(REPO / project.NOTEBOOKS_DIR / "01_why_and_how.ipynb", leaky / project.NOTEBOOKS_DIR)
    (leaky / "labs" / "02_quantization.md").write_text(f"Hint for you:\n{sentence}\n", encoding="utf-8")
    (leaky / "Codes" / "cheat.py").write_text(f"{release.SOLUTION_MARKER}\nx = 1\n", encoding="utf-8")
    problems = "\n".join(release.solution_problems(leaky))
    assert "01_why_and_how.ipynb: a solution notebook" in problems
    assert "02_quantization.md: holds the answer key's" in problems
    assert "cheat.py: holds a solution marker" in problems
    assert len(release.answer_key_sentences()) >= 50, "the answer key has few long sentences: check MIN_SENTENCE"


def test_release_refuses_a_folder_that_holds_files(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "release.py"), str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not an empty folder" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_a_failed_check_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = _tool("release")
    monkeypatch.setattr(release, "INSTRUCTOR_FILES", ())  # the answer key would now be copied: the check fails
    monkeypatch.setattr(release, "INCLUDE_GLOBS", (*release.INCLUDE_GLOBS, "labs/answer_key.md"))
    with pytest.raises(KitError, match="problem"):
        release.build(tmp_path / "out", commit=False)
    assert list(tmp_path.iterdir()) == []


def test_a_changed_address_reaches_every_notebook_and_markdown_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = _tool("sync_notebooks")
    for folder in ("notebooks", "labs", "docs"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    shutil.copy2(REPO / "README.md", tmp_path / "README.md")
    old = f"github.com/{project.REPO}"
    monkeypatch.setattr(project, "REPO", "a-teacher/her-fork")
    monkeypatch.setattr(project, "REF", "v9.9.9")
    monkeypatch.setattr(sync, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(sync, "NOTEBOOKS", tmp_path / project.NOTEBOOKS_DIR)
    monkeypatch.setattr(sync, "STUDENT_NOTEBOOKS", tmp_path / project.STUDENT_DIR)
    original = sync.markdown_documents
    monkeypatch.setattr(sync, "markdown_documents", lambda root=tmp_path: original(tmp_path))
    assert sync.main([]) == 0
    documents = [*tmp_path.rglob("*.ipynb"), *tmp_path.rglob("*.md")]
    stale = [p.relative_to(tmp_path).as_posix() for p in documents if old in p.read_text(encoding="utf-8")]
    assert not stale, f"still naming {old}: {stale}"
    for path in documents:
        text = path.read_text(encoding="utf-8")
        if "colab.research.google.com/github/" in text:
            assert "github/a-teacher/her-fork/blob/v9.9.9/" in text, path.name
    setup = (tmp_path / project.STUDENT_DIR / "07_pt2e.ipynb").read_text(encoding="utf-8")
    assert "https://github.com/a-teacher/her-fork" in setup and "@v9.9.9" in setup
    assert (
        "git clone https://github.com/a-teacher/her-fork.git"
        in (tmp_path / "labs" / "01_pi_setup_and_realtime.md").read_text()
    )
    assert (
        "--branch v9.9.9 https://github.com/a-teacher/her-fork.git"
        in (tmp_path / "labs" / "homework_on_colab.md").read_text()
    )


def test_no_file_holds_a_copy_of_the_address_the_tools_do_not_rewrite() -> None:
    """The address lives in quantlab/project.py; the notebooks and Markdown hold generated copies that
    tools/sync_notebooks.py rewrites (test_notebooks.py checks they are current). Any other copy goes stale."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    sync = _tool("sync_notebooks")
    managed = {p.relative_to(REPO).as_posix() for p in sync.markdown_documents()}
    copies = []
    for name in listed.stdout.split():
        path = REPO / name
        if name == "Codes/quantlab/project.py" or name in managed or name.endswith(".ipynb") or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if project.REPO in text or COLAB_ADDRESS.search(text):
            copies.append(name)
    assert not copies, f"hard-coded copies of the kit's address (derive them from quantlab.project): {copies}"
