"""quantlab.config: quantize_model.py's settings, each declared once (default, flag, key in a --config file)."""

from __future__ import annotations

import argparse
from pathlib import Path

from quantlab import config


def test_flags_and_yaml_keys_come_from_the_one_table(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    config.add_flags(parser)
    flagged = {name for name, setting in config.SETTINGS.items() if setting.help is not None}
    assert vars(parser.parse_args([])) == dict.fromkeys(flagged)  # a flag not given stays None: the file decides
    args = parser.parse_args(["--calib-images", "8", "--granularity", "per_tensor", "--calib-data", "photos"])
    assert (args.calib_images, args.granularity, args.calib_data) == (8, "per_tensor", Path("photos"))
    in_yaml = {rule[0] for section in config.SCHEMA.values() for rule in section.values() if rule is not None}
    assert in_yaml == {name for name, setting in config.SETTINGS.items() if setting.yaml}
    assert config.defaults()["calib_images"] == 100 and config.defaults()["engine"] == "auto"
    path = tmp_path / "settings.yaml"
    path.write_text("quantization: {calibration_images: 8}\ntraining: {learning_rate: 1e-4}\n")
    assert config.load_config(path) == {"calib_images": 8, "lr": 1e-4}
