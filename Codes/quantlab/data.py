"""Image data sets for calibration and evaluation, read with OpenCV.

Two layouts are accepted:

- the ImageNet sample (``$QUANTLAB_ASSETS/imagenet-sample``): a flat folder of
  ``<synset>_<name>.JPEG`` files, label = position in the sorted file list;
- an ImageFolder tree (``root/<class>/<image>``), label = index of the class
  folder in sorted order (torchvision's ImageFolder convention).

Example:
    from quantlab import data
    dataset = data.image_dataset("imagenet-sample")
    calibration, evaluation = data.split(dataset, first_n=100, seed=0)
    loader = data.loader(calibration, batch_size=16)
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import cv2
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from quantlab.errors import KitError
from quantlab.preprocess import to_tensor
from quantlab.sources import IMAGE_SUFFIXES


class ImageFiles(Dataset):
    """Images as (3xSxS tensor, label); an unreadable file yields None (see ``drop_unreadable``).

    Checking 1000 files for readability up front would decode every image
    twice, so unreadable files are found when loaded and counted in ``skipped``
    (in the loading process: with ``num_workers > 0`` each worker keeps its own count).
    """

    def __init__(self, items: Sequence[tuple[Path, int]], size: int = 224) -> None:
        self.items = list(items)
        self.size = size
        self.skipped = 0
        self.skipped_names: list[str] = []

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        path, label = self.items[index]
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)  # greyscale JPEGs come back as 3-channel BGR
        if frame is None:
            self.skipped += 1
            self.skipped_names.append(path.name)
            return None
        return to_tensor(frame, self.size, bgr=True), label


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_dataset(path: str | Path, size: int = 224) -> ImageFiles:
    """A data set from the ImageNet-sample layout (flat folder) or an ImageFolder tree."""
    root = Path(path)
    if not root.is_dir():
        raise KitError(f"data folder {root} does not exist; pass a folder of images or of class folders")
    flat = _images_in(root)
    if flat:  # ImageNet-sample layout: label = index in the sorted file list
        return ImageFiles([(p, label) for label, p in enumerate(flat)], size)
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    items = [(p, label) for label, d in enumerate(classes) for p in _images_in(d)]
    if not items:
        raise KitError(
            f"data folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}), neither directly "
            "nor in class folders; pass a folder of photos"
        )
    return ImageFiles(items, size)


def split(dataset: Dataset, first_n: int | None = None, fraction: float | None = None,
          seed: int = 0) -> tuple[Subset, Subset]:
    """Disjoint (calibration, evaluation) subsets: a seeded shuffle, then first_n (or fraction) of it."""
    total = len(dataset)
    if (first_n is None) == (fraction is None):
        raise ValueError("pass exactly one of first_n and fraction")
    count = first_n if first_n is not None else int(round(total * fraction))
    if count < 1:
        raise KitError(f"the calibration subset would be empty ({count} of {total} images); ask for at least 1")
    count = min(count, total)
    order = list(range(total))
    random.Random(seed).shuffle(order)  # classes are sorted in the folder: shuffle so every subset mixes them
    return Subset(dataset, order[:count]), Subset(dataset, order[count:])


def drop_unreadable(batch: list) -> tuple[torch.Tensor, torch.Tensor] | None:
    """collate_fn: stack the readable samples, drop the Nones; None when none is readable."""
    kept = [sample for sample in batch if sample is not None]
    if not kept:
        return None
    images, labels = zip(*kept)
    return torch.stack(images), torch.tensor(labels)


def loader(dataset: Dataset, batch_size: int = 16, num_workers: int = 0) -> DataLoader:
    """Batches in order (no shuffling: ``split`` already shuffled), unreadable images dropped."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=drop_unreadable)


def skipped_count(dataset: Dataset) -> int:
    """Unreadable images met so far in ``dataset`` (an ImageFiles or a Subset of one)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "skipped", 0)
