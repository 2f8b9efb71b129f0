"""Running students' models: each distinct file once, in the sandbox, and the fp32 baseline the same way.

``ModelRunner`` is the grader's side of ``sandbox.run_models``: it builds the
request the child (``model_runner``) answers, caches outcomes by file and
sidecar; ``StudentModels`` runs one student's models in one child; and
``measured_numbers`` keeps a child's measurement only when every number in it
is believable.
"""

from __future__ import annotations

import json
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from quantlab import files, loading
from quantlab.errors import KitError
from quantlab.grader import sandbox
from quantlab.grader.gates import unpack_hits
from quantlab.grader.untrusted import clean_text, finite_number
from quantlab.vocab import TORCH_SUFFIXES


@dataclass
class MeasureSettings:
    """What --remeasure measures every model on (the child rebuilds the same images)."""

    data: Path
    holdout: int | None
    images: int | None
    seed: int
    batch_size: int
    runs: int
    warmup: int
    image_count: int  # how many images that selects: sizes the time limit


class ModelRunner:
    """Loads, checks, runs and (with ``measure``) measures model files in the sandbox, once per distinct file.

    Identical files with identical sidecars get identical numbers, and are run once (across students, and
    across the students graded at the same time with ``--jobs``: the first outcome stored is everyone's).
    """

    def __init__(
        self,
        threads: int,
        measure: MeasureSettings | None,
        isolation: str,
        timeout: float | None = None,
        memory_mb: int = sandbox.Limits.memory_mb,
    ) -> None:
        self.threads = threads
        self.measure = measure
        self.isolation = isolation
        self.memory_mb = memory_mb
        self.timeout = timeout or self.default_timeout(measure)
        self.cache: dict[tuple, sandbox.Outcome] = {}
        self._cache_lock = threading.Lock()

    @staticmethod
    def default_timeout(measure: MeasureSettings | None) -> float:
        """Loading and one run take seconds; measuring adds time per image and per timed run (slow engines too)."""
        if measure is None:
            return 120.0
        return 120.0 + 0.5 * measure.image_count + 0.5 * (measure.runs + measure.warmup)

    @staticmethod
    def child_sidecar(path: Path, sidecar: dict | None) -> dict | None:
        """What the child is told of a sidecar: of a TorchScript file's, only the engine (the method is the
        sidecar's, read by the grader), so a model handed in again with an edited method runs once."""
        if sidecar is not None and path.suffix.lower() in TORCH_SUFFIXES:
            return {"engine": sidecar["engine"]} if "engine" in sidecar else None
        return sidecar

    def key(self, path: Path, sidecar: dict | None) -> tuple[str, str]:
        return files.sha256_of(path), json.dumps(self.child_sidecar(path, sidecar), sort_keys=True)

    def cached(self, key: tuple[str, str]) -> sandbox.Outcome | None:
        with self._cache_lock:
            return self.cache.get(key)

    def run_all(
        self, wanted: list[tuple[Path, dict | None]], budget_seconds: float | None = None, cache: bool = True
    ) -> list[sandbox.Outcome | None]:
        """Run ``wanted`` (one student's models, not yet cached) in one sandboxed child; None for those the
        budget left unrun. Each outcome is cached, and the cached one returned (identical numbers for all);
        ``cache=False``: a second measurement, returned as it came and not kept."""
        request: dict = {"task": "check", "threads": self.threads, "data": None}
        read_only = []
        if self.measure is not None:
            settings = self.measure
            request["task"] = "measure"
            request["data"] = {
                "path": str(Path(settings.data).resolve()),
                "holdout": settings.holdout,
                "images": settings.images,
                "seed": settings.seed,
                "batch_size": settings.batch_size,
                "runs": settings.runs,
                "warmup": settings.warmup,
            }
            read_only = [Path(settings.data).resolve()]
        limits = sandbox.Limits(wall_seconds=self.timeout, memory_mb=self.memory_mb, threads=self.threads)
        children = [(path, self.child_sidecar(path, sidecar)) for path, sidecar in wanted]
        outcomes = sandbox.run_models(children, request, limits, self.isolation, read_only, budget_seconds)
        kept: list[sandbox.Outcome | None] = []
        for (path, sidecar), outcome in zip(wanted, outcomes, strict=True):
            if outcome is not None and cache:
                with self._cache_lock:
                    outcome = self.cache.setdefault(self.key(path, sidecar), outcome)
            kept.append(outcome)
        return kept

    def __call__(self, path: Path, sidecar: dict | None) -> sandbox.Outcome:
        outcome = self.cached(self.key(path, sidecar))
        return outcome if outcome is not None else self.run_all([(path, sidecar)])[0]


