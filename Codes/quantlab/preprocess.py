"""Frame -> normalized tensor, cheap enough that the model stays the bottleneck.

The same steps as torchvision's ImageNet evaluation transform (centre crop of
87.5 % of the short side, resize to SIZE, scale to [0, 1], normalize with the
ImageNet mean and std), written with OpenCV on buffers that are reused for
every frame: no PIL conversion, no new array per frame, and only the crop
region is resized.

- Resize: OpenCV's area filter where it is cheap (shrinking by a whole number:
  it averages blocks of pixels), bilinear for what is left (a factor under 2).
  That stays close to torchvision's antialiased resize (the same top-1 accuracy,
  tests/test_preprocess.py checks it) at a fraction of a general area filter's cost.
- Normalize: uint8 -> float32, then one per-pixel 3x4 matrix (``cv2.transform``)
  that scales, shifts and, for BGR frames, swaps the channels, straight into the
  model's input tensor. That tensor is channels-last in memory (HxWx3, like the
  frame, and what int8 convolutions use natively); its shape is the usual 1x3xSxS.

A model that was trained with other inputs declares them (``Preprocessing``, read by ``read_preprocessing``):
its input size, how the frame becomes a square (``crop``: torchvision's centre crop; ``resize``: the whole
frame squeezed; ``letterbox``: the whole frame padded with grey, as YOLO does), its mean and std (on 0..1
pixels, in the model's channel order) and its channel order (``rgb`` or ``bgr``). Where a model declares them:

- a model file's JSON sidecar, key ``preprocessing`` (quantize_model.py writes it);
- your own model ``FILE.py:FUNCTION``: a ``PREPROCESSING`` dict in FILE.py, or the function's ``preprocessing``
  attribute (``build.preprocessing = {...}``), e.g. ``PREPROCESSING = {"mean": 0.5, "std": 0.5}``.

quantize_model.py calibrates with it, benchmark.py and the grader evaluate with it, mobile_net.py runs with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import cv2
import numpy as np
import torch

from quantlab.errors import KitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_FRACTION = 224 / 256  # torchvision's eval transform: resize 256, crop 224
RESIZE_MODES = ("crop", "resize", "letterbox")
CHANNEL_ORDERS = ("rgb", "bgr")
LETTERBOX_GREY = 114  # Ultralytics' padding value


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input: see the module's docstring. The default is torchvision's ImageNet one."""

    size: int | None = None  # None: the size the script is given (--size)
    resize: str = "crop"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channels: str = "rgb"

    def as_dict(self) -> dict:
        """The JSON form (a sidecar's ``preprocessing``), which ``read_preprocessing`` reads back."""
        return {"size": self.size, "resize": self.resize, "mean": list(self.mean), "std": list(self.std),
                "channels": self.channels}  # fmt: skip

    def describe(self) -> str:
        mean, std = (", ".join(f"{v:g}" for v in values) for values in (self.mean, self.std))
        return f"{self.resize}{f' to {self.size}' if self.size else ''}, mean ({mean}), std ({std}), {self.channels}"


IMAGENET = Preprocessing()
_KEYS = ("size", "resize", "mean", "std", "channels")
_CONFIG_KEYS = ("scale", "offset", "color_mode")  # quantize_model.py --config's rescaling, in older sidecars


def _three(value: object, key: str, where: str) -> tuple[float, float, float]:
    values = [value] * 3 if isinstance(value, Real) and not isinstance(value, bool) else value
    if isinstance(values, (list, tuple)) and len(values) == 1:  # one value for every channel, as --config writes
        values = list(values) * 3
    if (
        not isinstance(values, (list, tuple))
        or len(values) != 3
        or not all(isinstance(v, Real) and not isinstance(v, bool) and np.isfinite(v) for v in values)
    ):
        raise KitError(f"{where}: preprocessing {key} must be a number or 3 numbers (one per channel), got {value!r}")
    return tuple(float(v) for v in values)


def read_preprocessing(declared: object, where: str) -> Preprocessing:
    """The ``Preprocessing`` a model declares (a dict as in the module's docstring; None: ImageNet's).

    ``where`` names the declaration in the one-line KitError a bad value gets (e.g. "my_net.py PREPROCESSING").
    The older sidecar form of quantize_model.py --config (scale, offset, color_mode: pixel * scale + offset on
    0..255 pixels) is read too.
    """
    if declared is None:
        return IMAGENET
    if isinstance(declared, Preprocessing):
        return declared
    if not isinstance(declared, dict):
        raise KitError(
            f"{where}: preprocessing must be a dict such as {{'mean': 0.5, 'std': 0.5}}, got {type(declared).__name__}"
        )
    unknown = sorted(set(declared) - set(_KEYS) - set(_CONFIG_KEYS))
    if unknown:
        raise KitError(f"{where}: unknown preprocessing key '{unknown[0]}'; the keys are {', '.join(_KEYS)}")
    values = dict(declared)
    if any(values.get(key) is not None for key in _CONFIG_KEYS[:2]):  # scale/offset -> mean/std
        scale = _three(values.pop("scale", None) or [1 / (255 * s) for s in IMAGENET_STD], "scale", where)
        offset = _three(
            values.pop("offset", None) or [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], "offset", where
        )
        if any(s <= 0 for s in scale):
            raise KitError(f"{where}: preprocessing scale must be positive, got {list(scale)}")
        values["std"] = [1 / (255 * s) for s in scale]
        values["mean"] = [-o * sd for o, sd in zip(offset, values["std"])]
    values.pop("scale", None), values.pop("offset", None)
    if "color_mode" in values:
        values.setdefault("channels", values.pop("color_mode"))
        values.pop("color_mode", None)
    size = values.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 32):
        raise KitError(f"{where}: preprocessing size must be a whole number of pixels, at least 32, got {size!r}")
    resize = values.get("resize", "crop")
    if resize not in RESIZE_MODES:
        raise KitError(f"{where}: preprocessing resize '{resize}' is not one of {', '.join(RESIZE_MODES)}")
    channels = values.get("channels", "rgb")
    if channels not in CHANNEL_ORDERS:
        raise KitError(f"{where}: preprocessing channels '{channels}' is not one of {', '.join(CHANNEL_ORDERS)}")
    mean = _three(values.get("mean", IMAGENET_MEAN), "mean", where)
    std = _three(values.get("std", IMAGENET_STD), "std", where)
    if any(s <= 0 for s in std):
        raise KitError(f"{where}: preprocessing std must be positive, got {list(std)}")
    return Preprocessing(size, resize, mean, std, channels)


