"""Accuracy gates that respect noise: the paired 95 % interval of each model's top-1 drop, and the rubric's rule.

The grader's child sends back one bit per evaluation photo (right or wrong at top-1, ``pack_hits``); the
grader pairs a model's bits with the fp32 baseline's, photo by photo, and bootstraps the interval of the drop
(``quantlab.stats.paired_difference``, the notebooks' tool). A gate ("loses at most 1 point") then reads the
rubric's ``accuracy.gate`` rule:

- ``interval`` (default): the model fails only when the whole interval lies beyond the limit, so a model the
  photos cannot tell from one within the limit passes;
- ``point``: the measured drop alone decides (the rule without re-measuring, where no bits exist).

Example:
    drop = drop_interval(baseline_bits, model_bits, images=900)   # {"difference", "low", "high", ...}
    fails_gate(drop_point=1.22, drop_low=0.11, limit=1.0, rule="interval")   # False: 0.11 is within 1
"""

from __future__ import annotations

import re

import numpy as np

GATE_RULES = ("interval", "point")
RESAMPLES = 2000  # bootstrap draws: the interval's ends move by a few hundredths of a point between seeds


def pack_hits(hits) -> str:
    """One bit per photo (top-1 right), as hex: 900 photos are 226 characters of JSON."""
    return np.packbits(np.asarray(hits, dtype=bool)).tobytes().hex()


def unpack_hits(packed: object, images: object) -> np.ndarray | None:
    """The bits ``pack_hits`` made, or None when ``packed`` is not exactly ``images`` bits of hex."""
    if not isinstance(images, int) or isinstance(images, bool) or not 0 < images <= 10_000_000:
        return None
    if not isinstance(packed, str) or len(packed) != 2 * ((images + 7) // 8) or not re.fullmatch(r"[0-9a-f]*", packed):
        return None
    return np.unpackbits(np.frombuffer(bytes.fromhex(packed), dtype=np.uint8))[:images].astype(bool)


def drop_interval(baseline_hits: np.ndarray, model_hits: np.ndarray) -> dict | None:
    """fp32's top-1 minus the model's, in points, with its paired 95 % bootstrap interval; None if unpaired."""
    import torch

    from quantlab import stats

    if baseline_hits.shape != model_hits.shape or baseline_hits.size == 0:
        return None
    return stats.paired_difference(
        torch.from_numpy(baseline_hits.copy()), torch.from_numpy(model_hits.copy()), resamples=RESAMPLES
    )


def fails_gate(drop_point: float, drop_low: float | None, limit: float, rule: str) -> bool:
    """True when a model losing ``drop_point`` points (interval from ``drop_low``) loses more than ``limit``.

    ``interval``: only when the interval's low end is beyond ``limit`` (without an interval, the point decides).
    """
    if rule == "interval" and drop_low is not None:
        return drop_low > limit
    return drop_point > limit


def describe_drop(drop_point: float, drop_low: float | None, drop_high: float | None) -> str:
    """'1.22 points [0.11, 2.33]' or '1.22 points' without an interval."""
    if drop_low is None or drop_high is None:
        return f"{drop_point:.2f} points"
    return f"{drop_point:.2f} points, 95 % interval [{drop_low:+.2f}, {drop_high:+.2f}]"


def rule_line(rubric: dict, intervals: bool) -> str:
    """The leaderboard header's line on how accuracy gates were read."""
    rule = rubric["accuracy"]["gate"]
    if rule == "interval" and intervals:
        how = (
            "a model fails an accuracy gate (open target: at most "
            f"{rubric['open']['max_drop']:g} point lost) only when the paired 95 % interval of its drop lies "
            "wholly beyond it; drops are shown as point [low, high]"
        )
    elif rule == "interval":
        how = "rule 'interval', but without --remeasure there are no per-photo answers: the claimed drop decides"
    else:
        how = "the measured drop alone decides each gate (rule 'point'); intervals are shown for reading"
    return f"accuracy gates: {how}"
