"""Write the student release: the kit without its solutions, as a new git repository.

The instructors' tree (this one) holds the solution notebooks, the answer key,
the instructor guide and the wrong answers the tests feed to the self-checks.
Students get a generated release instead (nbgrader's model: the source stays
private, a release is handed out):

- ``notebooks/student/*.ipynb``: the student editions, at the same path, so every
  Colab link and relative link in the labs holds in both trees;
- ``Codes/`` (the kit, the demo, the grader students may run on their own hand-in);
- the student-facing labs (``labs/`` without the answer key and instructor guide),
  ``docs/`` without the instructors' pages, ``configs/``;
- ``docs/student_readme.md`` as ``README.md``; the requirements files, pyproject.toml, .gitignore;
- the tests that make sense there (``RELEASE_TESTS``: the kit's fast checks and the student editions').

It then checks the tree: no solution marker, no file of the instructors', no
sentence of the answer key, every relative link resolving; a failed check
leaves nothing behind. Last it runs ``git init``, commits the tree as its only
commit and tags it ``project.REF``: push that repository to ``project.REPO``
(docs/release.md).

Examples:
    python tools/release.py ../student-release          # DIR must not exist, or be empty
    python tools/release.py ../student-release --no-git  # the tree only (tests build it this way)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from quantlab import project
from quantlab.assets import REPO_ROOT
from quantlab.errors import KitError, run_cli

# (source path relative to the repository root, path in the release); folders are copied whole (INCLUDE_GLOBS)
RENAMED = {"docs/student_readme.md": "README.md"}
INCLUDE_GLOBS = (
    "Codes/**/*",
    "configs/*",
    "labs/*.md",
    "docs/*.md",
    "docs/runs/*.json",  # what docs/figures.md is generated from
    f"{project.STUDENT_DIR}/*.ipynb",
    "requirements-*.txt",
    "docker/*",  # the demo as a container, for students on a Pi (labs/01 links it)
    ".dockerignore",
    "pyproject.toml",
    ".gitignore",
    "LICENSE",  # the terms a course reuses the kit under, and the third parties' (weights, photos)
    "LICENSE-docs.md",
    "NOTICE.md",
    "CONTRIBUTING.md",
)
# The instructors' files: what they hold is the answers, or how to grade them.
INSTRUCTOR_FILES = ("labs/answer_key.md", "labs/instructor_guide.md", "docs/release.md")
RELEASE_TESTS = (
    "tests/conftest.py",
    "tests/test_compat.py",
    "tests/test_config.py",
    "tests/test_files.py",
    "tests/test_models.py",
    "tests/test_report.py",
    "tests/test_student_editions.py",
)
SOLUTION_MARKER = "# ---- your code here (this solution runs in CI: hide it and write your own) ----"
ANSWER_KEY = "labs/answer_key.md"
MIN_SENTENCE = 60  # characters: shorter sentences of the answer key ("Not measured.") may be said anywhere
LINK = re.compile(r"\]\((?!https?://|mailto:|#)([^)\s#]+)")
SKIP_PARTS = {"__pycache__", ".ipynb_checkpoints"}


def release_files(root: Path = REPO_ROOT) -> dict[str, Path]:
    """Path in the release -> file in this tree."""
    chosen: dict[str, Path] = {}
    for pattern in (*INCLUDE_GLOBS, *RELEASE_TESTS):
        for path in sorted(root.glob(pattern)):
            relative = path.relative_to(root).as_posix()
            if not path.is_file() or SKIP_PARTS & set(path.parts) or relative in INSTRUCTOR_FILES:
                continue
            if path.suffix in (".pyc", ".pyo") or ".egg-info" in relative:
                continue
            chosen[RENAMED.get(relative, relative)] = path
    missing = [name for name in (*RELEASE_TESTS, *RENAMED) if not (root / name).is_file()]
    if missing:
        raise KitError(f"the release needs {', '.join(missing)}, which this tree lacks")
    return chosen


def answer_key_sentences(root: Path = REPO_ROOT) -> list[str]:
    """The answer key's sentences long enough to be an answer (whitespace and Markdown emphasis folded)."""
    text = _folded((root / ANSWER_KEY).read_text(encoding="utf-8"))
    sentences = re.split(r"(?<=[.:;?!])\s+|\n", text)
    return [sentence for sentence in sentences if len(sentence) >= MIN_SENTENCE]


def _folded(text: str) -> str:
    return re.sub(r"[ \t]+", " ", re.sub(r"\s*\n\s*(?!\n)", " ", text.replace("**", "").replace("`", "")))


