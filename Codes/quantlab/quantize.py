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
import difflib
import functools
import itertools
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.ao import quantization as tq
from torch.ao.nn import intrinsic
from torch.ao.nn.intrinsic import qat as intrinsic_qat
from tqdm import tqdm

from quantlab.errors import KitError
from quantlab.models import AUX_HEADS, torchvision_model
from quantlab.vocab import GRANULARITIES, OBSERVERS

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


def qconfig_for(
    engine: str, granularity: str = "per_channel", observer: str = "histogram", weight_bits: int = 8
) -> tq.QConfig:
    """Observers for activations (uint8) and weights (int8, symmetric) that ``engine`` can run.

    ``weight_bits`` below 8 keeps the weights to fewer levels ([-32, 31] for 6 bits), run by the same int8
    kernels: how a lower-precision weight format would round, measured on this CPU.
    """
    _check_choice(granularity, observer)
    if not 2 <= weight_bits <= 8:
        raise KitError(f"weight_bits must be between 2 and 8 (int8 kernels run them), got {weight_bits}")
    activation_class = tq.HistogramObserver if observer == "histogram" else tq.MinMaxObserver
    activation = activation_class.with_args(dtype=torch.quint8, quant_min=0, quant_max=_activation_quant_max(engine))
    weight_range = (
        {} if weight_bits == 8 else {"quant_min": -(2 ** (weight_bits - 1)), "quant_max": 2 ** (weight_bits - 1) - 1}
    )
    if granularity == "per_channel":  # one scale per output channel: depthwise convs need this
        weight = tq.PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric, **weight_range
        )
    else:
        weight = tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, **weight_range)
    return tq.QConfig(activation=activation, weight=weight)


