"""End-to-end tests of Codes/quantize_model.py, run as a student runs it (a subprocess).

Small on purpose (8 calibration photos): the whole file runs in about a minute on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run_in_process, run_script

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
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_CLASSIFY, ",".join(map(str, photos)), *map(str, models)],
        capture_output=True,
        text=True,
        timeout=300,
    )
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
        "qat": (*common, "--method", "quantization_aware", "--epochs", "1", "--lr", "1e-5", "--qat-loss", "distill"),
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
    names = ("per_channel", "per_channel_again", "per_tensor", "dynamic", "qat")
    results = classify(photos, *(made[n] for n in names))
    for name in names:
        assert results[str(made[name])]["top1"] == labels, name
    # the same seed picks the same calibration photos: identical int8 models
    assert results[str(made["per_channel"])]["logits"] == results[str(made["per_channel_again"])]["logits"]


@pytest.mark.parametrize(
    ("name", "granularity", "observer", "engine"),
    [
        ("per_channel", "per_channel", "histogram", None),
        ("per_tensor", "per_tensor", "minmax", "qnnpack"),
        ("dynamic", None, None, None),
    ],
)
def test_sidecar_describes_the_file(made, sample_photos, name, granularity, observer, engine):
    model = made[name]
    sidecar = json.loads(model.with_suffix(".json").read_text())
    data = model.read_bytes()
    assert sidecar["sha256"] == hashlib.sha256(data).hexdigest()
    assert sidecar["size_bytes"] == len(data)
    assert sidecar["method"] == ("dynamic" if name == "dynamic" else "static")
    assert sidecar["format"] == "torchscript"
    assert (sidecar["granularity"], sidecar["observer"]) == (granularity, observer)
    assert sidecar["engine"] == engine if engine else sidecar["engine"] in ("x86", "onednn", "fbgemm")
    assert sidecar["input_size"] == [1, 3, 224, 224]
    assert sidecar["torch"] and "seed" in sidecar
    if name != "dynamic":
        assert sidecar["calibration"] == {"source": str(sample_photos), "images": 8, "skipped_unreadable": 0}
    assert not list(model.parent.glob("*.partial"))


def test_sizes_are_printed_and_dynamic_shrinks_less(made):
    static_size = made["per_channel"].stat().st_size
    dynamic_size = made["dynamic"].stat().st_size
    assert static_size < 0.5 * dynamic_size  # static quantizes the convolutions too
    assert re.search(r"size: fp32 14\.\d\d MB \(state dict\) -> int8 3\.\d\d MB", made["per_channel.stdout"])
    assert "only the Linear/LSTM layers are quantized (37% of the parameters)" in made["dynamic.stdout"]


def test_random_calibration_warns_loudly(tmp_path, float_weights):
    output = tmp_path / "noise.pt"
    result = quantize(output, "--model", float_weights, "--calib-images", "2", "--engine", "qnnpack")
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("WARNING") and "meaningless" in line for line in result.stderr.splitlines())
    assert json.loads(output.with_suffix(".json").read_text())["calibration"]["source"] == "random noise"


def test_image_folder_tree_split_and_unreadable_files(tmp_path, sample_photos):
    from quantlab import data

    photos = sorted(sample_photos.iterdir())[:4]
    folders = ("n01440764", "goldfish")  # ImageNet classes 0 and 1: by WordNet id, by class name
    for index, photo in enumerate(photos):
        (tmp_path / folders[index % 2]).mkdir(exist_ok=True)
        shutil.copy(photo, tmp_path / folders[index % 2] / photo.name)
    (tmp_path / "goldfish" / "broken.jpg").write_bytes(b"not a jpeg")
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
    torchscript = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(torchscript))

    def yaml_with(text: str) -> Path:
        path = tmp_path / f"config{len(list(tmp_path.glob('config*.yaml')))}.yaml"
        path.write_text(text)
        return path

    return {
        "missing model": (("--model", tmp_path / "missing.pth"), "does not exist"),
        "not a model": (("--model", not_a_model), "not a PyTorch state dict"),
        "empty calibration folder": (("--model", float_weights, "--calib-data", empty), "holds no images"),
        "unknown method": (("--model", float_weights, "--method", "magic"), "unknown --method 'magic'"),
        "qat without photos": (("--model", float_weights, "--method", "qat"), "needs labelled photos"),
        "qat to onnx": (("--model", float_weights, "--method", "qat", "--format", "onnx"), "--format onnx"),
        "no fx": (("--model", "resnet34"), "no eager-mode quantizable version"),
        "torchscript input": (("--model", torchscript), "cannot be quantized again"),
        "wrong arch": (("--model", float_weights, "--arch", "resnet18"), "does not fit resnet18"),
        "split and count": (("--calib-data", empty, "--calib-split", "0.5", "--calib-images", "3"), "not both"),
        "bad yaml key": (
            ("--config", yaml_with("quantization:\n  granularty: per_tensor\n")),
            "'quantization.granularty'",
        ),
        "chain without photos": (("--model", float_weights, "--operation-mode", "chain_eqe"), "evaluates"),
        "bad yaml choice": (  # argparse checks a flag's choices; the same list checks the file's value
            ("--config", yaml_with("quantization:\n  method: qat\ntraining:\n  loss: labelz\n")),
            "unknown qat_loss 'labelz'; use one of labels, distill",
        ),
        "keep-float typo": (  # the closest names show the fix
            ("--model", float_weights, "--keep-float", "features.1.conv.0.O"),
            "no layer with weights named 'features.1.conv.0.O'; close names: features.1.conv.0.0",
        ),
        "keep-float in yaml, typo": (
            ("--config", yaml_with("quantization:\n  keep_float: [features.0.0, clasifier.1]\n")),
            "close names: classifier.1",
        ),
        "keep-float not a list": (
            ("--config", yaml_with("quantization:\n  keep_float: {features.0.0: 1}\n")),
            "'quantization.keep_float' must be a list of layer names",
        ),
        "keep-float with dynamic": (
            ("--model", float_weights, "--method", "dynamic", "--keep-float", "features.0.0"),
            "--keep-float works with --method static",
        ),
        "recipe with an unknown section": (
            ("--config", yaml_with("quantization:\n  keep_float: [features.0.0]\nevidenc: {}\n")),
            "unknown key 'evidenc'",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing model",
        "not a model",
        "empty calibration folder",
        "unknown method",
        "qat without photos",
        "qat to onnx",
        "no fx",
        "torchscript input",
        "wrong arch",
        "split and count",
        "bad yaml key",
        "chain without photos",
        "bad yaml choice",
        "keep-float typo",
        "keep-float in yaml, typo",
        "keep-float not a list",
        "keep-float with dynamic",
        "recipe with an unknown section",
    ],
)
def test_bad_input_is_one_error_line_and_leaves_no_file(tmp_path, float_weights, case):
    args, message = _bad_inputs(tmp_path, float_weights)[case]
    output = tmp_path / "out" / "model.pt"
    result = run_in_process("quantize_model.py", "--output", output, "--threads", "2", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1, result.stderr
    assert not output.exists() and not output.with_suffix(".json").exists()
    assert not list(tmp_path.rglob("*.partial"))


def test_two_models_never_share_a_sidecar(tmp_path, float_weights):
    """mnv2_open.pt and mnv2_open.onnx would both write mnv2_open.json: the second is refused before any work."""
    (tmp_path / "mnv2_open.pt").write_bytes(b"the student's TorchScript file")
    sidecar = tmp_path / "mnv2_open.json"
    sidecar.write_text('{"method": "static"}')
    output = tmp_path / "mnv2_open.onnx"
    result = run_in_process("quantize_model.py", "--model", float_weights, "--method", "dynamic", "--output", output)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "mnv2_open.json is the sidecar of mnv2_open.pt already" in result.stderr
    assert not output.exists() and sidecar.read_text() == '{"method": "static"}'


def test_qat_sidecar_records_the_fine_tune(made):
    sidecar = json.loads(made["qat"].with_suffix(".json").read_text())
    assert sidecar["method"] == "qat" and sidecar["calibration"] is None
    assert sidecar["training"]["images"] == int(CALIB_IMAGES) and sidecar["training"]["epochs"] == 1
    assert sidecar["training"]["loss"] == "distillation from the float model"
    assert "QAT epoch 1/1" in made["qat.stdout"] or "QAT:" in made["qat.stdout"]


def test_yaml_chain_evaluates_quantizes_and_benchmarks(tmp_path, float_weights, sample_photos):
    """operation_mode chain_eqeb from a config file; a flag (--eval-images) overrides nothing in it but adds."""
    config = tmp_path / "chain.yaml"
    config.write_text(f"""
