"""quantlab.litert: LiteRT's runtime runs .tflite files like the kit's other models; litert-torch writes them.

The runtime tests need ai-edge-litert (requirements-dev.txt installs it) and build their .tflite files at test
time with LiteRT's flatbuffer schema (``litert.write_mean_classifier``): no binary is committed. The conversion
tests need litert-torch, which the kit keeps out of the default install (``pip install -e '.[litert]'`` in a
virtual environment of its own); without it they skip, and the one-line error for the missing converter is
tested instead.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_in_process, run_script
from quantlab import litert, loading
from quantlab.errors import KitError

HAS_RUNTIME = importlib.util.find_spec("ai_edge_litert") is not None
HAS_CONVERTER = importlib.util.find_spec("litert_torch") is not None
needs_runtime = pytest.mark.skipif(not HAS_RUNTIME, reason=f"LiteRT's runtime is not installed ({litert.RUNTIME_PIN})")
needs_converter = pytest.mark.skipif(
    not (HAS_RUNTIME and HAS_CONVERTER), reason=f"litert-torch is not installed ({litert.CONVERTER_PIN}, optional)"
)


@pytest.fixture
def mean_classifier(tmp_path: Path) -> Path:
    return litert.write_mean_classifier(tmp_path / "mean.tflite")


@needs_runtime
def test_the_interpreter_computes_what_the_file_says(mean_classifier: Path) -> None:
    model = litert.LiteRTModel(mean_classifier, threads=1)
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    scores = model(images)  # a batch of 3 through a batch-1 interpreter: one photo at a time
    assert scores.shape == (3, 1000) and scores.dtype == torch.float32
    np.testing.assert_allclose(scores.numpy(), litert.mean_classifier_scores(images.numpy()), atol=1e-5)
    assert model.input_shape == [1, 3, 224, 224] and not model.int8


@needs_runtime
def test_an_int8_file_takes_and_returns_int8_and_the_model_converts_for_you(tmp_path: Path) -> None:
    quantization = {"image": (0.02, -9), "channel_means": (0.012, 4), "scores": (0.004, -11)}
    path = litert.write_mean_classifier(tmp_path / "int8.tflite", input_size=8, int8=quantization)
    model = litert.LiteRTModel(path, threads=1)
    assert model.int8 and np.dtype(model.input["dtype"]) == np.int8 == np.dtype(model.output["dtype"])
    assert model.input["quantization"] == pytest.approx((0.02, -9))
    assert model.output["quantization"] == pytest.approx((0.004, -11))
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    scores = model(images).numpy()
    # within a few int8 steps of the float computation (input, means and scores are each rounded once)
    np.testing.assert_allclose(scores, litert.mean_classifier_scores(images.numpy()), atol=0.03)


@needs_runtime
def test_load_any_reads_a_tflite_file(mean_classifier: Path) -> None:
    loaded = loading.load_any(str(mean_classifier), engine="auto", threads=1)
    assert (loaded.format, loaded.runtime, loaded.engine, loaded.method) == ("tflite", "litert", None, "fp32")
    assert loaded.parameters == 3000  # the 1000 x 3 weight; the axes of MEAN are no weights
    assert loaded.batch_one and not loaded.quantized
    assert loaded.size_mb > 0 and loaded.sha256


@needs_runtime
def test_a_tflite_that_is_not_a_1000_class_classifier_is_one_line(tmp_path: Path) -> None:
    ten = litert.write_mean_classifier(tmp_path / "ten.tflite", classes=10)
    with pytest.raises(KitError, match=r"returns \[1, 10\] for one image, not the 1000 ImageNet class scores"):
        loading.load_any(str(ten), engine="auto", threads=1)


@needs_runtime
def test_an_operator_the_runtime_lacks_is_one_line(tmp_path: Path) -> None:
    custom = litert.write_mean_classifier(tmp_path / "custom.tflite", custom_op="QuantlabNoSuchOp")
    with pytest.raises(KitError, match="QuantlabNoSuchOp.*an operator this runtime lacks") as raised:
        litert.LiteRTModel(custom, threads=1)
    assert "\n" not in str(raised.value)


@needs_runtime
def test_a_file_that_is_no_tflite_is_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "model.tflite"
    fake.write_bytes(b"PK\x03\x04 a zip archive, not a flatbuffer")
    with pytest.raises(KitError, match="is not a LiteRT .* lacks the 'TFL3' mark"):
        litert.LiteRTModel(fake, threads=1)
    with pytest.raises(KitError, match="does not exist"):
        litert.LiteRTModel(tmp_path / "missing.tflite", threads=1)


@needs_runtime
def test_benchmark_and_the_demo_run_a_tflite_file(mean_classifier: Path, tmp_path: Path) -> None:
    done = run_script(
        "benchmark.py", "--model", mean_classifier, "--runs", "3", "--warmup", "1", "--json", tmp_path / "r.json"
    )
    assert done.returncode == 0, done.stderr
    assert "litert" in (tmp_path / "r.json").read_text()
    ten = litert.write_mean_classifier(tmp_path / "ten.tflite", classes=10)
    refused = run_in_process("benchmark.py", "--model", ten, "--runs", "1")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    loaded = loading.load_any(str(mean_classifier), "auto", 1, check=False)
    assert loaded.runtime == "litert" and loaded.format == "tflite" and "LiteRT" in loaded.engine_reason
    assert loaded.model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
    demo = run_script("mobile_net.py", "--model", mean_classifier, "--source", "samples", "--frames", "2")
    assert demo.returncode == 0 and "LiteRT" in demo.stdout, demo.stderr


def test_a_missing_runtime_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails as if not installed
    with pytest.raises(KitError, match=r"LiteRT's runtime is not installed: pip install ai-edge-litert==2\.3\.0"):
        litert.LiteRTModel(tmp_path / "any.tflite", threads=1)


def test_a_missing_converter_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    with pytest.raises(KitError, match="needs LiteRT's converter, which is not installed: pip install litert-torch"):
        litert.convert_fp32(nn.Conv2d(3, 4, 3), tmp_path / "x.tflite")


@pytest.mark.skipif(HAS_CONVERTER, reason="litert-torch is installed: the conversion tests below run instead")
def test_quantize_model_without_the_converter_stops_in_one_line(tmp_path: Path) -> None:
    done = run_in_process("quantize_model.py", "--output", tmp_path / "m.tflite", "--calib-images", "2")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: writing .tflite needs LiteRT's converter") and done.stderr.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_quantize_model_refuses_what_litert_does_not_get(tmp_path: Path) -> None:
    for flags, said in ((["--method", "dynamic"], "drop --method dynamic"), (["--observer", "minmax"], "minmax")):
        done = run_in_process("quantize_model.py", "--output", tmp_path / "m.tflite", *flags)
        assert done.returncode == 2 and said in done.stderr and done.stderr.count("\n") == 1, done.stderr
    done = run_in_process("quantize_model.py", "--output", tmp_path / "m.pt", "--format", "tflite")
    assert done.returncode == 2 and "name it FILE.tflite" in done.stderr, done.stderr


class SmallNet(nn.Module):
    """A convolution, a depthwise one and a classifier: the layers MobileNetV2 is made of, at 32x32."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU6(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6()
        )
        self.classifier = nn.Linear(16, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


@needs_converter
def test_fp32_and_int8_conversion_keep_the_answers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = SmallNet().eval()
    images = torch.rand(16, 3, 32, 32) * 4 - 2
    with torch.no_grad():
        expected = net(images)
    litert.convert_fp32(net, tmp_path / "fp32.tflite", input_size=32)
    fp32 = litert.LiteRTModel(tmp_path / "fp32.tflite", threads=1)
    np.testing.assert_allclose(fp32(images).numpy(), expected.numpy(), atol=1e-4)
    assert not fp32.int8

    facts = litert.convert_int8(net, [images[:8], images[8:]], tmp_path / "int8.tflite", input_size=32)
    assert facts["calibration_images"] == 16 and "PT2EQuantizer" in facts["quantizer"]
    int8 = litert.LiteRTModel(tmp_path / "int8.tflite", threads=1)
    assert int8.int8 and int8.input["dtype"] == np.int8  # int8 in, int8 out: the wrapper (de)quantizes
    scores = int8(images)
    cosine = torch.nn.functional.cosine_similarity(scores, expected, dim=1)
    assert float(cosine.min()) > 0.95, cosine
    # int8 weights; per-channel scales and zero points take their share of so small a model (MobileNetV2: 3.5x)
    assert (tmp_path / "int8.tflite").stat().st_size < 0.7 * (tmp_path / "fp32.tflite").stat().st_size
