"""Frame -> normalized tensor, fast enough that the model stays the bottleneck.

The same steps as torchvision's ImageNet evaluation transform (centre crop of
87.5 % of the short side, resize to SIZE, scale to [0, 1], normalize with the
ImageNet mean and std), written with OpenCV and in-place torch ops on a buffer
that is reused for every frame: no PIL conversion and no new tensor per frame.
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


class Preprocessor:
    """Turns an HxWx3 uint8 frame (RGB or BGR) into a 1x3xSxS float tensor.

    The returned tensor is the same buffer every call: use it before the next call.
    """

    def __init__(self, size: int = 224, crop_fraction: float = CROP_FRACTION) -> None:
        if size < 32:
            raise ValueError(f"input size must be at least 32 pixels, got {size}")
        self.size = size
        self.crop_fraction = crop_fraction
        self.buffer = torch.empty(1, 3, size, size)
        # x_normalized = x_uint8 * scale + shift, per channel
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) / std
        self._rgb = np.empty((size, size, 3), dtype=np.uint8)

    def resize(self, frame: np.ndarray, bgr: bool = False) -> np.ndarray:
        """Centre-crop and resize to SIZE x SIZE; returns RGB uint8."""
        if frame.ndim == 2:  # greyscale
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        elif frame.shape[2] == 4:  # RGBA / BGRA (picamera2's XRGB8888)
            frame = frame[:, :, :3]
        top, left, side = centre_crop_box(frame.shape[0], frame.shape[1], self.crop_fraction)
        crop = frame[top : top + side, left : left + side]
        interpolation = cv2.INTER_AREA if side > self.size else cv2.INTER_LINEAR
        resized = cv2.resize(crop, (self.size, self.size), interpolation=interpolation)
        if bgr:
            cv2.cvtColor(resized, cv2.COLOR_BGR2RGB, dst=self._rgb)
            return self._rgb
        return resized

    def __call__(self, frame: np.ndarray, bgr: bool = False) -> torch.Tensor:
        rgb = self.resize(frame, bgr)
        # uint8 HWC -> float CHW into the reused buffer, then scale and shift in place
        self.buffer[0].copy_(torch.from_numpy(rgb).permute(2, 0, 1))
        return self.buffer.mul_(self.scale).add_(self.shift)


def to_tensor(frame: np.ndarray, size: int = 224, bgr: bool = False) -> torch.Tensor:
    """One image -> a new 3xSxS tensor (for data sets, where each sample needs its own)."""
    return Preprocessor(size)(frame, bgr)[0].clone()
