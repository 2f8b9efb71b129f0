"""quantlab.timing: instability is flagged from the spread or the reference workload (on given numbers: timings
are never asserted)."""

from __future__ import annotations

from quantlab import timing


def test_instability_is_flagged_from_the_spread_or_the_reference_workload():
    steady = [10.0] * 20
    assert timing.instability(steady, 5.0, 5.4) is None
    assert "p90 is 4.0x the median" in timing.instability([10.0] * 11 + [40.0] * 9, 5.0, 5.0)
    assert "reference workload took 5.00 ms before and 9.00 ms after" in timing.instability(steady, 5.0, 9.0)
