"""quantlab.engines: the int8 engine `auto` picks, measured once and cached, never one that saturates on this CPU
(checked on both kinds of x86 CPU: the non-VNNI path is forced in a fresh Python)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import NON_VNNI, needs_x86_avx2, run_python
from quantlab import assets, cpu, engines
from quantlab.errors import KitError

ENGINES = [e for e in torch.backends.quantized.supported_engines if e != "none"]

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


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """engine auto with an empty cache folder and nothing remembered in this process."""
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(engines, "_resolved", {})
    monkeypatch.setattr(engines, "is_arm", lambda: False)
    return tmp_path / "cache" / "engine.json"


@pytest.mark.skipif(not {"x86", "onednn"} <= set(ENGINES), reason="needs PyTorch's x86 and onednn engines")
def test_auto_measures_x86_and_onednn_once_then_reads_the_cache(fresh_cache):
    previous = torch.backends.quantized.engine
    engine, reason = engines.resolve_engine("auto")
    assert engine in ("x86", "onednn")
    assert torch.backends.quantized.engine == previous  # measuring leaves the active engine alone
    assert "measured now in" in reason and f"saved to {fresh_cache}" in reason
    key = engines._cache_key()
    assert engines.cpu_name() in key and f"onednn {cpu.engine_isa('onednn')}" in key and torch.__version__ in key
    entry = json.loads(fresh_cache.read_text())[key]
    assert entry["engine"] == engine == min(entry["ms"], key=entry["ms"].get)
    if cpu.engine_isa("onednn").saturates_u8s8:  # no VNNI: onednn's 8-bit activations saturate, x86's 7 do not
        assert engine == "x86" and set(entry["ms"]) == {"x86"} and "saturate" in entry["rejected"]["onednn"]
        assert "onednn rejected: its int8 sums saturate here" in reason
    else:
        assert re.search(r"ran (x86|onednn) [\d.]+ ms, (x86|onednn) [\d.]+ ms", reason)
        assert set(entry["ms"]) == {"x86", "onednn"} and entry["rejected"] == {}

    engines._resolved.clear()  # a new process: the answer comes from the cache
    again, cached_reason = engines.resolve_engine("auto")
    assert again == engine and f"from the cache {fresh_cache}" in cached_reason
    assert engines.resolve_engine("qnnpack") == ("qnnpack", "chosen with --engine")
    with pytest.raises(KitError, match="engine 'tpu' is not available"):
        engines.resolve_engine("tpu")


@pytest.mark.skipif(not {"x86", "onednn"} <= set(ENGINES), reason="needs PyTorch's x86 and onednn engines")
def test_auto_skips_engines_that_fail_and_survives_a_bad_cache(fresh_cache, monkeypatch):
    fresh_cache.parent.mkdir(parents=True)
    fresh_cache.write_text("{not json")
    measured = ({"onednn": 2.5}, {"x86": "int8 output strays from fp32 (cosine 0.500)"})
    monkeypatch.setattr(engines, "measure_engines", lambda candidates: measured)
    engine, reason = engines.resolve_engine("auto")
    assert engine == "onednn"
    assert "onednn 2.50 ms" in reason and "x86 rejected: int8 output strays" in reason
    assert json.loads(fresh_cache.read_text())[engines._cache_key()]["engine"] == "onednn"

    monkeypatch.setattr(engines, "_resolved", {})
    monkeypatch.setenv(assets.CACHE_ENV, "/proc/no-cache-here")  # not writable: still answers, says so
    assert "not cached" in engines.resolve_engine("auto")[1]

    monkeypatch.setattr(engines, "_resolved", {})
    monkeypatch.setattr(engines, "measure_engines", lambda candidates: ({}, {"x86": "boom", "onednn": "boom"}))
    assert engines.resolve_engine("auto")[0] == "x86"  # nothing measurable: PyTorch's default for x86


def test_auto_on_arm_is_qnnpack_without_measuring(monkeypatch):
    monkeypatch.setattr(engines, "is_arm", lambda: True)
    monkeypatch.setattr(engines, "measure_engines", lambda candidates: pytest.fail("measured on ARM"))
    assert engines.resolve_engine("auto")[0] == "qnnpack"
