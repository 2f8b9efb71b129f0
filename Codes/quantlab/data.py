"""Image data sets for calibration and evaluation, read with OpenCV.

Labels come from names, never from positions, so any subset of a folder keeps
each photo's label. Two layouts are accepted:

- a flat folder of photos whose names start with their WordNet id, like the
  ImageNet sample (``$QUANTLAB_ASSETS/imagenet-sample``): ``n01440764_tench.JPEG``;
- class folders (``root/<class>/<image>``) named by WordNet id (``n01440764/``,
  as ImageNet and Imagenette are laid out) or by ImageNet class name
  (``tench/``, ``great white shark/`` or ``great_white_shark/``).

Either way the label is the ImageNet-1k class index (torchvision's order). A
folder whose labels cannot be told is refused when labels are needed
(evaluation, QAT); calibration needs none, so any folder of photos will do.

On Colab the notebooks use Imagenette (10 ImageNet classes, downloaded by
torchvision once) with its labels mapped to ImageNet-1k indices, so the
pretrained 1000-class model is scored without retraining: ``course_dataset``.

Example:
    from quantlab import data
    dataset = data.image_dataset("photos/")  # or data.course_dataset()[0]: the sample offline, Imagenette on Colab
    calibration, evaluation = data.split(dataset, first_n=100, seed=0)
    loader = data.loader(calibration, batch_size=16)
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

import cv2
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from quantlab.assets import IMAGENET_SAMPLE, asset_path
from quantlab.errors import KitError, first_line
from quantlab.labels import imagenet_classes
from quantlab.preprocess import IMAGENET, IMAGENET_MEAN, IMAGENET_STD, Preprocessing, to_tensor
from quantlab.vocab import IMAGE_SUFFIXES

UNLABELLED = -1  # the label of a photo whose class the kit cannot tell (fine for calibration)
WNID_PATTERN = re.compile(r"^(n\d{8})(?![0-9])")  # a WordNet id at the start of a name: n01440764_tench.JPEG
LAYOUTS = (
    "photos named by WordNet id (n01440764_tench.JPEG, as in the ImageNet sample), or class folders named "
    "by WordNet id (n01440764/) or by ImageNet class name (tench/)"
)


@lru_cache(maxsize=1)
def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in class-index order (sorted, as torchvision's classes are)."""
    text = resources.files("quantlab").joinpath("imagenet_wnids.txt").read_text(encoding="utf-8")
    return text.split()


@lru_cache(maxsize=1)
def _class_name_index() -> dict[str, int | None]:
    """ImageNet class names, folded (lower case, '_' and '-' as spaces), to class indices.

    A name two classes share once folded ('Cardigan' the corgi, 'cardigan' the
    sweater) maps to None: such a folder must be named by its WordNet id.
    """
    index: dict[str, int | None] = {}
    for position, name in enumerate(imagenet_classes()):
        index[_fold(name)] = None if _fold(name) in index else position
    return index


def _fold(name: str) -> str:
    return " ".join(re.split(r"[\s_\-]+", name.strip().lower()))


def label_of_file(name: str) -> int | None:
    """The ImageNet class index of a photo named ``<wnid>_...``, or None."""
    match = WNID_PATTERN.match(name)
    if match is None:
        return None
    return _wnid_index().get(match.group(1))


@lru_cache(maxsize=1)
def _wnid_index() -> dict[str, int]:
    return {wnid: index for index, wnid in enumerate(imagenet_wnids())}


def label_of_folder(name: str) -> int | None:
    """The ImageNet class index of a class folder named by WordNet id or by class name, or None."""
    if name in _wnid_index():
        return _wnid_index()[name]
    return _class_name_index().get(_fold(name))


