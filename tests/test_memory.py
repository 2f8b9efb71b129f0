"""quantlab.memory: peaks, the notebooks' check before a heavy step, and tools/notebook_memory.py."""

from __future__ import annotations

import sys

import pytest
import torch

from quantlab import memory
from quantlab.errors import KitError

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-step peaks need Linux's /proc")


@linux
def test_the_peak_of_a_step_is_measured_and_reset():
    memory.reset_peak()
    before = memory.peak_rss_mb()
    block = torch.ones(300 * 2**20 // 4)  # 300 MB, touched
    grown = memory.peak_rss_mb()
    del block
    assert grown - before > 250
    assert memory.reset_peak()
    assert memory.peak_rss_mb() < grown - 250  # a new step starts from what is resident now


def test_check_room_says_so_before_a_step_that_cannot_fit(monkeypatch, capsys):
    monkeypatch.setattr(memory, "current_rss_mb", lambda: 1000.0)
    monkeypatch.setattr(memory, "available_mb", lambda: 3000.0)
    memory.check_room(3500, "notebook 6 in full mode")
    assert "needs about 2500 MB more; 3000 MB available" in capsys.readouterr().out
    monkeypatch.setattr(memory, "available_mb", lambda: 2000.0)
    with pytest.raises(KitError, match="needs about 2500 MB more memory and this machine has 2000 MB available"):
        memory.check_room(3500, "notebook 6 in full mode")
    monkeypatch.setattr(memory, "available_mb", lambda: None)  # macOS, Windows: say what was measured, go on
    memory.check_room(3500, "notebook 6 in full mode")
    assert "peaked at 3500 MB when measured" in capsys.readouterr().out


def test_notebook_memory_measures_after_every_code_cell():
    import importlib.util
    from pathlib import Path

    import nbformat

    path = Path(__file__).resolve().parents[1] / "tools" / "notebook_memory.py"
    spec = importlib.util.spec_from_file_location("notebook_memory", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# t"),
            nbformat.v4.new_code_cell("a = 1"),
            nbformat.v4.new_code_cell("b = 2"),
        ]
    )
    copy, measured = tool.measured_copy(notebook)
    assert [cell.source == tool.MEASURE for cell in copy.cells] == [True, False, False, True, False, True]
    assert measured == [-1, 1, 2]  # the kernel at start, then each code cell by its index in the notebook
