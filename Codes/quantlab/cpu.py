"""The CPU's int8 capability: which instructions multiply int8 numbers, and whether their sums can saturate.

An int8 convolution multiplies uint8 activations by int8 weights and adds up
the products. How the CPU adds them decides whether the result is exact:

- x86 with VNNI (AVX-512 VNNI on Cascade Lake, Ice Lake, Zen 4 and later;
  AVX-VNNI on Alder Lake): one instruction (vpdpbusd) multiplies and adds four
  products straight into 32 bits. Exact.
- x86 with AVX2 or AVX-512 but no VNNI: vpmaddubsw adds *pairs* of products
  in 16 bits, which saturate at 32767: 255 x 127 + 255 x 127 = 64770 does not
  fit. Kernels built on it are exact only when activations or weights keep to
  7 bits (PyTorch's x86/fbgemm engine keeps activations to 7 bits; ONNX Runtime
  has ``reduce_range``, 7-bit weights).
- x86 with SSE4 only, and ARM with or without the dot-product extension
  (asimddp: sdot/udot, on the Pi 5's Cortex-A76 but not the Pi 4's A72):
  the kernels widen to 16 or 32 bits before adding. Exact.

PyTorch's engines can be told to use less than the CPU has (tests use this to
take the non-VNNI path on a VNNI machine): FBGEMM_ENABLE_INSTRUCTIONS (the
``x86`` and ``fbgemm`` engines) and ONEDNN_MAX_CPU_ISA (the ``onednn`` engine),
read when the library first runs. ONNX Runtime has no such switch: it uses
what the CPU reports (under ``qemu-x86_64 -cpu Haswell``, an AVX2 CPU).

Flags tell what the CPU has, not what a runtime's kernels do with it, so the
kit also measures: ``onnxruntime_u8s8_error`` runs one full-range int8
convolution through ONNX Runtime (engines.saturation_error does the same for
PyTorch's engines). This module imports neither torch nor onnxruntime at the
top, so it stays quick under an emulator.

Example:
    from quantlab import cpu
    print(cpu.describe())                 # "AVX-512 VNNI: exact int8 dot products"
    cpu.int8_isa().saturates_u8s8          # False on a VNNI CPU
    cpu.engine_isa("onednn").name          # what PyTorch's onednn engine runs with here
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

# from least to most capable; a runtime capped by an environment variable takes the lower of the two
X86_LEVELS = ("sse", "avx2", "avx512", "avx_vnni", "avx512_vnni")
LABELS = {
    "sse": "SSE4 (no AVX2)",
    "avx2": "AVX2, no VNNI",
    "avx512": "AVX-512, no VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_vnni": "AVX-512 VNNI",
    "asimddp": "ARM NEON with dot product (asimddp)",
    "asimd": "ARM NEON, no dot product",
    "unknown": "unknown",
}
FBGEMM_ENV = "FBGEMM_ENABLE_INSTRUCTIONS"
ONEDNN_ENV = "ONEDNN_MAX_CPU_ISA"


@dataclass(frozen=True)
class Int8Isa:
    """The int8 instruction level a CPU (or a runtime on it) uses; ``name`` is one of LABELS' keys."""

    name: str

    @property
    def dot_product(self) -> bool:
        """One instruction multiplies int8s and adds them into 32 bits (x86 VNNI, ARM sdot/udot)."""
        return self.name in ("avx_vnni", "avx512_vnni", "asimddp")

    @property
    def saturates_u8s8(self) -> bool:
        """uint8 x int8 products are added in pairs in 16 bits (vpmaddubsw), which saturate at full 8-bit range."""
        return self.name in ("avx2", "avx512")

    @property
    def label(self) -> str:
        return LABELS.get(self.name, self.name)

    def __str__(self) -> str:
        return self.name


# ---- what the CPU has -------------------------------------------------------------


def _numpy_features() -> set[str]:
    """The features numpy read with CPUID at import (it sees what an emulator such as qemu pretends to be)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__  # numpy 1.x
        except ImportError:
            return set()
    return {name.lower() for name, present in __cpu_features__.items() if present}


def _cpuinfo_flags() -> set[str]:
    """Linux's flags (x86) or Features (ARM) line; empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def isa_from_features(features: set[str], machine: str) -> Int8Isa:
    """The int8 level from CPU feature names, numpy's (avx512vnni, asimddp) or Linux's (avx512_vnni, asimddp)."""
    machine = machine.lower()
    if machine in ("aarch64", "arm64", "armv8l", "armv7l"):
        return Int8Isa("asimddp" if "asimddp" in features else "asimd")
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return Int8Isa("unknown")
    if {"avx512vnni", "avx512_vnni"} & features:
        return Int8Isa("avx512_vnni")
    if {"avxvnni", "avx_vnni"} & features:
        return Int8Isa("avx_vnni")
    if {"avx512bw"} & features:
        return Int8Isa("avx512")
    if "avx2" in features:
        return Int8Isa("avx2")
    return Int8Isa("sse")


def int8_isa() -> Int8Isa:
    """This CPU's int8 level. numpy's CPUID reading first (it is what the running code sees, emulated or not),
    Linux's /proc/cpuinfo where numpy says nothing."""
    features = _numpy_features() or _cpuinfo_flags()
    return isa_from_features(features, platform.machine())


# ---- what PyTorch's engines use ---------------------------------------------------


