"""quantlab.labels: ImageNet's names for a 1000-class model's top-k, class numbers for any other model."""

from __future__ import annotations

import torch

from quantlab import labels


def test_top_k_names_imagenet_classes_in_order_of_probability():
    logits = torch.zeros(1000)
    logits[[0, 285]] = torch.tensor([3.0, 5.0])
    (first, name, probability), (second, second_name, _) = labels.top_k(logits, k=2)
    assert (first, name, second, second_name) == (285, "Egyptian cat", 0, "tench")
    assert 0 < probability < 1 and len(labels.imagenet_classes()) == 1000
    assert labels.format_top_k(labels.top_k(logits, k=2)).splitlines()[0].split()[:4] == [
        "1.",
        "285",
        "Egyptian",
        "cat",
    ]


def test_a_model_with_other_classes_gets_class_numbers():
    ten = torch.arange(10.0).unsqueeze(0)
    described = labels.describe_top(ten, k=3)
    assert "class 9" in described and "tench" not in described and len(described.splitlines()) == 3