class ImageFiles(Dataset):
    """Images as (3xSxS tensor, label); an unreadable file yields None (see ``drop_unreadable``).

    Checking 1000 files for readability up front would decode every image
    twice, so unreadable files are found when loaded and counted in ``skipped``
    (in the loading process: with ``num_workers > 0`` each worker keeps its own count).
    """

    def __init__(
        self, items: Sequence[tuple[Path, int]], size: int = 224, preprocessing: Preprocessing = IMAGENET
    ) -> None:
        self.items = list(items)
        self.size = size
        self.preprocessing = preprocessing  # the model's declared input (quantlab.preprocess)
        self.skipped = 0
        self.skipped_names: list[str] = []
        self.unlabelled = 0  # photos or folders whose ImageNet class is unknown (set by image_dataset)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        path, label = self.items[index]
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)  # greyscale JPEGs come back as 3-channel BGR
        if frame is None:
            self.skipped += 1
            self.skipped_names.append(path.name)
            return None
        return to_tensor(frame, self.size, bgr=True, preprocessing=self.preprocessing), label


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_dataset(
    path: str | Path, size: int = 224, need_labels: bool = True, preprocessing: Preprocessing = IMAGENET
) -> ImageFiles:
    """The photos of a folder with their ImageNet labels, read from names (see the module docstring).

    ``need_labels``: refuse a folder whose labels cannot be told (evaluation,
    QAT). Without it such photos get the label ``UNLABELLED`` (calibration).
    The name ``imagenette`` (when no such folder exists) means torchvision's
    Imagenette, downloaded to ./data on first use: what Colab students pass.
    """
    root = Path(path)
    if str(path) == "imagenette" and not root.is_dir():
        dataset = imagenette("data", "val", size)
        dataset.preprocessing = preprocessing
        return dataset
    if not root.is_dir():
        raise KitError(f"data folder {root} does not exist; pass a folder of images or of class folders")
    flat = _images_in(root)
    folders_with_images = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and _images_in(d)]
    if flat and folders_with_images:  # which photos were meant? a stray cover photo would hide every class folder
        raise KitError(
            f"data folder {root} holds photos ('{flat[0].name}', ...) and class folders "
            f"('{folders_with_images[0].name}/', ...) side by side; keep one layout: {LAYOUTS}"
        )
    if flat:
        items = [(p, label_of_file(p.name)) for p in flat]
        unknown = [p.name for p, label in items if label is None]
        where = (
            f"{len(unknown)} of the {len(items)} photos in {root} (e.g. '{unknown[0]}') do not start their name "
            "with an ImageNet WordNet id"
            if unknown
            else ""
        )
    else:
        folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        labelled = [(d, label_of_folder(d.name)) for d in folders]
        labelled = [(d, label) for d, label in labelled if _images_in(d)]  # empty folders do not matter
        items = [(p, label) for d, label in labelled for p in _images_in(d)]
        unknown = [d.name for d, label in labelled if label is None]
        where = (
            f"{len(unknown)} of the {len(labelled)} class folders in {root} (e.g. '{unknown[0]}/') are "
            "named neither by ImageNet WordNet id nor by ImageNet class name"
            if unknown
            else ""
        )
    if not items:
        raise KitError(
            f"data folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}), neither directly "
            "nor in class folders; pass a folder of photos"
        )
    if unknown and need_labels:
        raise KitError(f"cannot tell the labels: {where}; the kit reads labels from names: {LAYOUTS}")
    dataset = ImageFiles([(p, UNLABELLED if label is None else label) for p, label in items], size, preprocessing)
    dataset.unlabelled = sum(label is None for _, label in items)
    return dataset


def require_labels(dataset: Dataset, purpose: str) -> None:
    """A KitError when some photos of ``dataset`` (an ImageFiles, or a Subset of one) have no known label."""
    while not isinstance(dataset, ImageFiles) and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    if getattr(dataset, "unlabelled", 0):
        raise KitError(
            f"{purpose} needs labelled photos, and the kit cannot tell the class of "
            f"{dataset.unlabelled} of them; it reads labels from names: {LAYOUTS}"
        )


def split(
    dataset: Dataset, first_n: int | None = None, fraction: float | None = None, seed: int = 0
) -> tuple[Subset, Subset]:
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


def loader(dataset: Dataset, batch_size: int = 16, num_workers: int = 0, shuffle_seed: int | None = None) -> DataLoader:
    """Batches, unreadable images dropped: in order (``split`` already shuffled), or with ``shuffle_seed`` in a new
    seeded order on every pass (training: each epoch sees other batches; two loaders with one seed agree)."""
    generator = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle_seed is not None,
        generator=generator,
        num_workers=num_workers,
        collate_fn=drop_unreadable,
    )


def skipped_count(dataset: Dataset) -> int:
    """Unreadable images met so far in ``dataset`` (an ImageFiles, or a Subset or wrapper of one)."""
    while not isinstance(dataset, ImageFiles) and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return getattr(dataset, "skipped", 0)


