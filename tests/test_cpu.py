"""The CPU's int8 capability (quantlab.cpu) and the int8 paths that depend on it, on both kinds of x86 CPU.

A CPU with AVX2 or AVX-512 but no VNNI adds pairs of uint8 x int8 products in
16 bits, which saturate. This machine may have VNNI, so the non-VNNI code paths
are forced: PyTorch's engines with FBGEMM_ENABLE_INSTRUCTIONS and
ONEDNN_MAX_CPU_ISA (read once per process, hence subprocesses), ONNX Runtime
under ``qemu-x86_64-static -cpu Haswell`` (an AVX2 CPU, emulated: a few photos
only). On a CPU without VNNI the same tests run the real thing.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from quantlab import cpu

REPO = Path(__file__).resolve().parents[1]
X86 = platform.machine().lower() in ("x86_64", "amd64")
NON_VNNI = {cpu.FBGEMM_ENV: "AVX2", cpu.ONEDNN_ENV: "AVX2"}  # what PyTorch's x86 engines use on an AVX2-only CPU
needs_x86_avx2 = pytest.mark.skipif(not X86 or cpu.int8_isa().name == "sse", reason="needs an x86 CPU with AVX2")


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


def test_every_report_records_the_int8_level():
    from quantlab import bench

    machine = bench.machine_info(threads=1, engine="x86")
    assert machine["int8_isa"] == cpu.int8_isa().name and machine["int8_isa_note"] == cpu.describe()
    assert set(machine["int8_isa_engines"]) == {"x86", "onednn", "qnnpack"}


def run_python(code: str, env: dict[str, str], prefix: tuple[str, ...] = (), timeout: float = 300) -> dict:
    """Run ``code`` in a fresh Python (under ``prefix``, e.g. qemu) and return the JSON it prints last."""
    result = subprocess.run(
        [*prefix, sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


AUTO_ON_REAL_PHOTOS = """
    import json, torch
    from quantlab import data, engines, models, quantize
    torch.set_num_threads(1)
    engine, reason = engines.resolve_engine("auto")
    fp32 = models.mobilenet_v2_fp32({weights!r})
    calibration, check = data.split(data.image_dataset({photos!r}), first_n=16, seed=0)
    images = torch.cat([batch[0] for batch in data.loader(check, batch_size=32) if batch is not None])[:32]
    with torch.inference_mode():
        reference = fp32(images)
    found = {{"auto": engine, "reason": reason}}
    for name in sorted({{engine, "onednn"}}):  # onednn: the engine that saturates without VNNI
        model = quantize.quantize_static(fp32, data.loader(calibration, batch_size=8), name, progress=False)
        engines.set_engine(name)
        with torch.inference_mode():
            logits = model(images)
        found[name] = {{"agreement": float((logits.argmax(1) == reference.argmax(1)).float().mean()),
                        "cosine": float(torch.nn.functional.cosine_similarity(logits, reference).mean())}}
    print(json.dumps(found))
