"""quantlab.config: quantize_model.py's settings table (each setting declared once: default, flag, key in a
--config file) and the --config reader."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from conftest import REPO, load_script
from quantlab import config, vocab
from quantlab.errors import KitError

SETTINGS = load_script("quantize_model.py").SETTINGS


def test_flags_and_yaml_keys_come_from_the_one_table(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    config.add_flags(parser, SETTINGS)
    flagged = {name for name, setting in SETTINGS.items() if setting.help is not None}
    assert vars(parser.parse_args([])) == dict.fromkeys(flagged)  # a flag not given stays None: the file decides
    args = parser.parse_args(["--calib-images", "8", "--granularity", "per_tensor", "--calib-data", "photos"])
    assert (args.calib_images, args.granularity, args.calib_data) == (8, "per_tensor", Path("photos"))
    rules = config.schema(SETTINGS)
    in_yaml = {rule[0] for section in rules.values() for rule in section.values() if rule is not None}
    assert in_yaml == {name for name, setting in SETTINGS.items() if setting.yaml}
    assert config.defaults(SETTINGS)["calib_images"] == 100 and config.defaults(SETTINGS)["engine"] == "auto"
    path = tmp_path / "settings.yaml"
    path.write_text("quantization: {calibration_images: 8}\ntraining: {learning_rate: 1e-4}\n")
    assert config.load_config(path, SETTINGS) == {"calib_images": 8, "lr": 1e-4}


def test_the_defaults_are_task_5s_recipe_and_qat_distills() -> None:
    """The grader measures the open target against task 5's model: quantize_model.py's defaults for qnnpack."""
    defaults = config.defaults(SETTINGS)
    method, _, granularity, observer = vocab.DEFAULT_RECIPE
    assert (defaults["method"], defaults["granularity"], defaults["observer"]) == (method, granularity, observer)
    assert defaults["qat_loss"] == "distill"  # notebook 4: distillation keeps the accuracy labels lose here


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("quantization:\n  granularty: per_tensor\n", "unknown key 'quantization.granularty'"),
        ("dataset:\n  seed: one\n", "'dataset.seed' must be an integer"),
        ("operation_mode: chain_x\n", "operation_mode 'chain_x' is unknown"),
        ("preprocessing:\n  resizing: {aspect_ratio: fit}\n", "aspect_ratio 'fit' is not supported"),
        ("preprocessing:\n  rescaling: {scale: [1, 2]}\n", "'rescaling.scale' must be a number or 3 numbers"),
        ("- a list\n", "must hold sections"),
        ("general: {model_path: [unclosed\n", "is not valid YAML at line 2"),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(KitError, match=re.escape(message)):
        config.load_config(path, SETTINGS)


def test_example_configs_are_valid():
    examples = sorted((REPO / "configs").glob("quantize_*.yaml"))
    assert len(examples) >= 3
    for example in examples:
        settings = config.load_config(example, SETTINGS)
        assert settings["model"] and settings["operation_mode"] in SETTINGS["operation_mode"].choices, example
