"""ImageNet-1k class names and top-k predictions."""

from __future__ import annotations

from functools import lru_cache

import torch
import torchvision


@lru_cache(maxsize=1)
def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names in torchvision's order (ship with torchvision, no download)."""
    return list(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def top_k(logits: torch.Tensor, k: int = 10) -> list[tuple[int, str, float]]:
    """The k most likely classes of one image: (index, name, probability)."""
    probabilities = torch.softmax(logits.reshape(-1).float(), dim=0)
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    names = imagenet_classes()
    return [(int(i), names[int(i)] if int(i) < len(names) else str(int(i)), float(v)) for v, i in zip(values, indices)]


def format_top_k(predictions: list[tuple[int, str, float]]) -> str:
    """Aligned lines like ``  1. 285 Egyptian cat   71.20%``."""
    width = max((len(name) for _, name, _ in predictions), default=0)
    return "\n".join(
        f"  {rank:2d}. {index:4d} {name:<{width}} {100 * probability:6.2f}%"
        for rank, (index, name, probability) in enumerate(predictions, start=1)
    )


def describe_top(logits: torch.Tensor, k: int = 10) -> str:
    """The top-k lines for the first image of a batch of scores: ImageNet names for a 1000-class model,
    class numbers for any other (ImageNet's names would be wrong)."""
    predictions = top_k(logits[0], k)
    if logits.shape[-1] != len(imagenet_classes()):
        predictions = [(index, f"class {index}", probability) for index, _, probability in predictions]
    return format_top_k(predictions)
