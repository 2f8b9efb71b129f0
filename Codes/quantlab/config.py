"""YAML settings for quantize_model.py, in sections modelled on the STM32 model zoo.

    general:        {model_path: mobilenet_v2, arch: mobilenet_v2}
    operation_mode: chain_eqe          # quantization | chain_eqe | chain_qb | chain_eqeb
    dataset:        {quantization_path: DIR, quantization_split: 0.2, test_path: DIR, seed: 0}
    preprocessing:  {rescaling: {scale: ..., offset: ...}, resizing: {interpolation: bilinear, aspect_ratio: crop},
                     color_mode: rgb}
    quantization:   {method: static, granularity: per_channel, observer: histogram, engine: auto,
                     calibration_images: 100, format: torchscript, export_dir: DIR}
    training:       {train_path: DIR, epochs: 1, learning_rate: 1e-4, freeze_bn_epoch: 0, freeze_observers_epoch: 1}
    benchmarking:   {runs: 50, warmup: 10, threads: 2}

``load_config`` returns flat settings named like quantize_model.py's flags; an
unknown key or a value of the wrong kind is a KitError that names it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch.utils.data import Dataset

from quantlab.errors import KitError
from quantlab.preprocess import IMAGENET_MEAN, IMAGENET_STD

OPERATION_MODES = {
    "quantization": ("quantize",),
    "chain_eqe": ("evaluate", "quantize", "evaluate"),
    "chain_qb": ("quantize", "benchmark"),
    "chain_eqeb": ("evaluate", "quantize", "evaluate", "benchmark"),
}
INTERPOLATIONS = ("bilinear",)  # what the kit's pre-processing (and torchvision's eval transform) does
ASPECT_RATIOS = ("crop",)
COLOR_MODES = ("rgb", "bgr")


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError
    text = str(value).strip()
    if "/" in text:  # STM32 configs write scales as fractions, e.g. 1/127.5
        numerator, denominator = text.split("/", 1)
        return float(numerator) / float(denominator)
    return float(text)


def _numbers(value: Any) -> tuple[float, ...]:
    """A scalar or a list of 3 (one per RGB channel)."""
    values = value if isinstance(value, list) else [value]
    if len(values) not in (1, 3):
        raise ValueError
    return tuple(_number(v) for v in values)


def _text(value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError
    return str(value)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError
    return value


# section -> key -> (flat setting name, converter, what the value must be)
SCHEMA: dict[str, dict[str, tuple[str, Callable, str]]] = {
    "general": {"model_path": ("model", _text, "a torchvision name or a file path"),
                "arch": ("arch", _text, "an architecture name")},
    "dataset": {"quantization_path": ("calib_data", Path, "a folder"),
                "quantization_split": ("calib_split", _number, "a fraction between 0 and 1"),
                "test_path": ("eval_data", Path, "a folder"),
                "seed": ("seed", _integer, "an integer")},
    "preprocessing": {"rescaling": None, "resizing": None, "color_mode": ("color_mode", _text, "rgb or bgr")},
    "rescaling": {"scale": ("rescale_scale", _numbers, "a number or 3 numbers"),
                  "offset": ("rescale_offset", _numbers, "a number or 3 numbers")},
    "resizing": {"interpolation": ("interpolation", _text, "bilinear"),
                 "aspect_ratio": ("aspect_ratio", _text, "crop")},
    "quantization": {"method": ("method", _text, "static, dynamic or qat"),
                     "granularity": ("granularity", _text, "per_channel or per_tensor"),
                     "observer": ("observer", _text, "histogram or minmax"),
                     "engine": ("engine", _text, "an engine name"),
                     "calibration_images": ("calib_images", _integer, "an integer"),
                     "format": ("format", _text, "torchscript or onnx"),
                     "export_dir": ("export_dir", Path, "a folder")},
    "training": {"train_path": ("train_data", Path, "a folder"),
                 "epochs": ("epochs", _integer, "an integer"),
                 "learning_rate": ("lr", _number, "a number"),
                 "freeze_bn_epoch": ("freeze_bn_epoch", _integer, "an integer"),
                 "freeze_observers_epoch": ("freeze_observers_epoch", _integer, "an integer")},
    "benchmarking": {"runs": ("runs", _integer, "an integer"),
                     "warmup": ("warmup", _integer, "an integer"),
                     "threads": ("threads", _integer, "an integer")},
}
TOP_LEVEL = ("general", "operation_mode", "dataset", "preprocessing", "quantization", "training", "benchmarking")


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases: a few hundred bytes of aliases can expand to gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(None, None, "YAML aliases (*name) are not allowed here; "
                                                    "write the values out", event.start_mark)
        return super().compose_node(parent, index)


MAX_YAML_BYTES = 1 << 20  # a settings file is a few hundred bytes


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's content, without aliases; a one-line KitError (``what`` names the file's role) otherwise."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise KitError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise KitError(f"cannot read {what} {path} ({error.strerror or type(error).__name__})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise KitError(f"{what} {path} is over {MAX_YAML_BYTES // 1024} kB; a settings file is much smaller")
    try:
        return yaml.load(raw.decode("utf-8"), Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except UnicodeDecodeError:
        raise KitError(f"{what} {path} is not a text file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        alias = " (aliases are not allowed)" if "alias" in str(error) else ""
        raise KitError(f"{what} {path} is not valid YAML{where}{alias}") from None


def _short(value: Any) -> str:
    """A value for a one-line error, capped."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _name(key: Any) -> str:
    """A key as written in the file, for a one-line error: printable characters only, capped."""
    text = "".join(character if character.isprintable() else "?" for character in str(key))
    return text if len(text) <= 40 else text[:37] + "..."


