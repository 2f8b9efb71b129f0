"""Task 3b, "your recipe" (quantlab.grader.recipes): the recipe file against the model and its sidecar.

Hand-made model grades for the file checks; one real MobileNetV2 with layers kept in float for what the
grader's child reads of its convolutions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from quantlab import models, quantize
from quantlab.grader import model_checks, recipes, rubric
from quantlab.grader.records import ModelGrade

KEPT = ["features.1.conv.0.0", "classifier.1"]
HONEST = {
    "dataset": {"seed": 0},
    "quantization": {
        "method": "static",
        "granularity": "per_tensor",
        "observer": "histogram",
        "engine": "x86",
        "calibration_images": 200,
        "keep_float": KEPT,
    },  # fmt: skip
    "evidence": {
        "sensitivity": {"features.0.0": 0.4, "features.1.conv.0.0": 2.1, "classifier.1": 0.9},
        "rows": [{"model": "int8", "top1": 60.1}, {"model": "int8, 2 in float", "top1": 64.0, "interval": [1.9, 5.9]}],
    },
}


def model_grade(**changes) -> ModelGrade:
    made = {"file": recipes.RECIPE_MODEL, "method": "static", "engine": "x86", "granularity": "per_tensor",
            "observer": "histogram", "calibration_images": 200, "seed": 0, "float_layers": list(KEPT)}  # fmt: skip
    return ModelGrade(**{**made, **changes})


def reason(tmp_path: Path, recipe: dict | str | None, graded: list[ModelGrade] | None = None) -> str | None:
    if recipe is not None:
        text = recipe if isinstance(recipe, str) else yaml.safe_dump(recipe)
        (tmp_path / recipes.RECIPE_FILE).write_text(text)
    return recipes.check_recipe(tmp_path, [model_grade()] if graded is None else graded)


def with_changes(section: str, **changes) -> dict:
    recipe = json.loads(json.dumps(HONEST))
    recipe[section].update(changes)
    return recipe


def test_an_honest_recipe_earns_the_points(tmp_path):
    assert reason(tmp_path, HONEST) is None


@pytest.mark.parametrize(
    ("recipe", "graded", "expected"),
    [
        (None, None, "no my_recipe.yaml"),
        ("a: &x [1]\nb: *x\n", None, "aliases are not allowed"),
        ("quantization: [", None, "not valid YAML"),
        ("- a list\n", None, "must hold sections"),
        ("quantization:\n  keep_float: [features.0.0]\n" + "#" * 70_000, None, "at most 64 kB"),
        (HONEST, [], "mnv2_recipe.pt (the model my_recipe.yaml made) is not among the graded models"),
        (HONEST, [model_grade(float_layers=None)], "could not read which of its layers run in float"),
        # forged: the recipe claims what the model was not made with
        (
            with_changes("quantization", observer="minmax"),
            None,
            "says observer minmax, mnv2_recipe.pt's sidecar histogram",
        ),
        (
            with_changes("quantization", keep_float=["features.0.0"]),
            None,
            "only my_recipe.yaml keeps features.0.0; only the sidecar keeps classifier.1, features.1.conv.0.0",
        ),
        (with_changes("dataset", seed=7), None, "says seed 7"),
        (HONEST, [model_grade(calibration_images=100)], "says calibration_images 200"),
        # the default recipe, made honestly, is no choice
        (
            with_changes("quantization", keep_float=[], granularity="per_channel"),
            [model_grade(float_layers=[], granularity="per_channel")],
            "is the default recipe",
        ),
        # evidence that does not back it
        ({k: v for k, v in HONEST.items() if k != "evidence"}, None, "has no evidence section"),
        (with_changes("evidence", rows=[{"model": "int8", "top1": 60.1}]), None, "paired 95 % intervals"),
        (
            with_changes("evidence", rows=[{"model": "x", "top1": 60, "interval": [3, 1]}]),
            None,
            "paired 95 % intervals",
        ),
        (
            with_changes("evidence", sensitivity={"features.0.0": 0.4}),
            None,
            "no gain for classifier.1, features.1.conv.0.0",
        ),
        (with_changes("quantization", calibration_images="all"), None, "'calibration_images' is not what"),
    ],
)
def test_a_missing_forged_mismatched_or_default_recipe_loses_the_points_with_a_reason(
    tmp_path, recipe, graded, expected
):
    found = reason(tmp_path, recipe, graded)
    assert found is not None and expected in found, found
    assert "\n" not in found


def test_a_link_is_refused(tmp_path):
    (tmp_path / "elsewhere.yaml").write_text(yaml.safe_dump(HONEST))
    (tmp_path / recipes.RECIPE_FILE).symlink_to(tmp_path / "elsewhere.yaml")
    assert "is a link" in recipes.check_recipe(tmp_path, [model_grade()])


def test_the_rubric_gives_the_recipe_points_from_the_pasteable_tasks():
    weights = rubric.load_rubric(None)["weights"]
    assert weights == {"accuracy": 30, "speedup": 20, "size": 5, "parts": 15, "recipe": 15, "open": 15}


def test_accuracy_speed_and_size_points_go_to_the_recipes_model_not_a_pasted_one(tmp_path):
    """scored_model recipe (default): the best pasted model earns nothing there; the recipe's model does."""
    from quantlab.grader import scoring

    pasted = model_grade(file="ptq_per_channel_histogram.pt", granularity="per_channel", float_layers=[])
    mine = model_grade()
    rules = rubric.load_rubric(None)
    assert rules["scored_model"] == "recipe"
    chosen, _ = scoring.scored_models([pasted, mine], rules, recipe_problem=None)
    assert chosen == [mine]
    chosen, why = scoring.scored_models([pasted], rules, recipe_problem="no my_recipe.yaml: ...")
    assert chosen == [] and "mnv2_recipe.pt" in why and "no my_recipe.yaml" in why
    chosen, _ = scoring.scored_models([pasted, mine], rules, recipe_problem="my_recipe.yaml is the default recipe")
    assert chosen == []  # a recipe that fails its check earns no points through its model either
    for changed in ({"scored_model": "best"}, {"weights": {**rules["weights"], "recipe": 0}}):
        chosen, _ = scoring.scored_models([pasted, mine], {**rules, **changed}, recipe_problem="no my_recipe.yaml")
        assert chosen == [pasted, mine]