def qat_qconfig_for(engine: str, granularity: str = "per_channel") -> tq.QConfig:
    """Fake quantizers for QAT: round to the int8 grid in the forward pass, let gradients through.

    PyTorch's standard choice for activations: a moving average of each batch's min and max
    (``MovingAverageMinMaxObserver``), which follows the activations as the weights train; a histogram
    observer merges every batch into one running histogram (old batches weigh as much as new ones), and
    costs a histogram search on every step.
    """
    _check_choice(granularity)
    activation = tq.FakeQuantize.with_args(
        observer=tq.MovingAverageMinMaxObserver,
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


def weighted_layers(model: nn.Module) -> list[str]:
    """The names of a fused quantizable model's layers that hold weights, what quantization rounds: each conv or
    Linear, or the fused module (ConvReLU2d) that holds it."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, intrinsic.ConvReLU2d) or (
            isinstance(module, (nn.Conv2d, nn.Linear)) and not isinstance(_parent(model, name), intrinsic.ConvReLU2d)
        ):
            names.append(name)
    return names


def _parent(model: nn.Module, name: str) -> nn.Module:
    parent_name = name.rpartition(".")[0]
    return model.get_submodule(parent_name) if parent_name else model


def check_layer_names(names: Iterable[str], known: list[str], arch: str = "the model") -> None:
    """A KitError naming the first unknown layer and the known names closest to it (a typo shows its fix)."""
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6) or known[:3]
            raise KitError(
                f"{arch} has no layer with weights named {str(name)[:60]!r}; close names: {', '.join(close)} "
                f"({len(known)} layers: quantize.weighted_layers lists them)"
            )


@functools.lru_cache(maxsize=4)
def arch_layers(arch: str) -> dict[str, tuple[int, ...]]:
    """The fused quantizable ``arch``'s layers with weights, in the network's order, and each one's weight shape
    (of the conv inside a ConvReLU2d): built without weights, so no download and no photos."""
    from torchvision.models import quantization

    if arch not in QUANTIZABLE_ARCHS:
        raise KitError(f"'{arch}' has no eager-mode quantizable version; use one of {', '.join(QUANTIZABLE_ARCHS)}")
    extra = {"aux_logits": False, "init_weights": False} if arch in AUX_HEADS else {}
    model = getattr(quantization, arch)(weights=None, quantize=False, **extra).eval()
    model.fuse_model()
    shapes = {}
    for name in weighted_layers(model):
        layer = model.get_submodule(name)
        weight = layer[0].weight if isinstance(layer, intrinsic.ConvReLU2d) else layer.weight
        shapes[name] = tuple(weight.shape)
    return shapes


def keep_float(model: nn.Module, names: Iterable[str]) -> None:
    """Leave the named layers of a fused, not yet prepared model in float: a DeQuantStub before each, a
    QuantStub after it, so that int8 tensors come in and go out as the neighbours expect."""
    names = list(names)
    check_layer_names(names, weighted_layers(model))
    for name in names:
        parent, child = _parent(model, name), name.rpartition(".")[2]
        layer = getattr(parent, child)
        layer.qconfig = None  # prepare and convert leave a module whose qconfig is None alone
        setattr(parent, child, nn.Sequential(tq.DeQuantStub(), layer, tq.QuantStub()))


def quantize_static(
    model_fp32: nn.Module,
    calibration_batches: Iterable,
    engine: str,
    granularity: str = "per_channel",
    observer: str = "histogram",
    progress: bool = True,
    arch: str = "mobilenet_v2",
    float_layers: Iterable[str] = (),
    weight_bits: int = 8,
) -> nn.Module:
    """Post-training static quantization: fuse, observe activations on calibration data, convert to int8.

    ``model_fp32`` is left untouched. ``calibration_batches`` yields image tensors
    (Nx3xSxS) or (images, labels) pairs. ``float_layers`` (names from
    ``weighted_layers``) stay in float (``keep_float``); ``weight_bits`` as in ``qconfig_for``.
    """
    qconfig = qconfig_for(engine, granularity, observer, weight_bits)
    torch.backends.quantized.engine = engine  # prepare/convert pack weights for the active engine
    model = quantizable_model(model_fp32, arch).eval()
    model.fuse_model()  # conv + BN + ReLU become one op: fewer rounding steps, faster
    keep_float(model, float_layers)
    model.qconfig = qconfig
    tq.prepare(model, inplace=True)
    calibrate(model, calibration_batches, progress)
    tq.convert(model, inplace=True)
    return model.eval()


def quantize_dynamic(model_fp32: nn.Module) -> nn.Module:
    """Dynamic quantization of the nn.Linear, nn.LSTM and nn.GRU layers (weights int8, activations quantized on
    the fly)."""
    return tq.quantize_dynamic(copy.deepcopy(model_fp32).eval(), {nn.Linear, nn.LSTM, nn.GRU}, dtype=torch.qint8)


def distillation_loss(teacher: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss(logits, images)``: KL divergence of the model's predicted distribution from ``teacher``'s on the
    same images (knowledge distillation at temperature 1)."""
    teacher = teacher.eval()

    def loss(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(images).log_softmax(dim=1)
        return nn.functional.kl_div(logits.log_softmax(dim=1), target, log_target=True, reduction="batchmean")

    return loss


def quantize_qat(
    model_fp32: nn.Module,
    train_batches: Iterable,
    engine: str,
    epochs: int = 1,
    lr: float = 3e-5,
    granularity: str = "per_channel",
    freeze_bn_epoch: float = 0,
    freeze_observers_epoch: float | None = None,
    max_batches_per_epoch: int | None = None,
    progress: bool = True,
    arch: str = "mobilenet_v2",
    teacher: nn.Module | None = None,
) -> nn.Module:
    """Quantization-aware training: fine-tune with fake quantization, then convert to int8.

    ``train_batches`` yields (images, labels) pairs (labels: ImageNet-1k indices);
    it is iterated once per epoch, after one pass without gradients that sets the
    observers' ranges from the photos (as PTQ's calibration would). The loss is
    cross-entropy on the labels or, with ``teacher`` (usually the float model),
    distillation: the KL divergence from the teacher's predicted distribution,
    which needs no labels and does not pull the model towards the classes of
    the few training photos. Freezing is staged, in epochs counted from 0
    (a fraction is part of an epoch: 0.5 is halfway through the first):
    BatchNorm statistics from ``freeze_bn_epoch`` (0 = from the start: small
    fine-tuning batches give noisy statistics), observers from
    ``freeze_observers_epoch`` (default: the last epoch, or halfway through a
    single one, so the final weights are trained against fixed int8 ranges).
    ``model_fp32`` is left untouched.
    """
    if epochs < 1:
        raise KitError(f"QAT needs at least 1 epoch, got {epochs}")
    if lr <= 0:
        raise KitError(f"the learning rate must be positive, got {lr}")
    if freeze_observers_epoch is None:
        freeze_observers_epoch = epochs - 1 if epochs > 1 else 0.5
    try:
        batches_per_epoch = len(train_batches)  # type: ignore[arg-type]
    except TypeError:
        batches_per_epoch = None
    if max_batches_per_epoch is not None:
        batches_per_epoch = min(batches_per_epoch or max_batches_per_epoch, max_batches_per_epoch)
    for name, when in (("freeze_bn_epoch", freeze_bn_epoch), ("freeze_observers_epoch", freeze_observers_epoch)):
        if not math.isfinite(when) or when < 0:
            raise KitError(f"{name} must be a number of epochs, 0 or more, got {when}")
        if when != int(when) and not batches_per_epoch:
            raise KitError(f"{name}={when} is part of an epoch: pass a sized loader or max_batches_per_epoch")
    qconfig = qat_qconfig_for(engine, granularity)
    torch.backends.quantized.engine = engine
    model = quantizable_model(model_fp32, arch).train()
    model.fuse_model(is_qat=True)  # conv+BN stay separate inside a QAT module, so BN keeps training
    model.qconfig = qconfig
    tq.prepare_qat(model, inplace=True)
    model.eval()  # ranges first: the observers see the photos; eval mode leaves BatchNorm's statistics alone
    with torch.no_grad():
        for batch in itertools.islice(train_batches, max_batches_per_epoch):
            if batch is not None and not isinstance(batch, torch.Tensor):
                model(batch[0])
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_function = distillation_loss(teacher) if teacher is not None else nn.CrossEntropyLoss()
    seen, bn_frozen, ranges_frozen = 0, False, False
    for epoch in range(epochs):
        model.train()
        bar = tqdm(
            itertools.islice(train_batches, max_batches_per_epoch),
            desc=f"QAT epoch {epoch + 1}/{epochs}",
            unit="batch",
            disable=not progress,
            total=batches_per_epoch,
        )
        for step, batch in enumerate(bar):
            done = epoch + step / batches_per_epoch if batches_per_epoch else epoch  # epochs trained so far
            if not bn_frozen and done >= freeze_bn_epoch:  # once: the flags stay set through train()
                model.apply(intrinsic_qat.freeze_bn_stats)
                bn_frozen = True
            if not ranges_frozen and done >= freeze_observers_epoch:
                model.apply(tq.disable_observer)
                ranges_frozen = True
            if batch is None:
                continue
            if isinstance(batch, torch.Tensor):
                raise KitError("QAT needs labelled images: pass (images, labels) batches, e.g. from data.loader")
            images, labels = batch[0], batch[1]
            optimizer.zero_grad()
            loss = loss_function(model(images), labels if teacher is None else images)
            loss.backward()
            optimizer.step()
            seen += images.shape[0]
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if seen == 0:
        raise KitError("no training image could be read; pass a folder of readable, labelled photos")
    model.eval()
    return tq.convert(model, inplace=False).eval()
