"""Peak resident memory of each notebook, cell by cell, in full mode (or smoke mode).

Runs each notebook top to bottom in a fresh kernel, as Colab would, in a
temporary folder. After every code cell a measuring cell (not saved anywhere)
reads the kernel's peak resident memory since the previous cell (Linux's
VmHWM, see quantlab.memory) and resets it, so each cell gets its own peak. The
kernel is where everything a notebook does runs (PyTorch, ONNX Runtime): its
peak is the figure to hold against a free Colab runtime (about 12.7 GB in all).

Examples:
    python tools/notebook_memory.py notebooks/06_onnx_runtime.ipynb
    python tools/notebook_memory.py notebooks/*.ipynb --json notebook_memory.json
    python tools/notebook_memory.py notebooks/01_why_and_how.ipynb --smoke
    python tools/notebook_memory.py notebooks/07_pt2e.ipynb --executed runs/notebooks   # keep the outputs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from quantlab import cpu, files, memory
from quantlab.errors import KitError, run_cli

MARKER = "quantlab-cell-memory:"
MEASURE = (
    f"from quantlab import memory as _m\nprint({MARKER!r}, _m.peak_rss_mb(), _m.current_rss_mb()); _m.reset_peak()"
)
CELL_TIMEOUT_S = 3600  # full mode: a QAT epoch on 2 cores takes minutes


def measured_copy(notebook: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, list[int]]:
    """The notebook with a measuring cell after each code cell (and one first: the kernel at start);
    the original index of each measured cell."""
    copy = nbformat.v4.new_notebook(metadata=notebook.metadata)
    copy.cells.append(nbformat.v4.new_code_cell(MEASURE))
    measured = [-1]
    for index, cell in enumerate(notebook.cells):
        copy.cells.append(cell)
        if cell.cell_type == "code":
            copy.cells.append(nbformat.v4.new_code_cell(MEASURE))
            measured.append(index)
    return copy, measured


def run_notebook(path: Path, smoke: bool, executed: Path | None = None) -> dict:
    notebook = nbformat.read(path, as_version=4)
    copy, measured = measured_copy(notebook)
    environment = {key: value for key, value in os.environ.items() if key not in ("CI", "QUANTLAB_SMOKE")}
    if smoke:
        environment["QUANTLAB_SMOKE"] = "1"
    environment["MPLBACKEND"] = "Agg"
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="quantlab-nbmem-") as folder:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(environment)  # the kernel inherits this process's environment
        try:
            NotebookClient(
                copy, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": folder}}
            ).execute()
        except CellExecutionError as error:
            raise KitError(f"{path.name} failed: {str(error).strip().splitlines()[-1][:200]}") from None
        finally:
            os.environ.clear()
            os.environ.update(saved)
    if executed is not None:  # the run's outputs, to read its figures (the measuring cells left out)
        kept = nbformat.v4.new_notebook(
            metadata=notebook.metadata, cells=[cell for cell in copy.cells if cell.source != MEASURE]
        )
        files.atomic_write(executed / path.name, lambda partial: nbformat.write(kept, str(partial)))
    readings = []
    for cell in copy.cells:
        if cell.cell_type == "code" and cell.source == MEASURE:
            text = "".join(output.get("text", "") for output in cell.get("outputs", []))
            peak, now = text.split(MARKER, 1)[1].split()
            readings.append((float(peak), float(now)))
    cells = []
    for index, (peak, now) in zip(measured, readings):
        source = notebook.cells[index].source.strip().splitlines() if index >= 0 else ["(kernel start)"]
        cells.append({"cell": index, "first_line": source[0][:70] if source else "", "peak_mb": peak, "after_mb": now})
    worst = max(cells, key=lambda c: c["peak_mb"])
    return {
        "notebook": path.name,
        "mode": "smoke" if smoke else "full",
        "peak_mb": worst["peak_mb"],
        "peak_cell": worst["cell"],
        "peak_cell_first_line": worst["first_line"],
        "minutes": round((time.monotonic() - started) / 60, 1),
        "cells": cells,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--smoke", action="store_true", help="run in smoke mode (few photos) instead of full mode")
    parser.add_argument("--json", type=Path, help="write every cell's figures here")
    parser.add_argument("--executed", type=Path, help="also save each executed notebook, outputs included, here")
    parser.add_argument("--top", type=int, default=3, help="cells listed per notebook, heaviest first")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        if not path.is_file():
            raise KitError(f"notebook {path} does not exist")
    if memory.peak_rss_mb() is None or not memory.reset_peak():
        raise KitError("per-cell peaks need Linux (/proc/self/status and clear_refs)")
    files.check_writable(args.json, "--json")
    if args.executed is not None:
        args.executed.mkdir(parents=True, exist_ok=True)
    print(f"machine: {cpu.describe()}; {memory.available_mb():.0f} MB available now")
    results = []
    for path in args.notebooks:
        result = run_notebook(path, args.smoke, args.executed)
        results.append(result)
        print(
            f"{result['notebook']} ({result['mode']} mode, {result['minutes']} min): kernel peak "
            f"{result['peak_mb']:.0f} MB"
        )
        for cell in sorted(result["cells"], key=lambda c: -c["peak_mb"])[: args.top]:
            print(
                f"  cell {cell['cell']:>3}: peak {cell['peak_mb']:>6.0f} MB, {cell['after_mb']:>6.0f} MB after  "
                f"{cell['first_line']}"
            )
    if args.json:
        text = json.dumps(results, indent=2) + "\n"
        files.write_text(args.json, text, "--json")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    run_cli(main)
