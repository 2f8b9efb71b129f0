"""Benchmark models the same way on any machine: size, parameters, batch-1 latency, top-1/top-5.

``Codes/benchmark.py`` is the command-line front end; notebooks and the
grading tools use these functions directly. This module measures (the machine,
latency, accuracy, one model's results); ``quantlab.loading`` loads the models
and ``quantlab.report`` assembles, checks and writes the report (schema
``quantlab.benchmark/1``, every field: ``docs/benchmark_schema.md``).

Example:
    from quantlab import bench, data, loading, report
    loaded = loading.load_any("mnv2_int8.pt", engine="auto", threads=2)
    batches = data.loader(data.image_dataset("photos/"))
    result = bench.benchmark_model(loaded, batches, runs=50, warmup=10)
    settings = report.make_settings(runs=50, warmup=10, input_size=224, data="photos/", holdout=None, seed=0,
                                    threads=2, engine="x86")
    document = report.make_report([result], settings, bench.machine_info(threads=2, engine="x86"))
    assert report.validate_report(document) == []
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from quantlab import coverage, cpu, data, engines, memory, models, timing
from quantlab.engines import cpu_name
from quantlab.errors import KitError
from quantlab.loading import LoadedModel, fixed_batch
from quantlab.preprocess import IMAGENET, Preprocessing

# ---- the machine ---------------------------------------------------------------


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(threads: int, engine: str | None) -> dict:
    """What a grader needs to tell results from different machines apart."""
    return {
        "cpu": cpu_name(),
        "arch": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnxruntime": _version("onnxruntime"),
        "litert": _version("ai-edge-litert"),  # LiteRT's runtime (.tflite files)
        "executorch": _version("executorch"),  # ExecuTorch (.pte files: PT2E lowered to XNNPACK)
        "threads": threads,
        "physical_cores": engines.physical_cores(),
        "engine": engine,
        "load_average": load_average(),
        **cpu.machine_fields(),  # int8_isa, int8_isa_note, ...: whether int8 sums can saturate here
    }


def load_average() -> list[float] | None:
    """The OS's 1-, 5- and 15-minute load averages now (None where it keeps none): above the core count,
    other work shared the CPU while the latencies were measured."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):  # Windows has no load average
        return None


# ---- measuring -----------------------------------------------------------------


