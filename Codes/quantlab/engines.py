"""Quantized engines (backends) and CPU threads.

PyTorch runs int8 models on one of several engines. ``qnnpack`` is the engine
for ARM CPUs such as the Raspberry Pi's; on x86 it works but is slower than
fp32. On x86, the ``x86`` engine (FBGEMM and oneDNN underneath) and ``onednn``
are the fast ones. Which of the two is right depends on the CPU: ``auto``
measures both once (a few seconds) and caches the answer per CPU model, int8
instruction level (quantlab.cpu) and torch version in
``$QUANTLAB_CACHE/engine.json`` (default ``~/.cache/quantlab``). It measures
accuracy as well as speed: an engine whose int8 sums saturate on this CPU
(onednn on CPUs without VNNI: it keeps activations to 8 bits, and the
vpmaddubsw instruction adds pairs of products in 16 bits) is rejected, with the
measurement as the reason. A model should run on the engine it was quantized
for: the engine decides how weights are packed and how activations are rounded.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from quantlab import cpu, files
from quantlab.assets import cache_dir
from quantlab.errors import KitError, first_line
from quantlab.quantize import qconfig_for, quantize_static

X86_CANDIDATES = ("x86", "onednn")  # the fast int8 engines on x86 CPUs; auto picks the faster
PROBE_SECONDS = 0.5  # timing budget of auto's measurement (quantizing the probe for each engine adds to it)
MAX_THREADS_PER_CPU = 4  # --threads above 4x the logical CPUs is refused (a typo, not an experiment)
PROBE_MIN_COSINE = 0.98  # an engine whose int8 output strays further from fp32 than this is not "correct"
SATURATION_MAX_ERROR = 0.05  # relative error of the saturation probe above which an engine's int8 sums saturate

_resolved: dict[str, tuple[str, str]] = {}  # auto's answer, once per process


def is_arm() -> bool:
    """True on ARM CPUs (Raspberry Pi, Apple silicon, ARM servers)."""
    return platform.machine().lower() in ("aarch64", "arm64", "armv7l", "armv8l")


def resolve_engine(requested: str = "auto") -> tuple[str, str]:
    """Pick the quantized engine; return it with a short reason to print.

    ``auto``: qnnpack on ARM; on x86 whichever of x86 and onednn runs a small
    quantized MobileNetV2 faster here (measured once, then read from the cache).
    """
    supported = torch.backends.quantized.supported_engines
    if requested != "auto":
        if requested not in supported:
            raise KitError(
                f"engine '{requested}' is not available in this PyTorch build "
                f"(available: {', '.join(e for e in supported if e != 'none')}); use --engine auto"
            )
        return requested, "chosen with --engine"
    if is_arm():
        return "qnnpack", f"auto: {platform.machine()} CPU, qnnpack is PyTorch's int8 engine for ARM"
    candidates = [engine for engine in X86_CANDIDATES if engine in supported]
    if len(candidates) == 1:
        return candidates[
            0
        ], f"auto: {platform.machine()} CPU, {candidates[0]} is the only fast int8 engine in this PyTorch build"
    if not candidates:
        fallback = "fbgemm" if "fbgemm" in supported else "qnnpack"
        return fallback, f"auto: no x86 or onednn engine in this PyTorch build, using {fallback}"
    if "auto" not in _resolved:
        _resolved["auto"] = _fastest_x86_engine(candidates)
    return _resolved["auto"]


def set_engine(engine: str) -> None:
    """Make ``engine`` the quantized engine for everything created from now on."""
    torch.backends.quantized.engine = engine


# ---- auto on x86: measure once, cache per CPU model and torch version ----------


def _cache_key() -> str:
    """The CPU model, the int8 level each engine runs with (an environment variable can lower it) and torch."""
    levels = ", ".join(f"{engine} {cpu.engine_isa(engine)}" for engine in X86_CANDIDATES)
    return f"{cpu_name()} | int8 {levels} | torch {torch.__version__}"


def _read_cache(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, entries: dict) -> str:
    """Save atomically; return how the reason should mention the cache."""
    try:
        files.write_json(path, entries)
    except KitError:
        return f"not cached: {path.parent} is not writable"
    return f"saved to {path}"


def _fastest_x86_engine(candidates: list[str]) -> tuple[str, str]:
    path = cache_dir() / "engine.json"
    key = _cache_key()
    entries = _read_cache(path)
    cached = entries.get(key)
    if isinstance(cached, dict) and cached.get("engine") in candidates and isinstance(cached.get("ms"), dict):
        where = f"from the cache {path}, measured {cached.get('measured', '?')}; delete it to measure again"
        return cached["engine"], _reason(cached["engine"], cached["ms"], cached.get("rejected", {}), where)
    started = time.perf_counter()
    milliseconds, rejected = measure_engines(candidates)
    seconds = time.perf_counter() - started
    if not milliseconds:  # every engine failed the probe: say so, and use PyTorch's default for x86
        return (
            "x86",
            f"auto: the engine probe failed ({'; '.join(f'{e}: {why}' for e, why in rejected.items())}); using x86",
        )
    chosen = min(milliseconds, key=milliseconds.get)
    entries[key] = {
        "engine": chosen,
        "ms": milliseconds,
        "rejected": rejected,
        "threads": torch.get_num_threads(),
        "measured": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(seconds, 2),
    }
    return chosen, _reason(
        chosen, milliseconds, rejected, f"measured now in {seconds:.1f} s; " + _write_cache(path, entries)
    )


def _reason(chosen: str, milliseconds: dict, rejected: dict, where: str) -> str:
    figures = ", ".join(
        f"{engine} {ms:.2f} ms" for engine, ms in sorted(milliseconds.items(), key=lambda item: item[1])
    )
    wrong = "".join(f"; {engine} rejected: {why}" for engine, why in rejected.items())
    return (
        f"auto: the faster int8 engine that matches fp32 on this CPU (int8: {cpu.describe()}); "
        f"a small quantized MobileNetV2 ran {figures}{wrong} ({where})"
    )


def _probe_model() -> torch.nn.Module:
    """Three stages of MobileNetV2 (inverted residuals: 1x1 expand, 3x3 depthwise, 1x1 project, skip adds)."""
    from torchvision.models.quantization import mobilenet_v2

    torch.manual_seed(0)
    stages = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2]]  # expansion, channels, blocks, stride
    return mobilenet_v2(weights=None, quantize=False, num_classes=10, inverted_residual_setting=stages).eval()


class _SaturationProbe(torch.nn.Module):
    """One 1x1 convolution of 64 channels, every weight 1: at full range each product is 255 x 127, and a
    pair of them (64770) does not fit the 16 bits that vpmaddubsw adds pairs into."""

    def __init__(self) -> None:
        from torch.ao.quantization import DeQuantStub, QuantStub

        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.conv = torch.nn.Conv2d(64, 8, 1, bias=False)
        torch.nn.init.ones_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.conv(self.quant(x)))


def saturation_error(engine: str, qconfig_engine: str | None = None) -> tuple[float, float, float]:
    """Quantize the saturation probe for ``engine`` and run it on 0s and 1s (uint8 0 and 255).

    ``qconfig_engine``: observe with that engine's qconfig instead (e.g. "qnnpack": 8-bit activations, as in
    a model made for the Pi and run on ``engine``).

    Returns (relative error, int8 result, fp32 result): about 0.5 (half the sum lost) where the engine's int8
    sums saturate on this CPU, under 0.01 where they are exact.
    """
    from torch.ao.quantization import convert, prepare

    previous = torch.backends.quantized.engine
    image = torch.ones(1, 64, 4, 4)
    image[..., ::2] = 0.0  # zeros too, so the zero point is 0 and 1.0 is the top of the uint8 range
    try:
        set_engine(engine)
        probe = _SaturationProbe().eval()
        probe.qconfig = qconfig_for(qconfig_engine or engine, observer="minmax")
        prepare(probe, inplace=True)
        with torch.inference_mode():
            probe(image)
            convert(probe, inplace=True)
            got, expected = float(probe(image).max()), float(_SaturationProbe()(image).max())
    finally:
        set_engine(previous)
    return abs(got - expected) / expected, got, expected


def measure_engines(candidates: list[str], seconds: float = PROBE_SECONDS) -> tuple[dict[str, float], dict[str, str]]:
    """Median milliseconds of the probe, quantized for each engine; engines that fail, stray from fp32 or
    saturate (see saturation_error) are rejected, with the reason."""
    previous = torch.backends.quantized.engine
    probe = _probe_model()
    image = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    quantized, rejected = {}, {}
    try:
        with torch.inference_mode():
            reference = probe(image)
            for engine in candidates:
                try:  # calibrated on the image it is timed on: the probe measures speed, not accuracy
                    model = quantize_static(probe, [image], engine, observer="minmax", progress=False)
                    output = model(image)
                except Exception as error:  # an engine this CPU cannot run: leave it out, say why
                    rejected[engine] = first_line(error, with_type=True, limit=80)
                    continue
                cosine = float(torch.nn.functional.cosine_similarity(output.flatten(), reference.flatten(), dim=0))
                if cosine < PROBE_MIN_COSINE:
                    rejected[engine] = f"int8 output strays from fp32 (cosine {cosine:.3f})"
                    continue
                error, got, expected = saturation_error(engine)
                if error > SATURATION_MAX_ERROR:  # random weights rarely reach full range: this probe does
                    rejected[engine] = (
                        f"its int8 sums saturate here ({cpu.engine_isa(engine).label}): a 64-channel "
                        f"convolution of full-range values (255 x 127 per product) gave {got:.0f} "
                        f"where fp32 gives {expected:.0f}"
                    )
                    continue
                quantized[engine] = model
            times: dict[str, list[float]] = {engine: [] for engine in quantized}
            for engine, model in quantized.items():  # warm-up: first calls allocate and pick kernels
                set_engine(engine)
                model(image), model(image)
            deadline = time.perf_counter() + seconds
            while quantized and (time.perf_counter() < deadline or min(map(len, times.values())) < 5):
                for engine, model in quantized.items():  # interleaved, so a busy moment hits every engine alike
                    set_engine(engine)
                    started = time.perf_counter()
                    model(image)
                    times[engine].append(time.perf_counter() - started)
    finally:
        set_engine(previous)
    return {engine: round(float(np.median(values)) * 1e3, 3) for engine, values in times.items()}, rejected


# ---- the CPU and its threads ------------------------------------------------------


def cpu_name() -> str:
    """The CPU model as the OS names it (x86: 'model name'; Raspberry Pi: the board 'Model')."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                found.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    for key in ("model name", "Model", "Hardware"):
        if found.get(key):
            return found[key]
    return platform.processor() or platform.machine() or "unknown"


def physical_cores() -> int:
    """Number of physical cores this process may use (hyper-threads do not help here)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        usable = os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            physical_id = core_id = ""
            for line in cpuinfo:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical_id = value.strip()
                elif key == "core id":
                    core_id = value.strip()
                    cores.add((physical_id, core_id))
    except OSError:
        pass
    return max(1, min(usable, len(cores) or usable))


def set_threads(threads: int | None) -> int:
    """Set PyTorch's intra-op threads (default: physical cores); return the number used."""
    if threads is None:
        threads = physical_cores()
    if threads < 1:
        raise KitError(f"--threads must be at least 1, got {threads}")
    cpus = os.cpu_count() or 1
    if threads > MAX_THREADS_PER_CPU * cpus:  # oversubscribing a little is an experiment; 100000 threads is a typo
        raise KitError(
            f"--threads {threads} is more than this machine can use: it has {cpus} CPUs (at most "
            f"{MAX_THREADS_PER_CPU * cpus}; leave --threads out for the physical cores)"
        )
    torch.set_num_threads(threads)
    return threads
