"""quantlab.coverage: which layers with weights are int8, and the MB of weights left in float."""

from __future__ import annotations

import pytest
import torch
import torchvision

from conftest import run_in_process
from quantlab import coverage
from quantlab.errors import KitError


def test_torchvision_int8_mobilenet_v2_is_int8_throughout_and_the_float_one_is_not(int8_weights):
    torch.backends.quantized.engine = "qnnpack"
    int8 = torchvision.models.quantization.mobilenet_v2(weights=None, quantize=True)
    int8.load_state_dict(torch.load(int8_weights, weights_only=True))
    fp32 = torchvision.models.mobilenet_v2(weights=None)
    quantized, floating = coverage.module_coverage(int8), coverage.module_coverage(fp32)
    assert floating["layers"] == quantized["layers"] == 53  # 52 convolutions and the classifier
    assert quantized["int8_layers"] == 53 and quantized["float_layers"] == [] and quantized["float_weight_mb"] == 0
    parameters = sum(p.numel() for n, p in fp32.named_parameters() if p.dim() >= 2)
    assert floating["float_weight_mb"] == pytest.approx(4 * parameters / 1e6, abs=1e-3)
    assert quantized["int8_weight_mb"] == pytest.approx(parameters / 1e6, abs=1e-3)  # one byte per weight


def test_a_layer_left_in_float_is_named_with_its_megabytes():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8, 4))
    model[2] = torch.ao.nn.quantized.Linear(8, 4)
    report = coverage.module_coverage(model)
    assert report["float_layers"] == ["0"] and report["int8_layers"] == 1
    assert report["float_weight_mb"] == pytest.approx(8 * 3 * 3 * 3 * 4 / 1e6)
    assert "1 of 2 layers with weights in int8" in coverage.format_coverage(report)


def test_a_model_without_weights_and_a_missing_file_get_one_line(tmp_path):
    with pytest.raises(KitError, match="no layer with weights"):
        coverage.module_coverage(torch.nn.ReLU())
    result = run_in_process("../Codes/quantlab/coverage.py", tmp_path / "absent.onnx")
    assert result.returncode == 2 and "does not exist" in result.stderr