general: {{model_path: {float_weights}}}
operation_mode: chain_eqeb
dataset: {{quantization_path: {sample_photos}, quantization_split: 0.008, seed: 1}}
preprocessing: {{rescaling: {{scale: 1/255, offset: 0}}, resizing: {{interpolation: bilinear, aspect_ratio: crop}}, color_mode: rgb}}
quantization: {{granularity: per_tensor, export_dir: {tmp_path / "exported"}}}
benchmarking: {{runs: 2, warmup: 1}}
""")
    result = run_script("quantize_model.py", "--config", config, "--eval-images", "8", "--granularity", "per_channel")
    assert result.returncode == 0, result.stderr
    output = tmp_path / "exported" / f"{float_weights.stem}_static_per_channel.pt"  # the flag beat the file
    sidecar = json.loads(output.with_suffix(".json").read_text())
    assert sidecar["granularity"] == "per_channel" and sidecar["seed"] == 1
    assert sidecar["calibration"]["images"] == 8  # 0.008 of 1000 photos
    assert sidecar["preprocessing"]["scale"] == [1 / 255]
    for expected in ("fp32: top-1", "int8: top-1", "top-1 change", "latency (batch 1"):
        assert expected in result.stdout, result.stdout


def test_onnx_format_and_another_architecture(tmp_path, sample_photos, float_weights):
    """--format onnx runs through ONNX Runtime; a resnet18 state dict (random weights) quantizes with --arch."""
    import torchvision

    from quantlab import models

    onnx_file = tmp_path / "mnv2.onnx"
    result = quantize(onnx_file, "--calib-data", sample_photos, "--calib-images", "4", "--model", float_weights)
    assert result.returncode == 0, result.stderr
    sidecar = json.loads(onnx_file.with_suffix(".json").read_text())
    assert (sidecar["format"], sidecar["runtime"], sidecar["calibration"]["images"]) == ("onnx", "onnxruntime", 4)
    logits = models.OnnxModel(onnx_file, threads=1)(torch.zeros(1, 3, 224, 224))
    assert logits.shape == (1, 1000)

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), weights)
    result = quantize(tmp_path / "r18.pt", "--model", weights, "--arch", "resnet18", "--calib-images", "2")
    assert result.returncode == 2 and "does not fit resnet18" in result.stderr  # 10 classes, not ImageNet's 1000
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    result = quantize(tmp_path / "r18.pt", "--model", weights, "--arch", "resnet18", "--calib-images", "2")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "r18.json").read_text())["arch"] == "resnet18"


def test_imagenette_labels_map_to_imagenet_and_download_errors_are_one_line(monkeypatch, tmp_path):
    """Colab's data set: Imagenette's 10 classes, read from the archive's class folders, scored as ImageNet-1k
    indices; no network is a KitError, and so is an archive without the split."""
    import torchvision

    from quantlab import data
    from quantlab.errors import KitError

    monkeypatch.chdir(tmp_path)  # data.imagenette's root is ./data, as on Colab

    class FakeImagenette:  # torchvision's download and unpacking, without the 330 MB: the archive's layout
        def __init__(self, root, split, size, download):
            for wnid in data.IMAGENETTE_TO_IMAGENET:
                folder = Path(root) / data.IMAGENETTE_FOLDER / split / wnid
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{wnid}_1.JPEG").write_bytes(b"")

    monkeypatch.setattr(torchvision.datasets, "Imagenette", FakeImagenette)
    dataset = data.image_dataset("imagenette", size=64)
    labels = {Path(path).parent.name: label for path, label in dataset.items}
    assert labels["n01440764"] == 0 and labels["n03888257"] == 701  # tench, parachute
    assert sorted(labels.values()) == sorted(data.IMAGENETTE_TO_IMAGENET.values())

    monkeypatch.setattr(torchvision.datasets, "Imagenette", lambda root, split, size, download: None)
    with pytest.raises(KitError, match="lacks data/imagenette2-320/train"):
        data.imagenette(split="train")

    def offline(*args, **kwargs):
        raise RuntimeError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(torchvision.datasets, "Imagenette", offline)
    with pytest.raises(KitError, match=r"could not get Imagenette into data \(RuntimeError"):
        data.image_dataset("imagenette")


def notebook_recipe(folder: Path) -> Path:
    """my_recipe.yaml as notebook 3b's last cell writes it: that cell's code, run on a table of made-up numbers."""
    notebook = json.loads((Path(__file__).parents[1] / "notebooks" / "03b_debugging.ipynb").read_text())
    cell = "".join(next(c["source"] for c in notebook["cells"] if c.get("id") == "write-recipe"))
    gain = {"features.0.0": 0.3, "features.1.conv.0.0": 2.0, "classifier.1": 0.8, "features.2.conv.0.0": -0.1}
    student = {  # the notebook's variables at that point
        "FLOAT_COUNTS": [1, 2], "SEED": 1, "GRANULARITY": "per_tensor", "OBSERVER": "histogram", "ENGINE": "x86",
        "WEIGHT_BITS": 8, "calibration": range(4), "evaluation": range(8), "source": "photos", "torch": torch,
        "gain": gain, "layers": list(gain), "layers_to_keep_float": lambda gain, k: sorted(
            [n for n in gain if gain[n] > 0], key=gain.get, reverse=True)[:k],
        "table": [("int8", 3.5, 5.0, 60.0), ("int8, 2 most sensitive in float", 5.1, 6.0, 64.0)],
        "intervals": {"int8, 2 most sensitive in float": {"difference": 4.0, "low": 1.5, "high": 6.5}},
    }  # fmt: skip
    cwd = Path.cwd()
    try:
        import os

        os.chdir(folder)
        exec(cell, student)  # noqa: S102 - the repository's own notebook cell
    finally:
        os.chdir(cwd)
    return folder / "my_recipe.yaml"


def test_the_notebooks_recipe_round_trip_keeps_its_layers_in_float(tmp_path, float_weights, sample_photos):
    """Notebook 3b writes my_recipe.yaml (evidence and all); --config reads it; its layers stay float."""
    recipe = notebook_recipe(tmp_path)
    output = tmp_path / "mnv2_recipe.pt"
    result = quantize(
        output, "--model", str(float_weights), "--config", str(recipe), "--calib-data", str(sample_photos)
    )
    assert result.returncode == 0, result.stderr
    sidecar = json.loads(output.with_suffix(".json").read_text())
    assert sidecar["keep_float"] == ["features.1.conv.0.0", "classifier.1"]
    assert (sidecar["granularity"], sidecar["seed"], sidecar["calibration"]["images"]) == ("per_tensor", 1, 4)
    assert "2 in float" in result.stdout and "float: conv2d #1, linear #52" in result.stdout, result.stdout
    graph = str(torch.jit.load(str(output)).inlined_graph)
    assert graph.count("aten::conv2d") + graph.count("aten::_convolution") == 1  # the one float conv

    from quantlab.grader import recipes

    settings, why = recipes.recipe_settings(yaml.safe_load(recipe.read_text()))
    assert why is None and settings["keep_float"] == ("classifier.1", "features.1.conv.0.0")
    assert recipes.evidence_problem(yaml.safe_load(recipe.read_text()), settings["keep_float"]) is None
