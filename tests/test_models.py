"""quantlab.models: which weights a notebook loaded, said in one line (issue #14)."""

from __future__ import annotations

import shutil
from pathlib import Path

from torch import nn

from quantlab import models


def test_offline_copy_is_named_with_what_it_means(float_weights: Path) -> None:
    fp32 = models.mobilenet_v2_fp32(float_weights)
    line = models.describe_weights(fp32)
    assert line.startswith("weights: the kit's offline copy") and "int8 grid" in line, line
    assert models.holds_offline_copy(fp32)


def test_another_state_dict_is_named_as_yours(float_weights: Path, tmp_path: Path) -> None:
    mine = tmp_path / "my_weights.pth"
    shutil.copyfile(float_weights, mine)
    yours = models.mobilenet_v2_fp32(mine)
    assert models.describe_weights(yours) == f"weights: {mine} (a state dict you passed)"
    assert not models.holds_offline_copy(yours)


def test_downloaded_weights_and_unknown_models() -> None:
    model = nn.Linear(2, 2)
    assert "source unknown" in models.describe_weights(model)
    model.weights_source = "torchvision MobileNet_V2_Weights.IMAGENET1K_V1"
    line = models.describe_weights(model)
    assert line.startswith("weights: MobileNet_V2_Weights.IMAGENET1K_V1, torchvision's own float weights"), line
