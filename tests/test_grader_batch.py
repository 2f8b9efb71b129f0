"""One sandboxed child per student (issue #28): each model keeps its own time limit, and the student's budget holds.

The child answers model by model: a model past its limit is stopped alone (the
answers before it are kept, a fresh child answers the ones after it), and once
the student's budget is spent the models not yet started are not run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from test_grader_sandbox import Tiny, Unrolled

LIMIT = 20.0  # seconds per model: loading torch in a fresh child fits in it on a loaded machine


def _saved(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def test_a_slow_model_costs_only_itself_and_the_budget_stops_the_rest(tmp_path):
    from quantlab.grader import sandbox

    tiny = [_saved(Tiny(seed), tmp_path / f"tiny{seed}.pt") for seed in range(3)]
    slow = _saved(Unrolled(), tmp_path / "slow.pt")  # minutes of matrix products: only the limit stops it
    models = [tiny[0], slow, tiny[1], slow, tiny[2]]
    request = {"task": "check", "threads": 1, "data": None}
    limits = sandbox.Limits(wall_seconds=LIMIT, threads=1)
    outcomes = sandbox.run_models([(path, None) for path in models], request, limits, sandbox.RLIMITS, (), 1.5 * LIMIT)
    first, timed_out, second, late, last = outcomes
    assert first.result["ok"] is True and first.result["method"] == "fp32"
    assert timed_out.result is None and f"did not finish within {LIMIT:.0f} s" in timed_out.failure
    assert second.result["ok"] is True  # answered by a fresh child, after the slow model was stopped
    assert second.result["answers_sha256"] != first.result["answers_sha256"]  # each model answered for itself
    # past 1.5 limits the models not yet started are not run (the second slow one may have started in time)
    assert late is None or "did not finish" in late.failure
    assert last is None
