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


def _small_net() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    ).eval()


def test_torchscript_files_count_quantized_operators_frozen_or_not():
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from quantlab import loading

    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "qnnpack"
    example = (torch.randn(1, 3, 16, 16),)
    prepared = prepare_fx(_small_net(), get_default_qconfig_mapping(torch.backends.quantized.engine), example)
    prepared(*example)
    int8 = convert_fx(prepared)
    for scripted in (torch.jit.script(int8), loading._frozen(int8)):
        report = coverage.scripted_coverage(scripted)
        assert report["layers"] == report["int8_layers"] == 2 and report["float_weight_mb"] == 0
    fp32 = coverage.scripted_coverage(loading._frozen(_small_net()))
    assert fp32["int8_layers"] == 0 and fp32["layers"] == 2  # a Conv2d's two padding branches count once
    assert fp32["float_weight_mb"] == pytest.approx((8 * 3 * 3 * 3 + 4 * 8) * 4 / 1e6)
    dynamic = coverage.scripted_coverage(torch.jit.script(torch.ao.quantization.quantize_dynamic(_small_net())))
    assert dynamic["int8_layers"] == 1 and dynamic["float_layers"] == ["0"]  # dynamic leaves the conv in float


def test_pt2e_graphs_count_int8_weights_through_dequantize():
    from quantlab import pt2e

    pytest.importorskip("torchao")
    program, _ = pt2e.quantize(_small_net(), [torch.randn(2, 3, 32, 32)], pt2e.target_for("x86"), 32)
    report = coverage.exported_coverage(program.module())
    assert report["layers"] == 2 and report["int8_layers"] >= 1
    assert report["int8_weight_mb"] == pytest.approx(8 * 3 * 3 * 3 / 1e6) or report["int8_layers"] == 2
    exported = torch.export.export(_small_net(), (torch.randn(1, 3, 32, 32),))
    assert coverage.exported_coverage(exported.module())["float_layers"] == ["0", "4"]  # the float model's layers


def test_the_benchmark_report_carries_coverage_and_checks_it():
    from quantlab import report

    good = {"layers": 2, "int8_layers": 1, "float_layers": ["4"], "int8_weight_mb": 0.1, "float_weight_mb": 0.2}
    result = {"coverage": good}
    assert report._check_fields(result["coverage"], report.COVERAGE_FIELDS, "results[0].coverage") == []
    bad = {**good, "float_layers": "4"}
    problems = report._check_fields(bad, report.COVERAGE_FIELDS, "results[0].coverage")
    assert problems == ["results[0].coverage.float_layers: expected list, got str '4'"]
