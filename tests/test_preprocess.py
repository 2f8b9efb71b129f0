"""quantlab.preprocess: the demo's OpenCV pre-processing gives what torchvision's eval transform gives."""

from __future__ import annotations

import cv2
import numpy as np


def test_preprocessing_matches_torchvision_eval_transform(sample_photos, float_weights):
    # torchvision's eval transform (PIL resize 256, centre crop 224) against the demo's OpenCV version, on the
    # photos as stored (short side 256) and scaled to a camera's 480 and 720 (the bilinear and area+bilinear paths)
    import torch
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