def measure_latency(
    model: Callable[[torch.Tensor], torch.Tensor],
    input_size: int = 224,
    runs: int = 50,
    warmup: int = 10,
    image: torch.Tensor | None = None,
) -> dict:
    """Batch-1 latency of ``model`` on ``image`` (default: a fixed random one): median, p90, mean (ms), FPS.

    ``unstable`` says why the figures should not be trusted (``timing.instability``), or is None.
    """
    if runs < 1 or warmup < 0:
        raise KitError(f"need at least 1 timed run and no negative warm-up (got runs={runs}, warmup={warmup})")
    if image is None:
        image = torch.randn(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    times_ms = []
    with torch.inference_mode():
        for _ in range(warmup):  # first calls allocate buffers and pick kernels: not what a user sees later
            model(image)
        reference_before = timing.reference_workload_ms()
        for _ in range(runs):
            started = time.perf_counter()
            model(image)
            times_ms.append((time.perf_counter() - started) * 1e3)
        reference_after = timing.reference_workload_ms()
    median = float(np.median(times_ms))
    return {
        "median_ms": round(median, 4),
        "p90_ms": round(float(np.percentile(times_ms, 90)), 4),
        "mean_ms": round(float(np.mean(times_ms)), 4),
        "fps": round(1e3 / median, 2),
        "runs": runs,
        "unstable": timing.instability(times_ms, reference_before, reference_after),
    }


def evaluate(
    model: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable,
    progress: bool = True,
    one_at_a_time: bool = False,
    keep_hits: bool = False,
) -> dict:
    """Top-1 and top-5 accuracy (percent) over (images, labels) batches; None batches (unreadable) are skipped.

    ``one_at_a_time``: feed the photos singly, for models that only take batch 1
    (``LoadedModel.batch_one``, found by ``load_any``). ``keep_hits``: add "hits", one bool per photo (top-1
    right), for paired comparisons of two models on the same photos (``quantlab.stats``).
    """
    fixed = 1 if one_at_a_time else fixed_batch(model)
    correct1 = correct5 = images = 0
    top1_hits = []
    with torch.inference_mode():
        for batch in tqdm(batches, desc="evaluating", unit="batch", disable=not progress):
            if batch is None:
                continue
            inputs, labels = batch
            if int(labels.min()) < 0:  # data.UNLABELLED: fine for calibration, not for accuracy
                raise KitError(
                    f"accuracy needs labelled photos, and the kit cannot tell the class of some; it "
                    f"reads labels from names: {data.LAYOUTS}"
                )
            # a model exported or traced for batch 1 takes the images one at a time
            chunks = inputs.split(fixed) if fixed else (inputs,)
            logits = torch.cat([model(chunk) for chunk in chunks])
            if logits.shape[0] != labels.numel():  # never score a batch against another batch's answers
                raise KitError(
                    f"the model returned {logits.shape[0]} answers for {labels.numel()} photos; it may "
                    "take batch 1 only: load it with loading.load_any, which finds out"
                )
            if int(labels.max()) >= logits.shape[1]:
                raise KitError(
                    f"a label ({int(labels.max())}) is beyond the model's {logits.shape[1]} classes; "
                    "use a data set labelled with the model's class indices (ImageNet-1k order)"
                )
            # a stable sort breaks ties towards the lower class, as argmax does (stats.top1_hits): int8 logits
            # tie often, and topk's order among equal values is unspecified
            top = logits.sort(dim=1, descending=True, stable=True).indices[:, :5]
            hits = top == labels.unsqueeze(1)
            correct1 += int(hits[:, 0].sum())
            top1_hits.append(hits[:, 0])
            correct5 += int(hits.any(dim=1).sum())
            images += labels.numel()
    if images == 0:
        raise KitError("no image of the data set could be read; pass a folder of readable photos")
    result = {"top1": round(100 * correct1 / images, 2), "top5": round(100 * correct5 / images, 2), "images": images}
    if keep_hits:
        result["hits"] = torch.cat(top1_hits)
    return result


def evaluation_dataset(
    path: str | Path,
    size: int = 224,
    holdout: int | None = None,
    images: int | None = None,
    seed: int = 0,
    preprocessing: Preprocessing = IMAGENET,
) -> Dataset:
    """The images accuracy is measured on, as benchmark.py picks them (graders re-measure on the same ones).

    ``holdout`` N: the images left after the first N of ``data.split``'s seeded
    shuffle, i.e. after the N that ``quantize_model.py --calib-images N --seed S``
    calibrated on. ``images`` caps the count; without a holdout the cap takes the
    first N of the seeded shuffle, so that a few images still mix the classes. ``preprocessing``: the model's
    declared input (``LoadedModel.preprocessing``); the same images whatever it is.
    """
    # a folder, or "imagenette" (Colab); labels from names
    dataset = data.image_dataset(path, size, preprocessing=preprocessing)
    if holdout is not None:
        if holdout >= len(dataset):
            raise KitError(f"--holdout {holdout} leaves no image of the {len(dataset)} in {path}; hold out fewer")
        _, dataset = data.split(dataset, first_n=holdout, seed=seed)
        if images is not None:
            dataset = Subset(dataset, range(min(images, len(dataset))))
    elif images is not None:
        dataset, _ = data.split(dataset, first_n=images, seed=seed)
    return dataset


# ---- one model's results ---------------------------------------------------------


def _first_photo(batches: Iterable | None) -> torch.Tensor | None:
    """The first readable photo of ``batches`` as a 1x3xSxS tensor; None without photos."""
    if batches is None:
        return None
    for batch in batches:
        if batch is not None:
            return batch[0][:1].clone()
    return None


def benchmark_model(
    loaded: LoadedModel,
    batches: Iterable | None,
    runs: int,
    warmup: int,
    input_size: int = 224,
    progress: bool = True,
    keep_hits: bool = False,
) -> dict:
    """Measure one model: one entry of the report's "results" (see docs/benchmark_schema.md).

    ``keep_hits``: the entry also holds "hits" (``evaluate``'s); pop it before ``make_report``, it is not JSON.
    """
    if loaded.engine is not None:
        engines.set_engine(loaded.engine)  # quantized ops dispatch on the active engine too
    memory.reset_peak()  # the peak below is this model's run (the process, with every model loaded so far)
    # timed on a photo that is scored, when there are photos: a model cannot tell the timed input from the
    # scored ones (on random noise, one that answers noise cheaply would look fast and score on photos)
    latency = measure_latency(loaded.model, input_size, runs, warmup, _first_photo(batches))
    accuracy = {"top1": None, "top5": None, "images": None}
    skipped = None
    if batches is not None:
        dataset = getattr(batches, "dataset", None)
        before = data.skipped_count(dataset) if dataset is not None else 0
        accuracy = evaluate(loaded.model, batches, progress, one_at_a_time=loaded.batch_one, keep_hits=keep_hits)
        # the data set counts unreadable files over its lifetime: this model's pass is the difference
        skipped = data.skipped_count(dataset) - before if dataset is not None else 0
    return {
        "name": loaded.name,
        "file": Path(loaded.path).name if loaded.path else None,
        "path": loaded.path,
        "format": loaded.format,
        "runtime": loaded.runtime,
        "method": loaded.method,
        "recipe": models.recipe(loaded.sidecar) if loaded.sidecar else None,  # how it was quantized (its sidecar)
        "engine": loaded.engine,
        "sha256": loaded.sha256,
        "size_mb": loaded.size_mb,
        "parameters": loaded.parameters,
        "latency_ms": {"median": latency["median_ms"], "p90": latency["p90_ms"], "mean": latency["mean_ms"]},
        "fps": latency["fps"],
        "unstable": latency["unstable"],  # why the latency should not be trusted, or None
        **accuracy,
        "skipped": skipped,
        "peak_rss_mb": memory.peak_rss_mb(),
        "coverage": coverage.of_loaded(loaded),  # layers with weights in int8 vs float, MB left in float
        # PT2E: inductor's first compile (a wait in every process), or the lowering to ExecuTorch (once per
        # .pte file, read from its sidecar: the machine that wrote it), in seconds
        "compile_s": getattr(loaded.model, "compile_s", None),
    }
