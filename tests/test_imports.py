"""The import graph of Codes/quantlab: no cycle, and nothing of the lessons imports the grader.

Read from the source (ast), not by importing: module-level imports make the
graph that must have no cycle (a function's own import runs only when called,
to keep torch-heavy modules off a path that does not need them); every import,
module-level or not, counts for the rule that the grader is imported only by
grade.py and its tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CODES = Path(__file__).resolve().parents[1] / "Codes"
PACKAGE = CODES / "quantlab"


def module_name(path: Path) -> str:
    parts = path.relative_to(CODES).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module_level_only: bool) -> set[str]:
    """The quantlab modules ``path`` imports (``from quantlab import a, b`` counts as quantlab.a, quantlab.b)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    if module_level_only:  # a guarded import (if TYPE_CHECKING, try) still runs at import
        nodes = [n for top in tree.body for n in ast.walk(top) if not isinstance(top, (ast.FunctionDef, ast.ClassDef))]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("quantlab")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("quantlab"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                exists = (CODES / Path(*candidate.split("."))).with_suffix(".py").exists() or (
                    CODES / Path(*candidate.split("."))
                ).is_dir()
                found.add(candidate if exists else node.module)
    return found


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def graph(module_level_only: bool) -> dict[str, set[str]]:
    return {name: imports(path, module_level_only) & set(MODULES) for name, path in MODULES.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first = last), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = "open", stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node], _ = "done", stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycle():
    assert find_cycle(graph(module_level_only=True)) is None


@pytest.mark.parametrize("name", [name for name in MODULES if not name.startswith("quantlab.grader")])
def test_the_lessons_never_import_the_grader(name):
    assert not any(target.startswith("quantlab.grader") for target in imports(MODULES[name], False)), name


def test_only_grade_py_imports_the_grader():
    scripts = {
        path.name for path in CODES.glob("*.py") if any(t.startswith("quantlab.grader") for t in imports(path, False))
    }
    assert scripts <= {"grade.py"}, scripts


def test_the_vocabulary_imports_nothing_of_the_kit():
    assert imports(MODULES["quantlab.vocab"], False) == set()
