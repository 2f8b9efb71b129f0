"""Quantized engines (backends) and CPU threads.

PyTorch runs int8 models on one of several engines. ``qnnpack`` is the engine
for ARM CPUs such as the Raspberry Pi's; on x86 it works but is slower than
fp32. On x86, the ``x86`` engine (FBGEMM and oneDNN underneath) and ``onednn``
are the fast ones. A model should run on the engine it was quantized for: the
engine decides how weights are packed and how activations are rounded.
"""

from __future__ import annotations

import os
import platform

import torch

from quantlab.errors import KitError

ENGINE_CHOICES = ("auto", "qnnpack", "x86", "fbgemm", "onednn")


def is_arm() -> bool:
    """True on ARM CPUs (Raspberry Pi, Apple silicon, ARM servers)."""
    return platform.machine().lower() in ("aarch64", "arm64", "armv7l", "armv8l")


def resolve_engine(requested: str = "auto") -> tuple[str, str]:
    """Pick the quantized engine; return it with a short reason to print."""
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
    if "x86" in supported:
        return "x86", f"auto: {platform.machine()} CPU, the x86 engine is the fast int8 path here (qnnpack is for ARM)"
    if "fbgemm" in supported:
        return "fbgemm", f"auto: {platform.machine()} CPU, fbgemm is the int8 engine for x86"
    return "qnnpack", "auto: no x86 engine in this PyTorch build"


def set_engine(engine: str) -> None:
    """Make ``engine`` the quantized engine for everything created from now on."""
    torch.backends.quantized.engine = engine


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
    torch.set_num_threads(threads)
    return threads
