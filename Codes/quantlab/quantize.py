"""The kit's one-call quantization functions (eager mode, ``torch.ao.quantization``).

Example (what the notebooks do):
    from quantlab import data, models, quantize
    fp32 = models.mobilenet_v2_fp32()
    calibration, _ = data.split(data.course_dataset()[0], first_n=100, seed=0)
    int8 = quantize.quantize_static(fp32, data.loader(calibration), engine="x86")
    dynamic = quantize.quantize_dynamic(fp32)   # only nn.Linear: MobileNetV2 barely shrinks
    qat = quantize.quantize_qat(fp32, data.loader(calibration), engine="x86", epochs=1)

Eager mode needs a model written for it (QuantStub/DeQuantStub around the
network, a ``fuse_model`` method, quantized adds): torchvision ships such
versions of the architectures in ``QUANTIZABLE_ARCHS``.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.ao import quantization as tq
from torch.ao.nn.intrinsic import qat as intrinsic_qat
from tqdm import tqdm

from quantlab.errors import KitError
from quantlab.models import torchvision_model

GRANULARITIES = ("per_channel", "per_tensor")
OBSERVERS = ("histogram", "minmax")
# the architectures torchvision.models.quantization provides in an eager-mode quantizable form
QUANTIZABLE_ARCHS = (
    "mobilenet_v2",
    "mobilenet_v3_large",
    "resnet18",
    "resnet50",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "googlenet",
    "inception_v3",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0",
)


def _activation_quant_max(engine: str) -> int:
    # x86/fbgemm kernels can overflow with full 8-bit activations: PyTorch's defaults use 7 bits there
    return 127 if engine in ("x86", "fbgemm") else 255


def _check_choice(granularity: str, observer: str = "histogram") -> None:
    if granularity not in GRANULARITIES:
        raise KitError(f"unknown granularity '{granularity}'; use one of {', '.join(GRANULARITIES)}")
    if observer not in OBSERVERS:
        raise KitError(f"unknown observer '{observer}'; use one of {', '.join(OBSERVERS)}")


def qconfig_for(engine: str, granularity: str = "per_channel", observer: str = "histogram") -> tq.QConfig:
    """Observers for activations (uint8) and weights (int8, symmetric) that ``engine`` can run."""
    _check_choice(granularity, observer)
    activation_class = tq.HistogramObserver if observer == "histogram" else tq.MinMaxObserver
    activation = activation_class.with_args(dtype=torch.quint8, quant_min=0, quant_max=_activation_quant_max(engine))
    if granularity == "per_channel":  # one scale per output channel: depthwise convs need this
        weight = tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    else:
        weight = tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    return tq.QConfig(activation=activation, weight=weight)


def qat_qconfig_for(engine: str, granularity: str = "per_channel") -> tq.QConfig:
    """Fake quantizers for QAT: round to the int8 grid in the forward pass, let gradients through."""
    _check_choice(granularity)
    # activation ranges from histograms, as in static PTQ: a fine-tune this short cannot undo
    # the coarser ranges a min/max observer would give
    activation = tq.FakeQuantize.with_args(
        observer=tq.HistogramObserver,
        dtype=torch.quint8,
        quant_min=0,
        quant_max=_activation_quant_max(engine),
        qscheme=torch.per_tensor_affine,
    )
    weight = tq.default_per_channel_weight_fake_quant if granularity == "per_channel" else tq.default_weight_fake_quant
    return tq.QConfig(activation=activation, weight=weight)


def quantizable_model(model_fp32: nn.Module, arch: str = "mobilenet_v2") -> nn.Module:
    """torchvision's quantizable ``arch`` (quant/dequant stubs, fuse_model) holding ``model_fp32``'s weights."""
    if hasattr(model_fp32, "fuse_model"):
        return copy.deepcopy(model_fp32)
    if arch not in QUANTIZABLE_ARCHS:
        raise KitError(
            f"'{arch}' has no eager-mode quantizable version in torchvision.models.quantization; "
            f"use one of {', '.join(QUANTIZABLE_ARCHS)}"
        )
    return torchvision_model(arch, model_fp32.state_dict(), "the fp32 model", quantizable=True)


def quantizable_mobilenet_v2(model_fp32: nn.Module) -> nn.Module:
    """torchvision's quantizable MobileNetV2 holding ``model_fp32``'s weights."""
    return quantizable_model(model_fp32, "mobilenet_v2")


def batch_images(batch) -> torch.Tensor | None:
    """The image tensor of a batch: a tensor, an (images, labels) pair, or None (all unreadable)."""
    if batch is None or isinstance(batch, torch.Tensor):
        return batch
    return batch[0]


def calibrate(model: Callable[[torch.Tensor], object], calibration_batches: Iterable, progress: bool = True) -> int:
    """Run every readable calibration batch through ``model`` (its observers record the ranges); the image count.

    A KitError when no image could be read: ranges from nothing would be garbage.
    """
    seen = 0
    with torch.no_grad():  # not inference_mode: PT2E's convert later updates the observers' buffers in place
        for batch in tqdm(calibration_batches, desc="calibrating", unit="batch", disable=not progress):
            images = batch_images(batch)
            if images is None:
                continue
            model(images)
            seen += images.shape[0]
    if seen == 0:
        raise KitError("no calibration image could be read; pass a folder of readable photos")
    return seen


def quantize_static(
    model_fp32: nn.Module,
    calibration_batches: Iterable,
    engine: str,
    granularity: str = "per_channel",
    observer: str = "histogram",
    progress: bool = True,
    arch: str = "mobilenet_v2",
) -> nn.Module:
    """Post-training static quantization: fuse, observe activations on calibration data, convert to int8.

    ``model_fp32`` is left untouched. ``calibration_batches`` yields image tensors
    (Nx3xSxS) or (images, labels) pairs.
    """
    qconfig = qconfig_for(engine, granularity, observer)
    torch.backends.quantized.engine = engine  # prepare/convert pack weights for the active engine
    model = quantizable_model(model_fp32, arch).eval()
    model.fuse_model()  # conv + BN + ReLU become one op: fewer rounding steps, faster
    model.qconfig = qconfig
    tq.prepare(model, inplace=True)
    calibrate(model, calibration_batches, progress)
    tq.convert(model, inplace=True)
    return model.eval()


def quantize_dynamic(model_fp32: nn.Module) -> nn.Module:
    """Dynamic quantization of the nn.Linear and nn.LSTM layers (weights int8, activations quantized on the fly)."""
    return tq.quantize_dynamic(copy.deepcopy(model_fp32).eval(), {nn.Linear, nn.LSTM}, dtype=torch.qint8)


def quantize_qat(
    model_fp32: nn.Module,
    train_batches: Iterable,
    engine: str,
    epochs: int = 1,
    lr: float = 3e-5,
    granularity: str = "per_channel",
    freeze_bn_epoch: int = 0,
    freeze_observers_epoch: int | None = None,
    max_batches_per_epoch: int | None = None,
    progress: bool = True,
    arch: str = "mobilenet_v2",
) -> nn.Module:
    """Quantization-aware training: fine-tune with fake quantization, then convert to int8.

    ``train_batches`` yields (images, labels) pairs (labels: ImageNet-1k indices);
    it is iterated once per epoch. BatchNorm statistics are frozen from epoch
    ``freeze_bn_epoch`` (0 = from the start: small fine-tuning batches give noisy
    statistics), observers from ``freeze_observers_epoch`` (default: the last
    epoch, so the final weights are trained against fixed int8 ranges).
    ``model_fp32`` is left untouched.
    """
    if epochs < 1:
        raise KitError(f"QAT needs at least 1 epoch, got {epochs}")
    if lr <= 0:
        raise KitError(f"the learning rate must be positive, got {lr}")
    if freeze_observers_epoch is None:
        freeze_observers_epoch = epochs - 1 if epochs > 1 else epochs
    qconfig = qat_qconfig_for(engine, granularity)
    torch.backends.quantized.engine = engine
    model = quantizable_model(model_fp32, arch).train()
    model.fuse_model(is_qat=True)  # conv+BN stay separate inside a QAT module, so BN keeps training
    model.qconfig = qconfig
    tq.prepare_qat(model, inplace=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_function = nn.CrossEntropyLoss()
    seen = 0
    for epoch in range(epochs):
        model.train()
        if epoch >= freeze_bn_epoch:
            model.apply(intrinsic_qat.freeze_bn_stats)
        if epoch >= freeze_observers_epoch:
            model.apply(tq.disable_observer)
        batches = itertools.islice(train_batches, max_batches_per_epoch)
        bar = tqdm(
            batches,
            desc=f"QAT epoch {epoch + 1}/{epochs}",
            unit="batch",
            disable=not progress,
            total=max_batches_per_epoch,
        )
        for batch in bar:
            if batch is None:
                continue
            if isinstance(batch, torch.Tensor):
                raise KitError("QAT needs labelled images: pass (images, labels) batches, e.g. from data.loader")
            images, labels = batch[0], batch[1]
            optimizer.zero_grad()
            loss = loss_function(model(images), labels)
            loss.backward()
            optimizer.step()
            seen += images.shape[0]
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if seen == 0:
        raise KitError("no training image could be read; pass a folder of readable, labelled photos")
    model.eval()
    return tq.convert(model, inplace=False).eval()
