"""quantlab.data: labels from photo and folder names, whatever subset or layout of ImageNet photos is given."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from quantlab import bench, data, loading
from quantlab.errors import KitError


def _link_photos(photos: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for photo in photos:
        os.symlink(photo, folder / photo.name)
    return folder


def test_any_subset_of_the_sample_keeps_each_photos_label(tmp_path, sample_photos):
    full = data.image_dataset(sample_photos)
    label_by_name = {path.name: label for path, label in full.items}
    assert sorted(label_by_name.values()) == list(range(1000))  # one photo per class, every class
    # the last 800 in sorted order: by position they were labelled 0..799, i.e. all wrong
    subset = data.image_dataset(_link_photos(sorted(sample_photos.iterdir())[200:], tmp_path / "subset"))
    assert {path.name: label for path, label in subset.items} == {
        name: label_by_name[name] for name in sorted(label_by_name)[200:]
    }
    assert subset.items[0][1] == 200


def test_a_subset_folder_scores_what_the_same_photos_score_in_the_full_folder(tmp_path, sample_photos):
    fp32 = loading.load_any("mobilenet_v2", engine="auto", threads=2)
    held_out = bench.evaluation_dataset(sample_photos, holdout=976, seed=0)  # the last 24 of the seeded shuffle
    names = [data.image_dataset(sample_photos).items[index][0] for index in held_out.indices]
    folder = data.image_dataset(_link_photos(names, tmp_path / "held_out"))
    in_full = bench.evaluate(fp32.model, data.loader(held_out), progress=False)
    alone = bench.evaluate(fp32.model, data.loader(folder), progress=False)
    assert alone == in_full and alone["top1"] > 50  # on 24 photos MobileNetV2 gets most right


def test_class_folders_by_wordnet_id_and_by_class_name(tmp_path, sample_photos):
    wanted = {"n01440764": 0, "goldfish": 1, "great_white_shark": 2, "Tiger Shark": 3, "n09999999_empty": None}
    photos = sorted(sample_photos.iterdir())
    for (folder, label), photo in zip(wanted.items(), photos):
        (tmp_path / folder).mkdir()
        if label is not None:
            shutil.copy(photos[10 + label], tmp_path / folder / photo.name)  # names that say nothing
    dataset = data.image_dataset(tmp_path)
    assert sorted(label for _, label in dataset.items) == [0, 1, 2, 3]


def test_a_partial_imagenet_tree_is_labelled_by_synset(tmp_path, sample_photos):
    photos = sorted(sample_photos.iterdir())
    for index in (5, 250, 999):  # ten synset folders out of 1000 would be labelled 0..9 by position
        folder = tmp_path / photos[index].name[:9]
        folder.mkdir()
        shutil.copy(photos[index], folder / f"ILSVRC2012_val_{index:08d}.JPEG")
    assert sorted(label for _, label in data.image_dataset(tmp_path).items) == [5, 250, 999]


def test_unknown_labels_are_refused_for_accuracy_but_fine_for_calibration(tmp_path, sample_photos):
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(next(sample_photos.iterdir()), flat / "holiday.jpg")
    shutil.copy(next(sample_photos.iterdir()), flat / "n01440764_tench.jpg")
    with pytest.raises(KitError, match="1 of the 2 photos .*'holiday.jpg'.*WordNet id"):
        data.image_dataset(flat)
    calibration = data.image_dataset(flat, need_labels=False)
    assert sorted(label for _, label in calibration.items) == [data.UNLABELLED, 0]
    with pytest.raises(KitError, match="needs labelled photos"):
        data.require_labels(calibration, "QAT")
    with pytest.raises(KitError, match="cannot tell the class"):
        bench.evaluate(lambda images: torch.zeros(len(images), 1000), data.loader(calibration), progress=False)
    classes = tmp_path / "classes"
    (classes / "cats").mkdir(parents=True)
    shutil.copy(next(sample_photos.iterdir()), classes / "cats" / "a.jpg")
    with pytest.raises(
        KitError, match=r"'cats/'\) are named neither by ImageNet WordNet id nor by ImageNet class name"
    ):
        data.image_dataset(classes)


def test_mixed_layouts_and_ambiguous_class_names_are_refused(tmp_path, sample_photos):
    photo = next(sample_photos.iterdir())
    (tmp_path / "mixed" / "n01440764").mkdir(parents=True)
    shutil.copy(photo, tmp_path / "mixed" / "cover.jpg")  # would hide the class folder, calibration included
    shutil.copy(photo, tmp_path / "mixed" / "n01440764" / "a.jpg")
    with pytest.raises(KitError, match="photos .* and class folders .* side by side"):
        data.image_dataset(tmp_path / "mixed", need_labels=False)
    (tmp_path / "classes" / "Cardigan").mkdir(parents=True)  # the corgi (264) or the sweater (474)?
    shutil.copy(photo, tmp_path / "classes" / "Cardigan" / "a.jpg")
    with pytest.raises(KitError, match="'Cardigan/'"):
        data.image_dataset(tmp_path / "classes")
    assert data.label_of_folder("n02113186") == 264 and data.label_of_folder("n02963159") == 474  # by WordNet id
