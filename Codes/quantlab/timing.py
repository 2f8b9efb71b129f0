"""Per-frame timing for the demo: FPS once a second, and a summary that splits each frame's time.

The summary compares two frame rates:
- end-to-end FPS: frames / wall-clock seconds, everything included (capture,
  pre-processing, inference, printing): what the user sees;
- model-only FPS: inferences / seconds spent in the model: what the model alone allows.
Their ratio says how much the rest of the pipeline costs (1.0: nothing).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from quantlab import memory

STAGES = ("capture", "preprocess", "inference")

# A latency is flagged as unstable (not trusted, rerun) when its p90 is this far above its median, or when
# a fixed reference workload timed just before and just after it disagrees with itself by this factor.
UNSTABLE_P90_OVER_MEDIAN = 1.5
UNSTABLE_REFERENCE_DRIFT = 1.3


def reference_workload_ms(repeats: int = 7) -> float:
    """Median milliseconds of a fixed fp32 workload (matrix products on the torch threads in use).

    Its own time says little; timed before and after a measurement, it tells
    whether the machine changed speed meanwhile (another process, throttling).
    The load average cannot: on shared VMs it reads hundreds while the CPUs idle.
    """
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 256, generator=generator), torch.randn(256, 256, generator=generator)
    times = []
    with torch.inference_mode():
        torch.mm(a, b)  # first call allocates
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(8):
                torch.mm(a, b)
            times.append((time.perf_counter() - started) * 1e3)
    return float(np.median(times))


def instability(times_ms: list[float], reference_before_ms: float, reference_after_ms: float) -> str | None:
    """Why a latency measurement should not be trusted, or None when it looks stable."""
    median, p90 = float(np.median(times_ms)), float(np.percentile(times_ms, 90))
    reasons = []
    if p90 > UNSTABLE_P90_OVER_MEDIAN * median:
        reasons.append(f"p90 is {p90 / median:.1f}x the median")
    drift = max(reference_before_ms, reference_after_ms) / max(min(reference_before_ms, reference_after_ms), 1e-9)
    if drift > UNSTABLE_REFERENCE_DRIFT:
        reasons.append(
            f"a fixed reference workload took {reference_before_ms:.2f} ms before and {reference_after_ms:.2f} ms after"
        )
    if not reasons:
        return None
    return (
        "; ".join(reasons) + ": the machine was busy or changed speed; rerun on a quiet machine, "
        "or with fewer --threads than cores when something else must run"
    )


class FrameTimer:
    """Collects how long each stage of each frame took. Start it after the model's warm-up."""

    def __init__(self) -> None:
        self.stage_ms: dict[str, list[float]] = {stage: [] for stage in STAGES}
        self.inferred: list[bool] = []
        self.start = time.perf_counter()
        self.last_report = self.start
        self.frames_at_last_report = 0

    @property
    def frames(self) -> int:
        return len(self.inferred)

    @property
    def inferences(self) -> int:
        return sum(self.inferred)

    def add(self, capture: float, preprocess: float, inference: float, inferred: bool) -> None:
        """Record one frame's stage durations, in seconds."""
        for stage, seconds in zip(STAGES, (capture, preprocess, inference)):
            self.stage_ms[stage].append(seconds * 1e3)
        self.inferred.append(inferred)

    def fps_due(self, every: float = 1.0) -> float | None:
        """The FPS since the last report when ``every`` seconds have passed, else None."""
        now = time.perf_counter()
        if now - self.last_report < every:
            return None
        return self._take_fps(now)

    def final_fps(self) -> float:
        """The FPS since the last report, for the last report of a run."""
        return self._take_fps(time.perf_counter())

    def _take_fps(self, now: float) -> float:
        frames = self.frames - self.frames_at_last_report
        fps = frames / max(now - self.last_report, 1e-9)
        self.last_report, self.frames_at_last_report = now, self.frames
        return fps

    def summary(self) -> dict:
        """Frames, end-to-end and model-only FPS, and p50/p95/mean milliseconds of each stage and in total."""
        wall = time.perf_counter() - self.start
        per_frame = np.array([self.stage_ms[s] for s in STAGES]).reshape(len(STAGES), -1)
        totals = per_frame.sum(axis=0)
        stats = {}
        for name, values in [*zip(STAGES, per_frame), ("total", totals)]:
            stats[name] = {
                key: round(float(statistic(values)), 3) if len(values) else None
                for key, statistic in (
                    ("p50_ms", np.median),
                    ("p95_ms", lambda v: np.percentile(v, 95)),
                    ("mean_ms", np.mean),
                )
            }
        model_seconds = float(per_frame[STAGES.index("inference"), self.inferred].sum()) / 1e3
        end_to_end = self.frames / wall if wall > 0 else 0.0
        model_only = self.inferences / model_seconds if model_seconds > 0 else None
        return {
            "frames": self.frames,
            "inferences": self.inferences,
            "seconds": round(wall, 4),
            "mean_fps": round(end_to_end, 2),  # end to end
            "model_fps": round(model_only, 2) if model_only else None,
            "end_to_end_vs_model": round(end_to_end / model_only, 3) if model_only else None,
            "stages_ms": stats,
            "peak_rss_mb": memory.peak_rss_mb(),  # the whole run's: what a 2 GB Pi 4 must hold
        }


def format_summary(summary: dict) -> str:
    """A small table of the summary, for the end of a run."""
    lines = [
        f"summary: {summary['frames']} frames ({summary['inferences']} inferences) in {summary['seconds']:.2f} s, "
        f"mean {summary['mean_fps']:.1f} FPS end to end",
        f"  {'stage':<11}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}",
    ]
    for stage, values in summary["stages_ms"].items():
        cells = "".join(
            "-".rjust(9) if values[key] is None else f"{values[key]:9.2f}" for key in ("p50_ms", "p95_ms", "mean_ms")
        )
        lines.append(f"  {stage:<11}{cells}")
    if summary["model_fps"]:
        lines.append(
            f"  end to end {summary['mean_fps']:.1f} FPS = {summary['end_to_end_vs_model']:.2f} x the model-only "
            f"{summary['model_fps']:.1f} FPS (inferences / seconds in the model)"
        )
    if summary.get("peak_rss_mb") is not None:
        lines.append(f"  peak resident memory: {summary['peak_rss_mb']:.0f} MB")
    if summary.get("skipped_unreadable"):
        lines.append(f"  skipped unreadable images: {summary['skipped_unreadable']}")
    if summary.get("cpu"):  # mobile_net.py's run: the machine it ran on
        lines.append(f"  CPU: {summary['cpu']} ({summary['arch']}), int8: {summary['int8_isa_note']}")
    return "\n".join(lines)
