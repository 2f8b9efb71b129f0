"""quantlab.memory (peaks, and the notebooks' check before a heavy step) and quantlab.stats (paired comparisons)."""

from __future__ import annotations

import sys

import pytest
import torch

from quantlab import memory, stats
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


def test_mcnemar_exact_p_values():
    assert stats.mcnemar_p(0, 0) == 1.0
    assert stats.mcnemar_p(5, 5) == 1.0
    assert stats.mcnemar_p(3, 0) == pytest.approx(0.25)  # 2 * (1/2)^3
    assert stats.mcnemar_p(0, 10) == pytest.approx(2 / 1024)
    assert stats.mcnemar_p(4, 1) == stats.mcnemar_p(1, 4) == pytest.approx(2 * 6 / 32)


def test_two_photos_out_of_800_are_noise_and_a_real_gap_is_not():
    truth = torch.rand(800, generator=torch.Generator().manual_seed(0)) < 0.83
    two_fewer = truth.clone()
    two_fewer[truth.nonzero()[:2, 0]] = False
    close = stats.paired_difference(two_fewer, truth)
    assert close["difference"] == pytest.approx(-0.25) and close["only_a"] == 0 and close["only_b"] == 2
    assert close["noise"] and close["low"] <= 0 <= close["high"] and close["mcnemar_p"] == pytest.approx(0.5)
    assert "noise: these photos cannot tell them apart" in stats.describe(close, "int8", "fp32")
    forty_fewer = truth.clone()
    forty_fewer[truth.nonzero()[:40, 0]] = False
    far = stats.paired_difference(forty_fewer, truth)
    assert not far["noise"] and far["high"] < 0 and far["mcnemar_p"] < 1e-6
    assert "int8 is worse" in stats.describe(far, "int8", "fp32")


def test_paired_difference_needs_the_same_photos():
    with pytest.raises(KitError, match="same photos"):
        stats.paired_difference(torch.ones(10, dtype=torch.bool), torch.ones(9, dtype=torch.bool))


def test_top1_hits_skips_unreadable_batches():
    model = torch.nn.Linear(4, 3)
    images = torch.randn(5, 4)
    labels = model(images).argmax(1)
    labels[0] = (labels[0] + 1) % 3
    hits = stats.top1_hits(model, [None, (images, labels)])
    assert hits.tolist() == [False, True, True, True, True]
    with pytest.raises(KitError, match="no photo could be read"):
        stats.top1_hits(model, [None])


def test_evaluate_keeps_the_hits_it_scored_and_the_table_reads_them():
    from quantlab import bench

    model = torch.nn.Linear(4, 1000)
    images = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    labels = model(images).argmax(1)
    labels[:2] = (labels[:2] + 1) % 1000
    result = bench.evaluate(
        model, [None, (images[:3], labels[:3]), (images[3:], labels[3:])], progress=False, keep_hits=True
    )
    assert result["hits"].tolist() == [False, False, True, True, True, True]
    assert result["top1"] == pytest.approx(100 * 4 / 6, abs=0.01) and "hits" not in bench.evaluate(
        model, [(images, labels)], progress=False
    )
    truth = torch.rand(800, generator=torch.Generator().manual_seed(0)) < 0.83
    worse = truth.clone()
    worse[truth.nonzero()[:40, 0]] = False
    table = stats.difference_table({"fp32": truth, "int8": worse, "again": truth.clone()}, baseline="fp32")
    rows = {line.split()[0]: line for line in table.splitlines()[2:5]}
    assert "(the baseline)" in rows["fp32"] and rows["int8"].endswith("worse") and rows["again"].endswith("noise")
    assert "-5.00 [" in rows["int8"] and "800 photos" in table


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
