"""quantlab.stats: paired comparisons of two models on the same photos (McNemar, intervals, the table)."""

from __future__ import annotations

import pytest
import torch

from quantlab import stats
from quantlab.errors import KitError


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


def test_tied_logits_score_the_same_in_the_table_and_the_paired_hits():
    """int8 logits tie often: evaluate's top-1 and top1_hits must pick the same class (the lower index)."""
    from quantlab import bench

    logits = torch.zeros(4, 1000)
    logits[:, [3, 7, 500]] = 5.0  # three classes tie at the top
    labels = torch.tensor([3, 7, 500, 3])

    def tied(images: torch.Tensor) -> torch.Tensor:
        return logits[: images.shape[0]]

    batches = [(torch.zeros(4, 3, 8, 8), labels)]
    table = bench.evaluate(tied, batches, progress=False, keep_hits=True)
    hits = stats.top1_hits(tied, batches)
    assert hits.tolist() == [True, False, False, True] == table["hits"].tolist()
    assert table["top1"] == 50.0 and table["top5"] == 100.0
