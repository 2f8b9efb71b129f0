"""End-to-end tests of Codes/quantize_model.py, run as a student runs it (a subprocess).

Small on purpose (8 calibration photos): the whole file runs in about a minute on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_script

CALIB_IMAGES = "8"

# Loads models with torch.jit.load alone (no kit code) and classifies photos with
# torchvision's eval transform written in numpy; prints {model: {"top1": [...], "logits": [...]}}.
LOAD_AND_CLASSIFY = r"""
import json, sys
import cv2, numpy as np, torch
photos, models = sys.argv[1].split(","), sys.argv[2:]
def tensor(path):
    rgb = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]; side = round(min(h, w) * 224 / 256)
    top, left = (h - side) // 2, (w - side) // 2
    rgb = cv2.resize(rgb[top:top + side, left:left + side], (224, 224), interpolation=cv2.INTER_AREA)
    x = (rgb.astype(np.float32) / 255 - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)
batch = torch.stack([tensor(p) for p in photos])
out = {}
for path in models:
    torch.backends.quantized.engine = json.load(open(path[:-3] + ".json"))["engine"]
    with torch.inference_mode():
        logits = torch.jit.load(path, map_location="cpu")(batch)
    out[path] = {"top1": logits.argmax(1).tolist(), "logits": logits.flatten().tolist()}
