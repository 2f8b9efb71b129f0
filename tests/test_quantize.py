"""quantlab.quantize's QAT: staged freezing that also happens within a single epoch, distillation, bad settings
(issue #14). In-process, on a randomly initialised MobileNetV2 and 32x32 images (seconds)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.ao import quantization as tq

from quantlab import quantize
from quantlab.errors import KitError


@pytest.fixture(scope="module")
def float_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v2(weights=None).eval()


def batches(count: int, labels: int | None = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    label = torch.full((2,), -100 if labels is None else labels)  # -100: ignored by cross-entropy, never a class
    return [(torch.randn(2, 3, 32, 32, generator=generator), label) for _ in range(count)]


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What happened, in order: optimizer steps, and the first observer freeze of each apply."""
    happened: list[str] = []
    step, disable = torch.optim.SGD.step, tq.disable_observer

    def recorded_step(self, *args, **kwargs):
        happened.append("step")
        return step(self, *args, **kwargs)

    def recorded_disable(module):
        if not happened or happened[-1] != "freeze ranges":
            happened.append("freeze ranges")
        return disable(module)

    monkeypatch.setattr(torch.optim.SGD, "step", recorded_step)
    monkeypatch.setattr(tq, "disable_observer", recorded_disable)
    return happened


def test_a_single_epoch_freezes_the_ranges_halfway(float_model, events) -> None:
    quantize.quantize_qat(float_model, batches(4), "qnnpack", epochs=1, lr=1e-4, progress=False)
    assert events[:3] == ["step", "step", "freeze ranges"], events
    assert events.count("step") == 4


def test_the_last_epoch_trains_against_frozen_ranges(float_model, events) -> None:
    quantize.quantize_qat(float_model, batches(2), "qnnpack", epochs=3, lr=1e-4, progress=False)
    assert events.index("freeze ranges") == 4, events  # after the 2 steps of epochs 1 and 2, before epoch 3's


def test_distillation_needs_no_labels(float_model) -> None:
    images = batches(1)[0][0]
    loss = quantize.distillation_loss(float_model)
    assert loss(float_model(images), images).abs().item() < 1e-6  # the teacher against itself: nothing to learn
    int8 = quantize.quantize_qat(
        float_model, batches(2, labels=None), "qnnpack", epochs=1, lr=1e-4, teacher=float_model, progress=False
    )
    assert int8(images).shape == (2, 1000)


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"freeze_observers_epoch": float("nan")}, "a number of epochs"),
        ({"freeze_bn_epoch": -1}, "0 or more"),
        ({"epochs": 0}, "at least 1 epoch"),
        ({"lr": 0}, "learning rate"),
    ],
)
def test_bad_settings_are_one_clear_error(float_model, setting: dict, message: str) -> None:
    with pytest.raises(KitError, match=message):
        quantize.quantize_qat(float_model, batches(1), "qnnpack", progress=False, **setting)


def test_part_of_an_epoch_needs_to_know_the_epoch_length(float_model) -> None:
    with pytest.raises(KitError, match="part of an epoch"):
        quantize.quantize_qat(float_model, iter(batches(2)), "qnnpack", epochs=1, progress=False)


def test_float_layers_stay_float_between_stubs(float_model) -> None:
    fused = quantize.quantizable_model(float_model).eval()
    fused.fuse_model()
    names = quantize.weighted_layers(fused)
    assert len(names) == 53 and names[0] == "features.0.0" and names[-1] == "classifier.1"  # 52 convs, 1 Linear
    images = batches(1)[0][0]
    int8 = quantize.quantize_static(
        float_model, [images], "qnnpack", "per_tensor", "minmax", progress=False, float_layers=["features.0.0"]
    )
    island = int8.features[0][0]
    kinds = [type(module).__name__ for module in island]
    assert kinds == ["DeQuantize", "ConvReLU2d", "Quantize"], kinds  # float conv+ReLU between the conversions
    assert type(int8.features[1].conv[0][0]).__name__ == "ConvReLU2d" and hasattr(int8.features[1].conv[0][0], "scale")
    assert int8(images).shape == (2, 1000)
    with pytest.raises(KitError, match="no layer with weights named 'features.0'"):
        quantize.quantize_static(float_model, [images], "qnnpack", progress=False, float_layers=["features.0"])


def test_fewer_weight_bits_keep_to_fewer_integers(float_model) -> None:
    images = batches(1)[0][0]
    six_bit = quantize.quantize_static(
        float_model, [images], "qnnpack", "per_tensor", "minmax", progress=False, weight_bits=6
    )
    weights = six_bit.features[0][0].weight().int_repr()
    assert weights.min() >= -32 and weights.max() <= 31 and weights.abs().max() >= 31
    assert repr(quantize.qconfig_for("x86")) == repr(quantize.qconfig_for("x86", weight_bits=8))
    with pytest.raises(KitError, match="weight_bits"):
        quantize.qconfig_for("x86", weight_bits=9)
