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

STAGES = ("capture", "preprocess", "inference")


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
            stats[name] = {key: round(float(statistic(values)), 3) if len(values) else None
                           for key, statistic in (("p50_ms", np.median), ("p95_ms", lambda v: np.percentile(v, 95)),
                                                  ("mean_ms", np.mean))}
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
        }


def format_summary(summary: dict) -> str:
    """A small table of the summary, for the end of a run."""
    lines = [
        f"summary: {summary['frames']} frames ({summary['inferences']} inferences) in {summary['seconds']:.2f} s, "
        f"mean {summary['mean_fps']:.1f} FPS end to end",
        f"  {'stage':<11}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}",
    ]
    for stage, values in summary["stages_ms"].items():
        cells = "".join("-".rjust(9) if values[key] is None else f"{values[key]:9.2f}" for key in ("p50_ms", "p95_ms", "mean_ms"))
        lines.append(f"  {stage:<11}{cells}")
    if summary["model_fps"]:
        lines.append(f"  end to end {summary['mean_fps']:.1f} FPS = {summary['end_to_end_vs_model']:.2f} x the model-only "
                     f"{summary['model_fps']:.1f} FPS (inferences / seconds in the model)")
    return "\n".join(lines)