class StudentModels:
    """One student's models, all run by one sandboxed child (Python and torch start once per student).

    ``scoring.grade_student`` asks for its models one by one, after its checks. It is run twice through
    this: while ``collecting``, each request is recorded and answered "not run yet"; ``run`` then runs the
    recorded ones together, within the student's time budget; the second pass gets their outcomes. So only
    what the checks let through ever runs, with no second copy of those checks here.
    """

    def __init__(self, runner: ModelRunner, budget_timeouts: float) -> None:
        self.runner = runner
        self.measure, self.isolation, self.threads = runner.measure, runner.isolation, runner.threads
        self.timeout, self.memory_mb = runner.timeout, runner.memory_mb
        self.budget = budget_timeouts * runner.timeout
        self.budget_timeouts = budget_timeouts
        self.collecting = True
        self.wanted: dict[tuple, tuple[Path, dict | None]] = {}
        self.unrun: dict[tuple, sandbox.Outcome] = {}  # left by the budget: not cached, a classmate's copy runs

    def __call__(self, path: Path, sidecar: dict | None) -> sandbox.Outcome:
        key = self.runner.key(path, sidecar)
        if self.collecting:
            self.wanted.setdefault(key, (path, sidecar))
            return sandbox.Outcome(None, "was not run yet")
        return self.unrun.get(key) or self.runner(path, sidecar)

    def run(self) -> None:
        """Run the recorded models not cached yet, in one child; then answer from the outcomes."""
        todo = [(key, wanted) for key, wanted in self.wanted.items() if self.runner.cached(key) is None]
        if todo:
            outcomes = self.runner.run_all([wanted for _, wanted in todo], self.budget)
            for (key, _), outcome in zip(todo, outcomes, strict=True):
                if outcome is None:
                    self.unrun[key] = sandbox.Outcome(
                        None,
                        f"was not run: this submission's models used up its {self.budget:.3g} s "
                        f"({self.budget_timeouts:g} x the limit per model); make the slow ones faster",
                    )
        self.collecting = False

    def measure_again(self, path: Path, sidecar: dict | None) -> sandbox.Outcome:
        """A second measurement of one model, past the cache: a speed claim is flagged only if it disagrees too."""
        if self.collecting:
            return sandbox.Outcome(None, "was not run yet")
        again = self.runner.run_all([(path, sidecar)], cache=False)[0]
        return again if again is not None else sandbox.Outcome(None, "was not measured again")


def measured_numbers(result: dict) -> dict | None:
    """The measurement a child reported, when every number in it is believable; None otherwise."""
    measured = result.get("measured")
    if not isinstance(measured, dict) or not isinstance(measured.get("latency_ms"), dict):
        return None
    median = finite_number(measured["latency_ms"].get("median"), 0.0, 1e7, strict_low=True)
    top1, top5 = finite_number(measured.get("top1"), 0, 100), finite_number(measured.get("top5"), 0, 100)
    if median is None or top1 is None or top5 is None:
        return None
    return {"top1": top1, "top5": top5, "latency_ms": {"median": median}, "unstable": measured.get("unstable") is True,
            "hits": unpack_hits(measured.get("hits"), measured.get("images"))}  # fmt: skip


@dataclass
class Baseline:
    """fp32 MobileNetV2 as the grader measures it: size always, accuracy and latency with --remeasure.

    It is measured by the same sandboxed child as the students' models, so
    speed-ups compare like with like.
    """

    size_mb: float
    result: dict | None  # {"top1", "top5", "latency_ms": {"median"}}, None without --remeasure
    parameters: int | None = None  # MobileNetV2's weights and biases, BatchNorm folded (the loader's count)

    @classmethod
    def measure(cls, runner: ModelRunner) -> Baseline:
        loaded = loading.load_any("mobilenet_v2", engine="auto", threads=runner.threads)
        if runner.measure is None:
            return cls(size_mb=loaded.size_mb, result=None, parameters=loaded.parameters)
        import torch

        with tempfile.TemporaryDirectory(prefix="quantlab-baseline-") as folder:
            path = Path(folder) / "mobilenet_v2_fp32.pt"
            torch.jit.save(loaded.model, str(path))
            outcome = runner(path, None)
        numbers = measured_numbers(outcome.result) if outcome.result and outcome.result.get("ok") else None
        if numbers is None:
            why = outcome.failure or clean_text((outcome.result or {}).get("reason", "no numbers"))
            raise KitError(
                f"the fp32 baseline could not be measured in the grader's sandbox ({why}); "
                "check --data and the memory and time limits"
            )
        return cls(size_mb=loaded.size_mb, result=numbers, parameters=loaded.parameters)
