"""quantlab.cpu: the CPU's int8 capability, and the level each PyTorch engine runs with under the variables that cap it.

A CPU with AVX2 or AVX-512 but no VNNI adds pairs of uint8 x int8 products in
16 bits, which saturate. The int8 paths that depend on it are tested where they
live, on both kinds of x86 CPU: engine auto in test_engines.py, ONNX Runtime's
number format (under ``qemu-x86_64-static -cpu Haswell``) in test_onnx_tools.py,
the level every report records in test_bench.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import NON_VNNI
from quantlab import cpu

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("features", "machine", "expected", "saturates"),
    [
        ({"avx2", "avx512bw", "avx512vnni"}, "x86_64", "avx512_vnni", False),  # numpy's names
        ({"avx2", "avx512bw", "avx512_vnni"}, "x86_64", "avx512_vnni", False),  # Linux's names
        ({"avx2", "avx_vnni"}, "x86_64", "avx_vnni", False),
        ({"avx2", "avx512bw"}, "x86_64", "avx512", True),  # Skylake-SP: AVX-512 without VNNI
        ({"avx2", "fma"}, "x86_64", "avx2", True),  # the AMD EPYC of issue #12
        ({"sse4_2"}, "x86_64", "sse", False),
        ({"asimd", "asimddp"}, "aarch64", "asimddp", False),  # Pi 5 (Cortex-A76)
        ({"asimd"}, "aarch64", "asimd", False),  # Pi 4 (Cortex-A72)
    ],
)
def test_int8_level_from_cpu_features(features, machine, expected, saturates):
    isa = cpu.isa_from_features(features, machine)
    assert isa.name == expected and isa.saturates_u8s8 is saturates
    assert isa.dot_product is (expected in ("avx512_vnni", "avx_vnni", "asimddp"))


def test_engine_levels_honour_the_environment_variables(monkeypatch):
    monkeypatch.setattr(cpu, "int8_isa", lambda: cpu.Int8Isa("avx512_vnni"))
    monkeypatch.delenv(cpu.FBGEMM_ENV, raising=False)
    monkeypatch.delenv(cpu.ONEDNN_ENV, raising=False)
    assert {e: cpu.engine_isa(e).name for e in ("x86", "onednn", "qnnpack")} == {
        "x86": "avx512_vnni",
        "onednn": "avx512_vnni",
        "qnnpack": "sse",
    }
    assert cpu.capped_engines() == {} and "held lower" not in cpu.describe()
    for variable, value in NON_VNNI.items():
        monkeypatch.setenv(variable, value)
    assert cpu.engine_isa("x86").name == cpu.engine_isa("onednn").name == "avx2"
    assert "x86 avx2 (FBGEMM_ENABLE_INSTRUCTIONS=AVX2)" in cpu.describe()
    assert cpu.machine_fields()["int8_isa_engines"]["onednn"] == "avx2"
    monkeypatch.setenv(cpu.FBGEMM_ENV, "AVX512_E1")  # a cap above the CPU changes nothing
    monkeypatch.setenv(cpu.ONEDNN_ENV, "AVX512_CORE")
    assert (cpu.engine_isa("x86").name, cpu.engine_isa("onednn").name) == ("avx512_vnni", "avx512")


# ---- ONNX Runtime on an AVX2 CPU, emulated --------------------------------------
