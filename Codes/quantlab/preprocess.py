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
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_FRACTION = 224 / 256  # torchvision's eval transform: resize 256, crop 224


def centre_crop_box(height: int, width: int, fraction: float = CROP_FRACTION) -> tuple[int, int, int]:
    """Top, left and side of the centred square that keeps ``fraction`` of the short side."""
    side = max(1, int(round(min(height, width) * fraction)))
    return (height - side) // 2, (width - side) // 2, side


def normalize_matrix(bgr: bool) -> np.ndarray:
    """The 3x4 matrix that maps a pixel's values (0..255, frame order) to normalized RGB."""
    matrix = np.zeros((3, 4), dtype=np.float32)
    for channel in range(3):
        source = 2 - channel if bgr else channel  # BGR frames: R comes from the third value
        matrix[channel, source] = 1.0 / (255.0 * IMAGENET_STD[channel])
        matrix[channel, 3] = -IMAGENET_MEAN[channel] / IMAGENET_STD[channel]
    return matrix


class Preprocessor:
    """Turns an HxWx3 uint8 frame (RGB or BGR; greyscale and 4-channel work too) into a 1x3xSxS float tensor.

    The returned tensor is the same buffer every call: use it before the next call.
    """

    def __init__(self, size: int = 224, crop_fraction: float = CROP_FRACTION) -> None:
        if size < 32:
            raise ValueError(f"input size must be at least 32 pixels, got {size}")
        self.size = size
        self.crop_fraction = crop_fraction
        self.matrices = {False: normalize_matrix(bgr=False), True: normalize_matrix(bgr=True)}
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


def to_tensor(frame: np.ndarray, size: int = 224, bgr: bool = False) -> torch.Tensor:
    """One image -> a new 3xSxS tensor (for data sets, where each sample needs its own)."""
    return Preprocessor(size)(frame, bgr)[0].contiguous()