"""


@needs_x86_avx2
def test_auto_rejects_an_engine_that_saturates_on_the_non_vnni_path(tmp_path, float_weights, sample_photos):
    """Forced onto the AVX2 code path, auto keeps to an engine whose int8 top-1 matches fp32 on real photos."""
    code = AUTO_ON_REAL_PHOTOS.format(weights=str(float_weights), photos=str(sample_photos))
    found = run_python(code, {**NON_VNNI, "QUANTLAB_CACHE": str(tmp_path / "cache")})
    assert found["auto"] == "x86", found["reason"]
    assert "onednn rejected: its int8 sums saturate here (AVX2, no VNNI)" in found["reason"]
    if cpu.engine_isa("onednn", honour_env=False).name != "avx2":  # the variables lowered this CPU's engines:
        assert "FBGEMM_ENABLE_INSTRUCTIONS=AVX2" in found["reason"]  # the report says which path is in effect
    chosen = found["x86"]
    # 32 photos: top-1 agreement moves in steps of 3 points (x86's 7-bit activations cost a few photos even
    # with VNNI), so the mean cosine of the logits is the sharper measure
    assert chosen["agreement"] >= 0.8 and chosen["cosine"] >= 0.96, found
    # the measurement that makes the rejection right: onednn's logits on the same photos stray much further
    assert found["onednn"]["cosine"] < chosen["cosine"] - 0.02, found
    key = next(iter(json.loads((tmp_path / "cache" / "engine.json").read_text())))
    assert "onednn avx2" in key  # a cached answer for one path is never reused on another


@needs_x86_avx2
def test_saturation_probe_tells_the_paths_apart():
    code = """
        import json
        from quantlab import engines
        print(json.dumps({e: engines.saturation_error(e)[0] for e in ("x86", "onednn")}))
    """
    forced = run_python(code, NON_VNNI)
    assert forced["x86"] < 0.01 and forced["onednn"] > 0.4, forced  # x86 keeps activations to 7 bits: exact
    native = run_python(code, {cpu.FBGEMM_ENV: "", cpu.ONEDNN_ENV: ""})
    if cpu.engine_isa("onednn", honour_env=False).saturates_u8s8:
        assert native["onednn"] > 0.4
    else:
        assert max(native.values()) < 0.01, native


# ---- ONNX Runtime on an AVX2 CPU, emulated --------------------------------------


@pytest.fixture(scope="session")
def qemu_haswell() -> tuple[str, ...]:
    """The command prefix that runs a program on an emulated AVX2 CPU without VNNI (qemu-user, installed when
    missing as root with apt-get, as tools/pi_check does)."""
    if not X86:
        pytest.skip("qemu-x86_64 emulates an x86 CPU: this check runs on x86 hosts")
    qemu = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
    if qemu is None and os.geteuid() == 0 and shutil.which("apt-get"):
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "qemu-user-static"]):
            subprocess.run(
                command, capture_output=True, timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            )
        qemu = shutil.which("qemu-x86_64-static")
    if qemu is None:
        pytest.skip("qemu-x86_64-static not found (apt-get install qemu-user-static, as root)")
    return (qemu, "-cpu", "Haswell")


def test_onnx_runtime_format_is_exact_on_an_avx2_cpu(qemu_haswell, tmp_path, float_weights, sample_photos):
    """What the kit picks for an AVX2 CPU (U8S8 with 7-bit weights) matches fp32 there; full-range U8S8 does not.

    Quantized here, run there: the number format, not the CPU that quantized, decides. Under the emulator
    only numpy and onnxruntime run (importing torch there takes minutes).
    """
    import numpy as np

    from quantlab import data, models, onnx_tools

    fp32_onnx = onnx_tools.export_onnx(models.mobilenet_v2_fp32(float_weights), tmp_path / "fp32.onnx")
    calibration, check = data.split(data.image_dataset(sample_photos), first_n=8, seed=0)
    for reduce_range in (False, True):
        onnx_tools.quantize_onnx_static(
            fp32_onnx,
            tmp_path / f"reduce_range_{reduce_range}.onnx",
            data.loader(calibration, batch_size=8),
            progress=False,
            reduce_range=reduce_range,
        )
    np.save(tmp_path / "images.npy", next(iter(data.loader(check, batch_size=4)))[0].numpy())
    code = f"""
        import json, numpy as np, onnxruntime
        from quantlab import cpu
        folder = {str(tmp_path)!r}
        images = np.load(folder + "/images.npy")
        def run(name):
            session = onnxruntime.InferenceSession(folder + "/" + name, providers=["CPUExecutionProvider"])
            return np.concatenate([session.run(None, {{"input": image[None]}})[0] for image in images])
        def cosine(a, b):
            return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())
        reference = run("fp32.onnx")
        found = {{"isa": cpu.int8_isa().name, "probe": cpu.onnxruntime_u8s8_error(),
                  "probe_reduce_range": cpu.onnxruntime_u8s8_error(reduce_range=True)}}
        for reduce_range in (False, True):
            found[str(reduce_range)] = cosine(run(f"reduce_range_{{reduce_range}}.onnx"), reference)
        print(json.dumps(found))
    """
    found = run_python(code, {}, prefix=qemu_haswell, timeout=600)
    assert found["isa"] == "avx2", found
    assert found["probe"] > 0.4 and found["probe_reduce_range"] < 0.01, found  # what choose_static_format reads
    assert found["True"] > 0.96, found  # the kit's choice for this CPU agrees with fp32
    assert found["False"] < found["True"] - 0.02, found  # full-range U8S8 saturates here


@pytest.mark.parametrize(
    ("errors", "reduce_range", "words"),
    [
        ({False: 0.0}, False, "U8S8 is exact on this CPU"),
        ({False: 0.49, True: 0.0}, True, "U8S8 saturates on this CPU"),
    ],
)
def test_static_format_follows_the_measurement(monkeypatch, errors, reduce_range, words):
    from quantlab import onnx_tools

    monkeypatch.setattr(cpu, "onnxruntime_u8s8_error", lambda reduce_range=False: errors[reduce_range])
    chosen = onnx_tools.choose_static_format()
    assert chosen["reduce_range"] is reduce_range and words in chosen["format_reason"]
    assert chosen["activation_type"] == "uint8" and chosen["target_int8_isa"] == cpu.int8_isa().name
    assert onnx_tools.choose_static_format(reduce_range=True)["weight_type"] == "int8 (7-bit range)"