@pytest.fixture(scope="module")
def kept_float_file(tmp_path_factory) -> Path:
    """A real MobileNetV2 (random weights) with KEPT in float, saved as quantize_model.py saves it (frozen)."""
    torch.manual_seed(0)
    from torchvision.models import mobilenet_v2

    batches = [torch.randn(2, 3, 224, 224)]
    int8 = quantize.quantize_static(mobilenet_v2(weights=None).eval(), batches, "x86", "per_tensor", progress=False,
                                    float_layers=KEPT)  # fmt: skip
    path = tmp_path_factory.mktemp("recipe") / recipes.RECIPE_MODEL
    models.save_torchscript(int8, path, {"method": "static", "keep_float": KEPT})
    return path


def test_the_childs_float_convolutions_must_be_the_recipes_layers(kept_float_file):
    convs = model_checks.conv_facts(torch.jit.load(str(kept_float_file)))
    assert convs["float"] == 1 and convs["float_shapes"] == [[32, 1, 3, 3]]  # classifier.1 is a Linear
    assert recipes.float_layers_problem("m.pt", "static", KEPT, "mobilenet_v2", convs) is None
    # a sidecar naming another layer of the same count, or none, or a layer the architecture lacks
    assert convs["weighted_layers"] == 53 and convs["float_positions"] == [1, 52]  # by place: conv #1, linear #52
    other = recipes.float_layers_problem("m.pt", "static", ["features.0.0"], "mobilenet_v2", convs)
    assert "in float in the sidecar, int8 in the file: features.0.0" in other
    assert "in float in the file only: features.1.conv.0.0, classifier.1" in other
    # what a hostile review found: a float layer swapped for another of the same shape ([32, 1, 3, 3] is
    # features.1.conv.0.0's alone, so swap the classifier's claim), or the Linear claimed float but int8
    swapped = recipes.float_layers_problem("m.pt", "static", ["features.1.conv.0.0"], "mobilenet_v2", convs)
    assert "in float in the file only: classifier.1" in swapped
    int8_linear = {**convs, "float_positions": [1]}
    claimed = recipes.float_layers_problem("m.pt", "static", KEPT, "mobilenet_v2", int8_linear)
    assert "in float in the sidecar, int8 in the file: classifier.1" in claimed
    same_shape = {**convs, "float_positions": [6, 52]}  # features.5.conv.1.0's shape is features.6.conv.1.0's
    assert "features.1.conv.0.0" in recipes.float_layers_problem("m.pt", "static", KEPT, "mobilenet_v2", same_shape)
    old_child = {key: value for key, value in convs.items() if key not in ("float_positions", "weighted_layers")}
    assert recipes.float_layers_problem("m.pt", "static", KEPT, "mobilenet_v2", old_child) is None  # by shape
    assert "a dynamic model?" in recipes.float_layers_problem("m.pt", "static", [], "mobilenet_v2", convs)
    typo = recipes.float_layers_problem("m.pt", "static", ["features.1.conv.0.O"], "mobilenet_v2", convs)
    assert "close names: features.1.conv.0.0" in typo
    assert "has no eager-mode" in recipes.float_layers_problem("m.pt", "static", KEPT, "../evil", convs)
