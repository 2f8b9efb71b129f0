"""Per-frame timing for the demo: FPS once a second and a p50/p95 summary per stage."""

from __future__ import annotations

import time

import numpy as np

STAGES = ("capture", "preprocess", "inference")


class FrameTimer:
    """Collects how long each stage of each frame took."""

    def __init__(self) -> None:
        self.stage_ms: dict[str, list[float]] = {stage: [] for stage in STAGES}
        self.start = time.perf_counter()
        self.last_report = self.start
        self.frames_at_last_report = 0
        self.inferences = 0

    @property
    def frames(self) -> int:
        return len(self.stage_ms["capture"])

    def add(self, capture: float, preprocess: float, inference: float, inferred: bool) -> None:
        """Record one frame's stage durations, in seconds."""
        for stage, seconds in zip(STAGES, (capture, preprocess, inference)):
            self.stage_ms[stage].append(seconds * 1e3)
        self.inferences += inferred

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
        """Frames, mean FPS and p50/p95 milliseconds for each stage and in total."""
        wall = time.perf_counter() - self.start
        per_frame = np.array([self.stage_ms[s] for s in STAGES]).reshape(len(STAGES), -1)
        totals = per_frame.sum(axis=0)
        stats = {}
        for name, values in [*zip(STAGES, per_frame), ("total", totals)]:
            stats[name] = {
                "p50_ms": round(float(np.percentile(values, 50)), 3) if len(values) else None,
                "p95_ms": round(float(np.percentile(values, 95)), 3) if len(values) else None,
            }
        return {
            "frames": self.frames,
            "inferences": self.inferences,
            "seconds": round(wall, 3),
            "mean_fps": round(self.frames / wall, 2) if wall > 0 else 0.0,
            # FPS the stages alone allow, and the model alone: the demo's overhead is their gap
            "pipeline_fps": round(1e3 / float(np.mean(totals)), 2) if len(totals) else None,
            "stages_ms": stats,
        }


def format_summary(summary: dict) -> str:
    """A small table of the summary, for the end of a run."""
    lines = [
        f"summary: {summary['frames']} frames ({summary['inferences']} inferences) in {summary['seconds']:.2f} s, "
        f"mean {summary['mean_fps']:.1f} FPS",
        f"  {'stage':<11}{'p50 ms':>9}{'p95 ms':>9}",
    ]
    for stage, values in summary["stages_ms"].items():
        p50 = "-" if values["p50_ms"] is None else f"{values['p50_ms']:.2f}"
        p95 = "-" if values["p95_ms"] is None else f"{values['p95_ms']:.2f}"
        lines.append(f"  {stage:<11}{p50:>9}{p95:>9}")
    return "\n".join(lines)