def _cap_from_env(variable: str) -> str | None:
    """The x86 level an engine's environment variable allows, or None when it is unset or not understood."""
    value = os.environ.get(variable, "").strip().upper()
    if not value or value in ("ALL", "DEFAULT"):
        return None
    if variable == FBGEMM_ENV:  # fbgemm: AVX2, AVX512, AVX512_256, AVX512_E1 (E1 = VNNI), AVX512_E1_256
        return (
            "avx512_vnni"
            if "E1" in value
            else "avx512"
            if value.startswith("AVX512")
            else "avx2"
            if value == "AVX2"
            else None
        )
    # oneDNN: SSE41, AVX, AVX2, AVX2_VNNI(_2), AVX512_CORE, AVX512_CORE_VNNI, AVX512_CORE_BF16, ..._AMX, AVX10_*
    if value in ("SSE41", "AVX"):
        return "sse"
    if value == "AVX2":
        return "avx2"
    if value.startswith("AVX2_VNNI"):
        return "avx_vnni"
    if value == "AVX512_CORE":
        return "avx512"
    if value.startswith(("AVX512_CORE_", "AVX10")):
        return "avx512_vnni"
    return None


def _lower(cpu: Int8Isa, cap: str | None) -> Int8Isa:
    if cap is None or cpu.name not in X86_LEVELS:
        return cpu
    return Int8Isa(min(cpu.name, cap, key=X86_LEVELS.index))


def engine_isa(engine: str, honour_env: bool = True) -> Int8Isa:
    """The int8 level PyTorch's ``engine`` runs with here: the CPU's, lowered by the engine's environment variable.

    qnnpack's x86 kernels are SSE2 (exact, and slow); fbgemm (under ``x86`` and ``fbgemm``) knows AVX-512 VNNI
    but not AVX-VNNI.
    """
    cpu = int8_isa()
    if cpu.name not in X86_LEVELS:
        return cpu
    if engine == "qnnpack":
        return Int8Isa("sse")
    if engine in ("x86", "fbgemm"):
        level = _lower(cpu, _cap_from_env(FBGEMM_ENV) if honour_env else None)
        return Int8Isa("avx2") if level.name == "avx_vnni" else level
    if engine == "onednn":
        return _lower(cpu, _cap_from_env(ONEDNN_ENV) if honour_env else None)
    return cpu


def capped_engines() -> dict[str, str]:
    """Engines whose environment variable lowers them below the CPU: {engine: level}; {} normally."""
    capped = {}
    for engine, variable in (("x86", FBGEMM_ENV), ("onednn", ONEDNN_ENV)):
        level = engine_isa(engine)
        if level != engine_isa(engine, honour_env=False):
            capped[engine] = f"{level.name} ({variable}={os.environ[variable]})"
    return capped


def describe() -> str:
    """One line for every report: the CPU's int8 level, what it means, and any engine held below it."""
    isa = int8_isa()
    meaning = (
        "exact int8 dot products"
        if isa.dot_product
        else "uint8 x int8 pairs add in 16 bits and can saturate"
        if isa.saturates_u8s8
        else "int8 kernels widen before adding, exact"
        if isa.name in ("sse", "asimd")
        else ""
    )
    line = f"{isa.label}" + (f": {meaning}" if meaning else "")
    capped = capped_engines()
    if capped:
        line += "; PyTorch engines held lower: " + ", ".join(f"{e} {level}" for e, level in capped.items())
    return line


def machine_fields() -> dict[str, object]:
    """The int8 facts a benchmark report records about its machine."""
    isa = int8_isa()
    return {
        "int8_isa": isa.name,
        "int8_isa_note": describe(),
        "int8_dot_product": isa.dot_product,
        "int8_isa_engines": {engine: engine_isa(engine).name for engine in ("x86", "onednn", "qnnpack")},
    }


# ---- what ONNX Runtime's kernels do here, measured ---------------------------------


def _u8s8_probe_model(weight_value: int) -> bytes:
    """A QDQ model of one 1x1 convolution: 64 uint8 inputs times int8 weights of ``weight_value``."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    constants = {
        "x_scale": np.float32(1 / 255),
        "x_zero": np.uint8(0),
        "w": np.full((8, 64, 1, 1), weight_value, np.int8),
        "w_scale": np.float32(1 / weight_value),
        "w_zero": np.int8(0),
        "y_scale": np.float32(64 / 255),
        "y_zero": np.uint8(0),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["w_dq"]),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zero"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zero"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "u8s8_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 4, 4])],
        [numpy_helper.from_array(np.asarray(value), name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9  # what onnxruntime 1.14 and later read
    return model.SerializeToString()


def onnxruntime_u8s8_error(reduce_range: bool = False) -> float:
    """Relative error of ONNX Runtime's uint8 x int8 convolution on this CPU, at the top of both ranges.

    ONNX Runtime fuses the probe into its int8 convolution (QLinearConv): inputs of 255 times weights of 127
    (63, i.e. 7 bits, with ``reduce_range``). Where the kernel adds pairs of products in 16 bits (AVX2, or
    AVX-512 without VNNI), 2 x 255 x 127 = 64770 saturates at 32767 and the result is about half of fp32's
    (error about 0.5); 2 x 255 x 63 = 32130 fits. Elsewhere the error is 0.
    """
    import numpy as np
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        _u8s8_probe_model(63 if reduce_range else 127), options, providers=["CPUExecutionProvider"]
    )
    image = np.ones((1, 64, 4, 4), np.float32)
    image[..., ::2] = 0.0  # 0s as well, so 1.0 is uint8 255; every output channel's largest value is 64
    got = float(session.run(None, {"x": image})[0].max())
    return abs(got - 64.0) / 64.0
