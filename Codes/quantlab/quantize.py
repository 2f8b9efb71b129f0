"""The kit's one-call quantization functions (eager mode, ``torch.ao.quantization``).

Example (what the notebooks do):
    from quantlab import data, models, quantize
    fp32 = models.mobilenet_v2_fp32()
    calibration, _ = data.split(data.image_dataset("imagenet-sample"), first_n=100, seed=0)
    int8 = quantize.quantize_static(fp32, data.loader(calibration), engine="x86")
    dynamic = quantize.quantize_dynamic(fp32)   # only nn.Linear: MobileNetV2 barely shrinks
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn
from torch.ao import quantization as tq
from tqdm import tqdm

from quantlab.engines import set_engine
from quantlab.errors import KitError

GRANULARITIES = ("per_channel", "per_tensor")
OBSERVERS = ("histogram", "minmax")


def qconfig_for(engine: str, granularity: str = "per_channel", observer: str = "histogram") -> tq.QConfig:
    """Observers for activations (uint8) and weights (int8, symmetric) that ``engine`` can run."""
    if granularity not in GRANULARITIES:
        raise KitError(f"unknown granularity '{granularity}'; use one of {', '.join(GRANULARITIES)}")
    if observer not in OBSERVERS:
        raise KitError(f"unknown observer '{observer}'; use one of {', '.join(OBSERVERS)}")
    # x86/fbgemm kernels can overflow with full 8-bit activations: PyTorch's defaults use 7 bits there
    quant_max = 127 if engine in ("x86", "fbgemm") else 255
    activation_class = tq.HistogramObserver if observer == "histogram" else tq.MinMaxObserver
    activation = activation_class.with_args(dtype=torch.quint8, quant_min=0, quant_max=quant_max)
    if granularity == "per_channel":  # one scale per output channel: depthwise convs need this
        weight = tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    else:
        weight = tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    return tq.QConfig(activation=activation, weight=weight)


def quantizable_mobilenet_v2(model_fp32: nn.Module) -> nn.Module:
    """torchvision's quantizable MobileNetV2 (quant/dequant stubs, fuse_model) holding ``model_fp32``'s weights."""
    from torchvision.models.quantization import mobilenet_v2

    model = mobilenet_v2(weights=None, quantize=False)
    try:
        model.load_state_dict(model_fp32.state_dict())
    except RuntimeError as error:
        raise KitError(f"the fp32 model is not a MobileNetV2 ({str(error).splitlines()[0][:120]})") from None
    return model.eval()


def _images(batch) -> torch.Tensor | None:
    """The image tensor of a batch: a tensor, an (images, labels) pair, or None (all unreadable)."""
    if batch is None or isinstance(batch, torch.Tensor):
        return batch
    return batch[0]


def quantize_static(model_fp32: nn.Module, calibration_batches: Iterable, engine: str,
                    granularity: str = "per_channel", observer: str = "histogram",
                    progress: bool = True) -> nn.Module:
    """Post-training static quantization: fuse, observe activations on calibration data, convert to int8.

    ``model_fp32`` is left untouched. ``calibration_batches`` yields image tensors
    (Nx3xSxS) or (images, labels) pairs.
    """
    set_engine(engine)  # prepare/convert pack weights for the active engine
    model = quantizable_mobilenet_v2(model_fp32) if not hasattr(model_fp32, "fuse_model") else copy.deepcopy(model_fp32)
    model.eval()
    model.fuse_model()  # conv + BN + ReLU become one op: fewer rounding steps, faster
    model.qconfig = qconfig_for(engine, granularity, observer)
    tq.prepare(model, inplace=True)
    seen = 0
    with torch.inference_mode():
        for batch in tqdm(calibration_batches, desc="calibrating", unit="batch", disable=not progress):
            images = _images(batch)
            if images is None:
                continue
            model(images)
            seen += images.shape[0]
    if seen == 0:
        raise KitError("no calibration image could be read; pass a folder of readable photos")
    tq.convert(model, inplace=True)
    return model.eval()


def quantize_dynamic(model_fp32: nn.Module) -> nn.Module:
    """Dynamic quantization of the nn.Linear layers (weights int8, activations quantized on the fly)."""
    return tq.quantize_dynamic(copy.deepcopy(model_fp32).eval(), {nn.Linear}, dtype=torch.qint8)
