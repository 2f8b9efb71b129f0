"""Is an accuracy difference a result or noise? Paired comparisons of two models on the same photos.

Two models measured on the same 800 photos differ by a handful of photos. Whether
that is a result depends on the photos where exactly one of them is right: a
paired bootstrap (resample the photos, recompute the difference) gives an interval
for the difference, and McNemar's exact test gives the chance of a split at least
this lopsided if both models were equally good.

Example:
    from quantlab import stats
    fp32_hits = stats.top1_hits(fp32, data.loader(evaluation))
    int8_hits = stats.top1_hits(int8, data.loader(evaluation))
    print(stats.describe(stats.paired_difference(int8_hits, fp32_hits), "int8", "fp32"))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from quantlab.errors import KitError


def top1_hits(model: Callable[[torch.Tensor], torch.Tensor], batches: Iterable) -> torch.Tensor:
    """One bool per photo: whether ``model``'s top-1 class is the label (unreadable batches skipped)."""
    hits = []
    with torch.inference_mode():
        for batch in batches:
            if batch is None:
                continue
            images, labels = batch
            hits.append(model(images).argmax(1) == labels)
    if not hits:
        raise KitError("no photo could be read; pass a folder of readable, labelled photos")
    return torch.cat(hits)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: photos only model A gets right against photos only B gets right."""
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(only_a, only_b) + 1)) / 2**discordant
    return min(1.0, 2 * tail)


def paired_difference(
    hits_a: torch.Tensor, hits_b: torch.Tensor, resamples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> dict:
    """Top-1 of A minus top-1 of B in points, its paired-bootstrap interval and McNemar's p.

    ``noise`` is True when the interval contains 0: the photos cannot tell the two models apart.
    """
    if hits_a.shape != hits_b.shape or hits_a.ndim != 1 or hits_a.numel() == 0:
        raise KitError(f"compare two models on the same photos: got {tuple(hits_a.shape)} and {tuple(hits_b.shape)}")
    a, b = hits_a.float(), hits_b.float()
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, a.numel(), (resamples, a.numel()), generator=generator)
    differences = 100 * (a[picks].mean(1) - b[picks].mean(1))
    low, high = torch.quantile(differences, torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2])).tolist()
    only_a, only_b = int((hits_a & ~hits_b).sum()), int((~hits_a & hits_b).sum())
    return {
        "difference": round(100 * float(a.mean() - b.mean()), 2),
        "low": round(low, 2),
        "high": round(high, 2),
        "confidence": confidence,
        "only_a": only_a,
        "only_b": only_b,
        "photos": a.numel(),
        "mcnemar_p": round(mcnemar_p(only_a, only_b), 4),
        "noise": low <= 0 <= high,
    }


def reading(difference: dict) -> str:
    """noise (the interval contains 0), better or worse: how to read a ``paired_difference``."""
    return "noise" if difference["noise"] else ("better" if difference["difference"] > 0 else "worse")


def describe(difference: dict, name_a: str, name_b: str) -> str:
    """One line: the difference, its interval, the discordant photos and the verdict."""
    read = reading(difference)
    verdict = "noise: these photos cannot tell them apart" if read == "noise" else f"{name_a} is {read}"
    return (
        f"{name_a} - {name_b}: {difference['difference']:+.2f} points, {100 * difference['confidence']:.0f}% "
        f"interval [{difference['low']:+.2f}, {difference['high']:+.2f}] on {difference['photos']} photos "
        f"(only {name_a} right: {difference['only_a']}, only {name_b} right: {difference['only_b']}, "
        f"McNemar p = {difference['mcnemar_p']:.3f}): {verdict}"
    )


def difference_table(hits: dict[str, torch.Tensor], baseline: str) -> str:
    """A text table: each model's top-1, its difference from ``baseline`` with the interval, McNemar's p, a verdict.

    ``hits``: model name -> one bool per photo, every model on the same photos (``top1_hits``, or ``bench.evaluate``
    with ``keep_hits``).
    """
    only_baseline = f"only {baseline} right"
    width = len(only_baseline) + 2
    header = (
        f"{'model':<28}{'top-1 %':>8}  {f'minus {baseline} (points) [95% interval]':<44}{'McNemar p':>10}"
        f"{'only it right':>15}{only_baseline:>{width}}  reading"
    )
    lines = [header, "-" * len(header)]
    for name, model_hits in hits.items():
        top1 = 100 * model_hits.float().mean().item()
        if name == baseline:
            lines.append(f"{name[:27]:<28}{top1:>8.2f}  (the baseline)")
            continue
        difference = paired_difference(model_hits, hits[baseline])
        interval = f"{difference['difference']:+.2f} [{difference['low']:+.2f}, {difference['high']:+.2f}]"
        lines.append(
            f"{name[:27]:<28}{top1:>8.2f}  {interval:<44}{difference['mcnemar_p']:>10.3f}{difference['only_a']:>15}"
            f"{difference['only_b']:>{width}}  {reading(difference)}"
        )
    photos = next(iter(hits.values())).numel()
    lines.append(f"{photos} photos; reading: noise when the 95% paired-bootstrap interval contains 0")
    return "\n".join(lines)


def plot_differences(axis, hits: dict[str, torch.Tensor], baseline: str) -> None:
    """Each model's top-1 minus ``baseline``'s on ``axis`` (matplotlib), its 95% paired interval as the error bar."""
    names = list(hits)
    differences = [paired_difference(hits[name], hits[baseline]) for name in names]
    axis.errorbar(
        [d["difference"] for d in differences],
        range(len(names)),
        xerr=[[d["difference"] - d["low"] for d in differences], [d["high"] - d["difference"] for d in differences]],
        fmt="o",
        capsize=4,
        color="black",
    )
    axis.axvline(0, color="gray", linewidth=1)  # no difference
    axis.set_yticks(range(len(names)), names)
    axis.invert_yaxis()  # the first model on top, as in the tables
    axis.set_xlabel(f"top-1 minus {baseline} (points)\n95% paired interval, {hits[baseline].numel()} photos")