# Imagenette's 10 WordNet ids and their ImageNet-1k class indices (torchvision's order)
IMAGENETTE_TO_IMAGENET = {
    "n01440764": 0,
    "n02102040": 217,
    "n02979186": 482,
    "n03000684": 491,
    "n03028079": 497,
    "n03394916": 566,
    "n03417042": 569,
    "n03425413": 571,
    "n03445777": 574,
    "n03888257": 701,
}


IMAGENETTE_FOLDER = "imagenette2-320"  # what the 320px archive unpacks to: <root>/imagenette2-320/{train,val}/<wnid>/


def imagenette(root: str | Path = "data", split: str = "val", size: int = 224, download: bool = True) -> ImageFiles:
    """torchvision's Imagenette (320px version, about 330 MB once) with ImageNet-1k labels.

    torchvision downloads and unpacks it (nothing happens when ``root`` holds it already); the photos are then
    read as class folders named by WordNet id, the archive's own layout, so the labels come from the folder
    names as everywhere in the kit (no reliance on torchvision's private sample list).
    """
    from torchvision.datasets import Imagenette

    try:
        Imagenette(str(root), split=split, size="320px", download=download)
    except Exception as error:  # no internet, a half-downloaded archive, a full disk
        raise KitError(
            f"could not get Imagenette into {root} ({first_line(error, with_type=True, limit=100)}); it downloads "
            "once (330 MB) "
            "and needs the internet: otherwise pass a folder of photos"
        ) from None
    folder = Path(root) / IMAGENETTE_FOLDER / split
    if not folder.is_dir():
        raise KitError(
            f"Imagenette in {root} lacks {folder}; delete {Path(root) / IMAGENETTE_FOLDER} to download it again"
        )
    items = [
        (photo, IMAGENETTE_TO_IMAGENET[wnid])
        for wnid in sorted(IMAGENETTE_TO_IMAGENET)
        if (folder / wnid).is_dir()
        for photo in sorted(p for p in (folder / wnid).iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
    ]
    if not items:
        raise KitError(f"{folder} holds no Imagenette photos (<wnid>/*.JPEG); delete it to download it again")
    return ImageFiles(items, size)


def course_dataset(size: int = 224, root: str | Path = "data") -> tuple[ImageFiles, str]:
    """The photos the notebooks calibrate and evaluate on, and where they come from.

    The offline ImageNet sample (1000 photos, one per class) when ``$QUANTLAB_ASSETS``
    holds it (CI, offline classrooms); otherwise Imagenette's validation split,
    downloaded to ``root`` on first use (Colab).
    """
    offline = asset_path(IMAGENET_SAMPLE)
    if offline is not None:
        return image_dataset(offline, size), f"offline ImageNet sample ({offline})"
    dataset = imagenette(root, "val", size)
    return dataset, f"Imagenette val ({len(dataset)} photos, 10 ImageNet classes, in {root})"


# ---- another model's input scaling (quantize_model.py --config's preprocessing) ----


def default_rescaling() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """torchvision's ImageNet normalisation as scale and offset on 0..255 pixels (per channel)."""
    scale = tuple(1 / (255 * s) for s in IMAGENET_STD)
    offset = tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    return scale, offset


class Rescaled(Dataset):
    """A data set whose images use another rescaling (pixel * scale + offset) or channel order.

    The kit's data sets normalise with ImageNet's mean and std; this undoes that
    and applies the config's rescaling, for models trained with other inputs.
    """

    def __init__(
        self, dataset: Dataset, scale: tuple[float, ...], offset: tuple[float, ...], color_mode: str = "rgb"
    ) -> None:
        self.dataset = dataset
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        # normalised -> pixel (0..255) -> pixel * scale + offset, folded into one multiply-add
        new_scale = torch.tensor(scale).view(-1, 1, 1).expand(3, 1, 1)
        new_offset = torch.tensor(offset).view(-1, 1, 1).expand(3, 1, 1)
        self.multiply = 255 * std * new_scale
        self.add = 255 * mean * new_scale + new_offset
        self.flip = color_mode == "bgr"

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        if sample is None:
            return None
        image, label = sample
        image = image * self.multiply + self.add
        return (image.flip(0) if self.flip else image), label