def _section(config: dict, name: str, where: str, settings: dict) -> None:
    body = config.get(name) or {}
    if not isinstance(body, dict):
        raise KitError(f"{where}: '{name}' must be a section of keys, got {type(body).__name__}")
    for key, value in body.items():
        if key not in SCHEMA[name]:
            raise KitError(f"{where}: unknown key '{name}.{_name(key)}'; known keys of '{name}': "
                           f"{', '.join(SCHEMA[name])}")
        rule = SCHEMA[name][key]
        if rule is None:  # a nested section
            _section(body, key, where, settings)
            continue
        flat, convert, expected = rule
        try:
            converted = convert(value)
        except (ValueError, TypeError, ZeroDivisionError):
            raise KitError(f"{where}: '{name}.{key}' must be {expected}, got {_short(value)}") from None
        settings[flat] = converted  # paths stay relative to the working folder, as on the command line


def load_config(path: Path) -> dict[str, Any]:
    """Flat settings from a YAML file; KitError for a missing file, bad YAML, or an unknown key."""
    where = str(path)
    config = read_yaml(path, "config file")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise KitError(f"{where}: the file must hold sections (general, dataset, ...), not a {type(config).__name__}")
    for key in config:
        if key not in TOP_LEVEL:
            raise KitError(f"{where}: unknown key '{_name(key)}'; known sections: {', '.join(TOP_LEVEL)}")
    settings: dict[str, Any] = {}
    if "operation_mode" in config:
        mode = config["operation_mode"]
        if not isinstance(mode, str):  # e.g. [quantization]: one mode per file
            raise KitError(f"{where}: operation_mode must be one name, e.g. quantization, not {_short(mode)}; "
                           f"use one of {', '.join(OPERATION_MODES)}")
        if mode not in OPERATION_MODES:
            raise KitError(f"{where}: operation_mode {_short(mode)} is unknown; use one of {', '.join(OPERATION_MODES)}")
        settings["operation_mode"] = mode
    for name in TOP_LEVEL:
        if name != "operation_mode":
            _section(config, name, where, settings)
    check_preprocessing(settings)
    return settings


def check_preprocessing(settings: dict) -> None:
    """Refuse resizing the kit's pipeline does not do, instead of silently ignoring it."""
    for key, allowed in (("interpolation", INTERPOLATIONS), ("aspect_ratio", ASPECT_RATIOS),
                         ("color_mode", COLOR_MODES)):
        value = settings.get(key)
        if value is not None and value not in allowed:
            raise KitError(f"preprocessing {key} '{value}' is not supported: the kit resizes like torchvision's "
                           f"evaluation transform (centre crop, bilinear); use {' or '.join(allowed)}")


def default_rescaling() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """torchvision's ImageNet normalisation as scale and offset on 0..255 pixels (per channel)."""
    scale = tuple(1 / (255 * s) for s in IMAGENET_STD)
    offset = tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    return scale, offset


class Rescaled(Dataset):
    """A data set whose images use another rescaling (pixel * scale + offset) or channel order.

    The kit's data sets normalise with ImageNet's mean and std; this undoes that
    and applies the config's rescaling, for models trained with other inputs.
    """

    def __init__(self, dataset: Dataset, scale: tuple[float, ...], offset: tuple[float, ...],
                 color_mode: str = "rgb") -> None:
        self.dataset = dataset
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        # normalised -> pixel (0..255) -> pixel * scale + offset, folded into one multiply-add
        new_scale = torch.tensor(scale).view(-1, 1, 1).expand(3, 1, 1)
        new_offset = torch.tensor(offset).view(-1, 1, 1).expand(3, 1, 1)
        self.multiply = 255 * std * new_scale
        self.add = 255 * mean * new_scale + new_offset
        self.flip = color_mode == "bgr"

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        if sample is None:
            return None
        image, label = sample
        image = image * self.multiply + self.add
        return (image.flip(0) if self.flip else image), label
