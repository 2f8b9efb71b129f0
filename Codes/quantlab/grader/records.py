"""What the grader keeps of each model and each student: the numbers scored, the points, the reasons."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelGrade:
    """One model file of a submission: checks, the numbers scored, and the points."""

    file: str
    method: str
    engine: str | None = None
    size_mb: float | None = None  # the file's size, measured here
    top1: float | None = None  # re-measured, or claimed without --remeasure
    top1_drop: float | None = None  # vs fp32 (the grader's with --remeasure, the report's row without)
    # the drop's paired 95 % interval (photo by photo against the grader's fp32), with --remeasure only
    top1_drop_low: float | None = None
    top1_drop_high: float | None = None
    speedup: float | None = None
    size_ratio: float | None = None
    points: dict[str, float] = field(default_factory=dict)
    excluded: str | None = None  # why the model is not scored
    unstable: bool = False  # its re-measured latency was unstable (the grader's machine was busy)
    speedup_range: tuple[float, float] | None = None  # the speed-ups of its first and second measurement
    source_note: str | None = None  # its sidecar's calibration or training photos are the grading folder
    speed_claim: str | None = None  # a speed claim beyond tolerance after two measurements: flag or "unstable"
    sha256: str | None = None  # the file's bytes
    weights: str | None = None  # its weights, whatever the file's name or metadata
    answers: str | None = None  # what it computes (its logits on a fixed input): one model, whatever its bytes
    # its int8 convolution weights alone: a wrapper (+1e-4 on the logits) keeps them. Not for copy detection:
    # honest students quantizing the same pretrained weights with one weight observer get the same ones
    int8_weights: str | None = None
    parameters: int | None = None  # weights and biases, counted by the grader's child
    # how it was quantized, from its sidecar (the student's word; task 3's table and the open target read it)
    granularity: str | None = None
    observer: str | None = None
    calibration_images: int | None = None
    seed: int | None = None
    arch: str | None = None
    keep_float: list[str] | None = None  # the layers its sidecar keeps in float (None: not a list of names)
    float_layers: list[str] | None = None  # keep_float once the child's float convolutions matched it (task 3b)

    @property
    def total(self) -> float:
        return sum(self.points.values())


@dataclass
class StudentGrade:
    """A student's line in the leaderboard."""

    student: str
    score: float = 0.0
    status: str = "ok"  # ok | problems | flagged | rejected
    numbers: str = "claimed"  # re-measured | claimed
    best: ModelGrade | None = None
    models: list[ModelGrade] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    points: dict[str, float] = field(default_factory=dict)
    pi_fps: float | None = None
    open_speedup: float | None = None  # the open target: pi_open.json's model-only FPS / pi_run.json's
    flags: list[str] = field(default_factory=list)  # claims that disagree with the files or re-measurements
    problems: list[str] = field(default_factory=list)  # everything else that is wrong
    copying: list[str] = field(default_factory=list)  # files identical to another student's (for the instructor)
    pi_scale: float | None = None  # the rubric made the Pi optional and this student had none: points x this
    pi_emulated: str | None = None  # the pi part came from pi_check.json, the emulated Pi (answers, no speed)
    notes: list[str] = field(default_factory=list)  # for the instructor, no effect on status ("unstable", engines)
    fingerprints: dict[str, str] = field(default_factory=dict)  # what copying is detected on: label -> digest

    @property
    def reasons(self) -> list[str]:
        return self.flags + self.problems


def ranked(students: list[StudentGrade]) -> list[StudentGrade]:
    """Best score first; rejected submissions last; ties by name."""
    return sorted(students, key=lambda s: (s.status == "rejected", -s.score, s.student))
