"""Build an offline folder for a classroom without internet, on a machine with it.

It downloads, through the same code the kit uses online:

- torchvision's pretrained MobileNetV2 weights, fp32 (IMAGENET1K_V1) and int8 (IMAGENET1K_QNNPACK_V1),
  into ``DIR/torch-home/hub/checkpoints/`` under torchvision's own names (hash-checked): with
  ``TORCH_HOME=DIR/torch-home`` the kit finds them in torch's cache and never downloads;
- a labelled photo sample, ``DIR/imagenet-sample/``: ``--per-class`` photos of each of Imagenette's 10
  classes (its validation split, 330 MB once), named ``<wnid>_<n>.JPEG`` so the kit reads their labels
  from the names, the shorter side at most 256 pixels. With ``QUANTLAB_ASSETS=DIR`` the notebooks
  calibrate and evaluate on it (``data.course_dataset``).

The folder is written beside DIR and renamed at the end: an interrupted build leaves nothing half-written.
labs/instructor_guide.md says how to hand it out.

Examples:
    python tools/build_assets.py ../classroom-assets
    python tools/build_assets.py ../classroom-assets --imagenette data   # an Imagenette already downloaded there
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from quantlab import data
from quantlab.errors import KitError, run_cli
from quantlab.files import write_text

SHORT_SIDE = 256  # as the kit's own offline sample: enough for the 224-pixel centre crop


def download_weights(torch_home: Path) -> list[str]:
    """torchvision's two MobileNetV2 weights into ``torch_home``'s hub cache; their file names."""
    os.environ["TORCH_HOME"] = str(torch_home)  # torch.hub reads it at each call: the download lands here
    from torchvision.models import MobileNet_V2_Weights
    from torchvision.models.quantization import MobileNet_V2_QuantizedWeights

    names = []
    for weights in (MobileNet_V2_Weights.IMAGENET1K_V1, MobileNet_V2_QuantizedWeights.IMAGENET1K_QNNPACK_V1):
        try:
            weights.get_state_dict(progress=True, check_hash=True)
        except Exception as error:  # no internet, a proxy, a hash mismatch
            raise KitError(
                f"could not download {weights} ({type(error).__name__}: {str(error).splitlines()[0][:100] if str(error) else 'no details'}); "
                "run this on a machine with internet"
            ) from None
        names.append(weights.url.rsplit("/", 1)[-1])
    return names


def photo_sample(imagenette_root: Path, target: Path, per_class: int) -> int:
    """``per_class`` photos of each Imagenette class, resized, named by WordNet id; how many were written."""
    import cv2

    dataset = data.imagenette(imagenette_root, "val")  # downloads once when the root does not hold it
    written: dict[int, int] = {}
    target.mkdir(parents=True)
    wnids = data.imagenet_wnids()
    for path, label in dataset.items:
        if written.get(label, 0) >= per_class:
            continue
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            continue  # an unreadable photo: the next one of its class takes its place
        scale = SHORT_SIDE / min(image.shape[:2])
        if scale < 1:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        number = written.get(label, 0)
        cv2.imwrite(str(target / f"{wnids[label]}_{number:04d}.JPEG"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        written[label] = number + 1
    return sum(written.values())


README = """# Offline assets for a classroom (built by tools/build_assets.py)

- `torch-home/hub/checkpoints/`: torchvision's MobileNetV2 weights ({weights}), under torchvision's names.
- `imagenet-sample/`: {photos} photos of Imagenette's 10 classes (validation split), named `<wnid>_<n>.JPEG`.

Use: `export TORCH_HOME=$PWD/torch-home QUANTLAB_ASSETS=$PWD` (this folder), then run the notebooks and scripts.
Top-1 on these photos is 10 classes' worth: quote it as "sample top-1", not as ImageNet accuracy.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("destination", type=Path, help="the offline folder to write (must not exist)")
    parser.add_argument("--per-class", type=int, default=100, help="photos of each class (default 100: 1000 photos)")
    parser.add_argument(
        "--imagenette",
        type=Path,
        default=None,
        help="where Imagenette is (or is downloaded to; default: a temp folder)",
    )
    args = parser.parse_args(argv)
    destination = args.destination.resolve()
    if destination.exists():
        raise KitError(f"{destination} exists; name a new folder")
    if not 1 <= args.per_class <= 350:
        raise KitError(f"--per-class {args.per_class}: Imagenette's validation split has 350 to 400 photos a class")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=f".{destination.name}.") as scratch:
        build = Path(scratch) / "assets"
        build.mkdir()
        weights = download_weights(build / "torch-home")
        imagenette_root = args.imagenette or Path(scratch) / "imagenette"
        photos = photo_sample(imagenette_root, build / "imagenet-sample", args.per_class)
        write_text(build / "README.md", README.format(weights=", ".join(weights), photos=photos))
        shutil.move(str(build), destination)
    print(
        f"wrote {destination}: {', '.join(weights)} and {photos} photos; export TORCH_HOME={destination / 'torch-home'} QUANTLAB_ASSETS={destination}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
