"""Regenerate every notebook's title/badge cell and setup cell from Codes/quantlab/project.py.

The repository's address is written in one place (``quantlab.project``). This
tool rewrites, in each ``notebooks/*.ipynb``:

- the title cell (id ``title``): its H1 line, then the "Open in Colab" badge;
- the setup cell (id ``setup``): the pip lines that install the kit on Colab;

and clears outputs and execution counts: notebooks are stored without outputs
(CI executes them). A notebook without those cells gets them: its first "# "
markdown cell becomes the title cell, its first code cell that mentions
google.colab becomes the setup cell, else a setup cell is inserted after the title.

Examples:
    python tools/sync_notebooks.py            # rewrite the notebooks that are out of date
    python tools/sync_notebooks.py --check    # exit 1 and name them, changing nothing (tests run this)
    python tools/sync_notebooks.py notebooks/03_static_ptq.ipynb   # only the notebooks named
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

from quantlab import files, project
from quantlab.assets import REPO_ROOT
from quantlab.errors import KitError, run_cli

NOTEBOOKS = REPO_ROOT / project.NOTEBOOKS_DIR
TITLE_ID = "title"
SETUP_ID = "setup"


def title_source(notebook: Path, current: str) -> str:
    """The title cell: the notebook's H1 line kept as written, then its badge."""
    heading = current.strip().splitlines()[0] if current.strip() else ""
    if not heading.startswith("# "):
        raise KitError(f"{notebook.name}: the title cell must start with an H1 line ('# Title')")
    return f"{heading}\n\n{project.colab_badge(notebook.name)}"


def _find_cell(cells: list, cell_id: str, fallback) -> int | None:
    for index, cell in enumerate(cells):
        if cell.get("id") == cell_id:
            return index
    for index, cell in enumerate(cells):
        if fallback(cell):
            cell["id"] = cell_id
            return index
    return None


def synced(notebook: Path) -> str:
    """The notebook's text as it should be stored."""
    nb = nbformat.read(notebook, as_version=4)
    cells = nb.cells
    title = _find_cell(cells, TITLE_ID, lambda c: c.cell_type == "markdown" and c.source.lstrip().startswith("# "))
    if title is None:
        raise KitError(f"{notebook.name} has no title cell; start it with a markdown cell '# Title'")
    cells[title].source = title_source(notebook, cells[title].source)
    setup = _find_cell(cells, SETUP_ID, lambda c: c.cell_type == "code" and "google.colab" in c.source)
    if setup is None:
        cells.insert(title + 1, nbformat.v4.new_code_cell(project.setup_cell_source(), id=SETUP_ID))
    else:
        cells[setup].source = project.setup_cell_source()
    for cell in cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nbformat.writes(nb) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to sync (default: all in notebooks/)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook is out of date")
    args = parser.parse_args()
    notebooks = args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb"))
    if not notebooks:
        raise KitError(f"no notebooks in {NOTEBOOKS}")
    missing = [str(path) for path in notebooks if not path.is_file()]
    if missing:
        raise KitError(f"no such notebook: {', '.join(missing)}")
    stale = []
    for notebook in notebooks:
        text = synced(notebook)
        if text == notebook.read_text(encoding="utf-8"):
            continue
        stale.append(notebook.name)
        if not args.check:
            files.write_text(notebook, text)
    if args.check:
        if stale:
            print(f"out of date (run python tools/sync_notebooks.py): {', '.join(stale)}", file=sys.stderr)
            return 1
        print(f"{len(notebooks)} notebooks in sync with quantlab.project ({project.REPO}@{project.BRANCH})")
        return 0
    print(f"updated {len(stale)} of {len(notebooks)} notebooks" + (f": {', '.join(stale)}" if stale else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)