print(json.dumps(out))
"""


def quantize(output: Path, *args: str) -> subprocess.CompletedProcess:
    return run_script("quantize_model.py", "--output", output, "--threads", "2", *args)


def classify(photos: list[Path], *models: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", LOAD_AND_CLASSIFY, ",".join(map(str, photos)), *map(str, models)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def labelled_photos(sample_photos: Path) -> tuple[list[Path], list[int]]:
    """Two easy photos and their class indices (index = position in the sorted folder)."""
    names = sorted(p.name for p in sample_photos.iterdir())
    picked = ["n01443537_goldfish.JPEG", "n04146614_school_bus.JPEG"]
    return [sample_photos / n for n in picked], [names.index(n) for n in picked]


@pytest.fixture(scope="module")
def made(tmp_path_factory, float_weights, sample_photos) -> dict[str, Path]:
    """The models the tests inspect, each made once (same seed twice, to check reproducibility)."""
    folder = tmp_path_factory.mktemp("quantized")
    common = ("--model", str(float_weights), "--calib-data", str(sample_photos), "--calib-images", CALIB_IMAGES)
    runs = {
        "per_channel": (*common, "--method", "static", "--seed", "3"),
        "per_channel_again": (*common, "--method", "post_training", "--seed", "3"),
        "per_tensor": (*common, "--granularity", "per_tensor", "--observer", "minmax", "--engine", "qnnpack"),
        "dynamic": ("--model", str(float_weights), "--method", "dynamic"),
    }
    outputs = {}
    for name, args in runs.items():
        output = folder / f"{name}.pt"
        result = quantize(output, *args)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        outputs[name] = output
        outputs[name + ".stdout"] = result.stdout
    return outputs


def test_static_models_load_without_the_kit_and_classify(made, sample_photos):
    photos, labels = labelled_photos(sample_photos)
    names = ("per_channel", "per_channel_again", "per_tensor", "dynamic")
    results = classify(photos, *(made[n] for n in names))
    for name in names:
        assert results[str(made[name])]["top1"] == labels, name
    # the same seed picks the same calibration photos: identical int8 models
    assert results[str(made["per_channel"])]["logits"] == results[str(made["per_channel_again"])]["logits"]


@pytest.mark.parametrize(("name", "granularity", "observer", "engine"), [
    ("per_channel", "per_channel", "histogram", None),
    ("per_tensor", "per_tensor", "minmax", "qnnpack"),
    ("dynamic", None, None, None),
])
def test_sidecar_describes_the_file(made, sample_photos, name, granularity, observer, engine):
    model = made[name]
    sidecar = json.loads(model.with_suffix(".json").read_text())
    data = model.read_bytes()
    assert sidecar["sha256"] == hashlib.sha256(data).hexdigest()
    assert sidecar["size_bytes"] == len(data)
    assert sidecar["method"] == ("dynamic" if name == "dynamic" else "static")
    assert (sidecar["granularity"], sidecar["observer"]) == (granularity, observer)
    assert sidecar["engine"] == engine if engine else sidecar["engine"] in ("x86", "fbgemm", "qnnpack")
    assert sidecar["input_size"] == [1, 3, 224, 224]
    assert sidecar["torch"] and "seed" in sidecar
    if name != "dynamic":
        assert sidecar["calibration"] == {"source": str(sample_photos), "images": 8, "skipped_unreadable": 0}
    assert not list(model.parent.glob("*.partial"))


def test_sizes_are_printed_and_dynamic_shrinks_less(made):
    static_size = made["per_channel"].stat().st_size
    dynamic_size = made["dynamic"].stat().st_size
    assert static_size < 0.5 * dynamic_size  # static quantizes the convolutions too
    assert "fp32 state dict" in made["per_channel.stdout"] and "int8 state dict" in made["per_channel.stdout"]
    assert "only the classifier's Linear layer is quantized" in made["dynamic.stdout"]


def test_random_calibration_warns_loudly(tmp_path, float_weights):
    output = tmp_path / "noise.pt"
    result = quantize(output, "--model", float_weights, "--calib-images", "2", "--engine", "qnnpack")
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("WARNING") and "meaningless" in line for line in result.stderr.splitlines())
    assert json.loads(output.with_suffix(".json").read_text())["calibration"]["source"] == "random noise"


def test_image_folder_tree_split_and_unreadable_files(tmp_path, sample_photos):
    from quantlab import data

    photos = sorted(sample_photos.iterdir())[:4]
    for index, photo in enumerate(photos):
        (tmp_path / f"class_{index % 2}").mkdir(exist_ok=True)
        shutil.copy(photo, tmp_path / f"class_{index % 2}" / photo.name)
    (tmp_path / "class_1" / "broken.jpg").write_bytes(b"not a jpeg")
    dataset = data.image_dataset(tmp_path, size=64)
    assert sorted(label for _, label in dataset.items) == [0, 0, 1, 1, 1]
    calibration, evaluation = data.split(dataset, fraction=0.4, seed=1)
    assert len(calibration) == 2 and len(evaluation) == 3
    assert not set(calibration.indices) & set(evaluation.indices)
    assert data.split(dataset, first_n=2, seed=1)[0].indices == calibration.indices
    batches = [batch for batch in data.loader(dataset, batch_size=2) if batch is not None]
    assert sum(images.shape[0] for images, _ in batches) == 4  # the broken file is dropped...
    assert data.skipped_count(calibration) == 1  # ...and counted
    assert all(images.shape[1:] == (3, 64, 64) for images, _ in batches)


def _bad_inputs(tmp_path: Path, float_weights: Path) -> dict:
    not_a_model = tmp_path / "notes.pth"
    not_a_model.write_text("these are not weights")
    empty = tmp_path / "empty"
    empty.mkdir()
    return {
        "missing model": (("--model", tmp_path / "missing.pth"), "does not exist"),
        "not a model": (("--model", not_a_model), "not a PyTorch state dict"),
        "empty calibration folder": (("--model", float_weights, "--calib-data", empty), "holds no images"),
        "unknown method": (("--model", float_weights, "--method", "magic"), "unknown --method 'magic'"),
        "qat": (("--model", float_weights, "--method", "qat"), "quantization-aware training"),
    }


@pytest.mark.parametrize("case", ["missing model", "not a model", "empty calibration folder", "unknown method", "qat"])
def test_bad_input_is_one_error_line_and_leaves_no_file(tmp_path, float_weights, case):
    args, message = _bad_inputs(tmp_path, float_weights)[case]
    output = tmp_path / "out" / "model.pt"
    result = quantize(output, *map(str, args))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1, result.stderr
    assert not output.exists() and not output.with_suffix(".json").exists()
    assert not list(tmp_path.rglob("*.partial"))