def centre_crop_box(height: int, width: int, fraction: float = CROP_FRACTION) -> tuple[int, int, int]:
    """Top, left and side of the centred square that keeps ``fraction`` of the short side."""
    side = max(1, int(round(min(height, width) * fraction)))
    return (height - side) // 2, (width - side) // 2, side


def normalize_matrix(bgr: bool, preprocessing: Preprocessing = IMAGENET) -> np.ndarray:
    """The 3x4 matrix that maps a pixel's values (0..255, frame order) to the model's normalized channels."""
    matrix = np.zeros((3, 4), dtype=np.float32)
    mean, std = preprocessing.mean, preprocessing.std
    for channel in range(3):
        # the frame's index of the colour the model wants in this channel (BGR frames: R is the third value)
        source = 2 - channel if bgr != (preprocessing.channels == "bgr") else channel
        matrix[channel, source] = 1.0 / (255.0 * std[channel])
        matrix[channel, 3] = -mean[channel] / std[channel]
    return matrix


class Preprocessor:
    """Turns an HxWx3 uint8 frame (RGB or BGR; greyscale and 4-channel work too) into a 1x3xSxS float tensor.

    The returned tensor is the same buffer every call: use it before the next call.
    """

    def __init__(
        self, size: int = 224, crop_fraction: float = CROP_FRACTION, preprocessing: Preprocessing = IMAGENET
    ) -> None:
        if size < 32:
            raise ValueError(f"input size must be at least 32 pixels, got {size}")
        self.size = size
        self.mode = preprocessing.resize
        self.crop_fraction = crop_fraction if self.mode == "crop" else 1.0
        self.matrices = {bgr: normalize_matrix(bgr, preprocessing) for bgr in (False, True)}
        # the model's input; cv2.transform writes into its HxWx3 float32 view
        self.buffer = torch.empty(1, 3, size, size).contiguous(memory_format=torch.channels_last)
        self._normalized = self.buffer.permute(0, 2, 3, 1)[0].numpy()
        self._resized = np.empty((size, size, 3), dtype=np.uint8)
        self._as_float = np.empty((size, size, 3), dtype=np.float32)
        self._shrunk = np.empty(
            (0, 0, 3), dtype=np.uint8
        )  # the area filter's output, reused while the frame size stays

    def resize(self, frame: np.ndarray) -> np.ndarray:
        """Centre-crop and resize to SIZE x SIZE, channels in the frame's order (a reused uint8 buffer)."""
        if frame.ndim == 2:  # greyscale
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        elif frame.shape[2] == 4:  # RGBA / BGRA (picamera2's XBGR8888)
            frame = np.ascontiguousarray(frame[:, :, :3])
        height, width = frame.shape[:2]
        if self.mode == "resize":  # the whole frame, squeezed to a square
            return cv2.resize(frame, (self.size, self.size), dst=self._resized, interpolation=cv2.INTER_AREA)
        if self.mode == "letterbox" and height != width:  # pad the short side with grey to a square
            pad_y, pad_x = (max(height, width) - height), (max(height, width) - width)
            frame = cv2.copyMakeBorder(frame, pad_y // 2, pad_y - pad_y // 2, pad_x // 2, pad_x - pad_x // 2,
                                       cv2.BORDER_CONSTANT, value=(LETTERBOX_GREY,) * 3)  # fmt: skip
        top, left, side = centre_crop_box(frame.shape[0], frame.shape[1], self.crop_fraction)
        factor = side // self.size
        if factor >= 2:  # shrink by a whole number first: the area filter's fast path averages factor x factor blocks
            trimmed = side - side % factor  # drops under `factor` pixels, keeping the crop centred
            top, left, side = top + (side - trimmed) // 2, left + (side - trimmed) // 2, trimmed
            shrunk = side // factor
            if self._shrunk.shape[0] != shrunk:
                self._shrunk = np.empty((shrunk, shrunk, 3), dtype=np.uint8)
            cv2.resize(
                frame[top : top + side, left : left + side],
                (shrunk, shrunk),
                dst=self._shrunk,
                interpolation=cv2.INTER_AREA,
            )
            crop = self._shrunk
        else:
            crop = frame[top : top + side, left : left + side]
        return cv2.resize(crop, (self.size, self.size), dst=self._resized, interpolation=cv2.INTER_LINEAR)

    def __call__(self, frame: np.ndarray, bgr: bool = False) -> torch.Tensor:
        np.copyto(self._as_float, self.resize(frame))  # uint8 -> float32
        cv2.transform(self._as_float, self.matrices[bgr], dst=self._normalized)
        return self.buffer


def to_tensor(
    frame: np.ndarray, size: int = 224, bgr: bool = False, preprocessing: Preprocessing = IMAGENET
) -> torch.Tensor:
    """One image -> a new 3xSxS tensor (for data sets, where each sample needs its own)."""
    return Preprocessor(size, preprocessing=preprocessing)(frame, bgr)[0].contiguous()
