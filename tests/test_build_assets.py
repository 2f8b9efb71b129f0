"""tools/build_assets.py: the photo sample it builds from Imagenette, and its refusals (no download here:
torchvision finds the Imagenette-shaped folder already in place, as after a first download)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from quantlab import data

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("build_assets", REPO / "tools" / "build_assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sample_takes_per_class_photos_named_by_their_class(tmp_path: Path) -> None:
    root = tmp_path / "imagenette"
    for wnid in ("n01440764", "n03888257"):  # tench, parachute
        folder = root / data.IMAGENETTE_FOLDER / "val" / wnid
        folder.mkdir(parents=True)
        for k in range(3):
            cv2.imwrite(str(folder / f"ILSVRC_{k}.JPEG"), np.full((300, 400, 3), 40 * k, np.uint8))
    written = _tool().photo_sample(root, tmp_path / "sample", per_class=2)
    names = sorted(p.name for p in (tmp_path / "sample").iterdir())
    assert written == 4 and names == [f"{w}_{n:04d}.JPEG" for w in ("n01440764", "n03888257") for n in (0, 1)]
    assert min(cv2.imread(str(tmp_path / "sample" / names[0])).shape[:2]) == 256
    sample = data.image_dataset(tmp_path / "sample")  # the kit reads the labels back from the names
    assert sorted(label for _, label in sample.items) == [0, 0, 701, 701]


def test_an_existing_folder_is_refused_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "build_assets.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "exists" in result.stderr