def solution_problems(tree: Path, root: Path = REPO_ROOT) -> list[str]:
    """What in ``tree`` gives a solution away (empty when nothing does)."""
    problems = []
    sentences = answer_key_sentences(root)
    for path in sorted(p for p in tree.rglob("*") if p.is_file() and ".git" not in p.relative_to(tree).parts):
        relative = path.relative_to(tree).as_posix()
        if relative in INSTRUCTOR_FILES or relative.startswith("tests/wrong_answers/"):
            problems.append(f"{relative}: an instructors' file")
            continue
        if relative.startswith(f"{project.NOTEBOOKS_DIR}/") and not relative.startswith(f"{project.STUDENT_DIR}/"):
            problems.append(f"{relative}: a solution notebook")
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary: no prose in it
        if SOLUTION_MARKER in text:
            problems.append(f"{relative}: holds a solution marker")
        folded = _folded(text)
        leaked = [sentence for sentence in sentences if sentence in folded]
        if leaked:
            problems.append(f"{relative}: holds the answer key's '{leaked[0][:70]}...'")
    return problems


def broken_links(tree: Path) -> list[str]:
    """Relative Markdown links (in .md files and notebooks) that point at nothing in ``tree``."""
    broken = []
    for path in sorted([*tree.rglob("*.md"), *tree.rglob("*.ipynb")]):
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".ipynb":  # links live in the Markdown cells; code like f(x)[0](y) is no link
            cells = json.loads(text)["cells"]
            text = "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown")
        for target in LINK.findall(text):
            if not (path.parent / target.split("?")[0]).exists():
                broken.append(f"{path.relative_to(tree).as_posix()} -> {target}")
    return broken


def write_tree(destination: Path, root: Path = REPO_ROOT) -> list[str]:
    """Copy the release into ``destination`` (new or empty) and check it; the release's paths, sorted."""
    chosen = release_files(root)
    for relative, source in chosen.items():
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    problems = solution_problems(destination, root) + [f"broken link {link}" for link in broken_links(destination)]
    if problems:
        raise KitError(f"the release would hold {len(problems)} problem(s), first: {problems[0]}")
    return sorted(chosen)


def git_commit(tree: Path) -> str:
    """``git init``, one commit of the whole tree, tag ``project.REF``; the commit id."""
    environment = {
        **os.environ,
        "GIT_AUTHOR_NAME": os.environ.get("GIT_AUTHOR_NAME", "quantlab release"),
        "GIT_AUTHOR_EMAIL": os.environ.get("GIT_AUTHOR_EMAIL", "release@quantlab.invalid"),
        "GIT_COMMITTER_NAME": os.environ.get("GIT_COMMITTER_NAME", "quantlab release"),
        "GIT_COMMITTER_EMAIL": os.environ.get("GIT_COMMITTER_EMAIL", "release@quantlab.invalid"),
    }

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=tree, env=environment, capture_output=True, text=True)
        if result.returncode != 0:
            raise KitError(f"git {args[0]} failed in {tree}: {(result.stderr or result.stdout).strip()[:200]}")
        return result.stdout.strip()

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", f"Student release {project.REF} of {project.REPO}")
    git("tag", project.REF)
    return git("rev-parse", "HEAD")


def build(destination: Path, commit: bool = True, root: Path = REPO_ROOT) -> list[str]:
    """Write the release into ``destination``; nothing is left there when a check fails."""
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise KitError(f"{destination} exists and is not an empty folder; name a new one")
    if commit and shutil.which("git") is None:
        raise KitError("git is not installed; install it, or pass --no-git for the tree alone")
    destination.parent.mkdir(parents=True, exist_ok=True)
    # built beside the destination, then renamed: a failed check or git leaves no half-written release
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=f".{destination.name}.") as scratch:
        tree = Path(scratch) / "release"
        tree.mkdir()
        files = write_tree(tree, root)
        if commit:
            git_commit(tree)
        if destination.exists():
            destination.rmdir()
        tree.rename(destination)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("destination", type=Path, help="a new (or empty) folder for the release")
    parser.add_argument("--no-git", action="store_true", help="write and check the tree only, no git repository")
    args = parser.parse_args(argv)
    files = build(args.destination.resolve(), commit=not args.no_git)
    tops: dict[str, int] = {}
    for name in files:
        top = name.split("/")[0] if "/" in name else "."
        tops[top] = tops.get(top, 0) + 1
    summary = ", ".join(
        f"{top}/ {count}" if top != "." else f"top level {count}" for top, count in sorted(tops.items())
    )
    tagged = "" if args.no_git else f", one commit tagged {project.REF}"
    print(f"wrote {len(files)} files to {args.destination} ({summary}){tagged}; no solution found in it")
    return 0


if __name__ == "__main__":
    run_cli(main)
