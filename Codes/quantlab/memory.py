"""Resident memory of this process: the peak while something runs, and what the machine has left.

Linux keeps the peak resident set size of a process (``VmHWM`` in
``/proc/self/status``) and lets the process reset it (writing ``5`` to
``/proc/self/clear_refs``), so the peak of one step is measured exactly,
without a sampling thread. Elsewhere (macOS, Windows) the figures are None.

Example:
    from quantlab import memory
    memory.reset_peak()
    run_the_model()
    print(f"peak {memory.peak_rss_mb():.0f} MB")
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

from quantlab.errors import KitError

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
MEMINFO = Path("/proc/meminfo")


def _status_kb(key: str) -> int | None:
    try:
        for line in STATUS.read_text(encoding="ascii").splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_mb() -> float | None:
    """Resident memory of this process now, in MB (10^6 bytes)."""
    kb = _status_kb("VmRSS")
    return None if kb is None else round(kb * 1024 / 1e6, 1)


def reset_peak() -> bool:
    """Start a new peak from the current resident memory; False where the OS cannot (peaks then count from start)."""
    try:
        CLEAR_REFS.write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process since the last ``reset_peak`` (or its start), in MB."""
    kb = _status_kb("VmHWM")
    if kb is None and sys.platform != "win32":  # macOS: ru_maxrss is in bytes, and never resets
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6, 1)
    return None if kb is None else round(kb * 1024 / 1e6, 1)


def available_mb() -> float | None:
    """Memory the machine can still give without swapping (``MemAvailable``), in MB; None where unknown."""
    try:
        for line in MEMINFO.read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return round(int(line.split()[1]) * 1024 / 1e6, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_room(peak_mb: float, what: str) -> None:
    """Say before a step starts whether the machine can hold it: a KitError when it clearly cannot.

    ``peak_mb`` is the step's measured peak resident memory (this process included,
    e.g. from tools/notebook_memory.py); what this process already holds is not
    needed again. A free Colab runtime has about 12.7 GB in all.
    """
    available = available_mb()
    if available is None:
        print(f"memory: {what} peaked at {peak_mb:.0f} MB when measured; this OS does not say what is free")
        return
    more = max(0.0, peak_mb - (current_rss_mb() or 0.0))
    if more > available:
        raise KitError(
            f"{what} needs about {more:.0f} MB more memory and this machine has {available:.0f} MB "
            "available: close other notebooks or programs (Colab: Runtime > Manage sessions), or run "
            "in smoke mode"
        )
    print(f"memory: {what} needs about {more:.0f} MB more; {available:.0f} MB available")
