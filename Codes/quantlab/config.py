"""YAML settings for quantize_model.py, in sections modelled on the STM32 model zoo.

    general:        {model_path: mobilenet_v2, arch: mobilenet_v2}
    operation_mode: chain_eqe          # quantization | chain_eqe | chain_qb | chain_eqeb
    dataset:        {quantization_path: DIR, quantization_split: 0.2, test_path: DIR, seed: 0}
    preprocessing:  {rescaling: {scale: ..., offset: ...}, resizing: {interpolation: bilinear, aspect_ratio: crop},
                     color_mode: rgb}
    quantization:   {method: static, granularity: per_channel, observer: histogram, engine: auto,
                     calibration_images: 100, format: torchscript, export_dir: DIR}
    training:       {train_path: DIR, epochs: 3, learning_rate: 1e-4, loss: distill, freeze_bn_epoch: 0,
                     freeze_observers_epoch: 1}
    benchmarking:   {runs: 50, warmup: 10, threads: 2}

``SETTINGS`` declares each of quantize_model.py's settings once: its default,
its flag and its key here. ``load_config`` returns flat settings named like
the flags; an unknown key or a value of the wrong kind is a KitError that names it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import Dataset

from quantlab.engines import ENGINE_CHOICES
from quantlab.errors import KitError
from quantlab.preprocess import IMAGENET_MEAN, IMAGENET_STD
from quantlab.quantize import GRANULARITIES, OBSERVERS

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


@dataclass(frozen=True)
class Setting:
    """One setting of quantize_model.py, declared once: its default, its flag and its key in a --config file."""

    default: Any
    help: str | None = None  # the command-line flag's help; None: no flag (set it in --config)
    flag_type: Callable[[str], Any] = str  # how the flag's text becomes the value
    choices: tuple[str, ...] | None = None  # the flag's allowed values
    yaml: str | None = None  # "section.key" in a --config file
    convert: Callable[[Any], Any] = _text  # how the YAML value becomes the value
    expected: str = ""  # what the YAML value must be, for the error message


FORMATS = ("torchscript", "onnx", "pt2")  # pt2: PT2E's exported program (your own model)

# quantize_model.py's settings: a --config file overrides the defaults, command-line flags override both
SETTINGS: dict[str, Setting] = {
    "model": Setting(
        "mobilenet_v2",
        "a torchvision name (mobilenet_v2, resnet18, ...), a fp32 state dict file, your "
        "own model as FILE.py:FUNCTION (PT2E, output FILE.pt2), or a float ONNX classifier FILE.onnx "
        "(with --format onnx)",
        yaml="general.model_path",
        expected="a torchvision name or a file path",
    ),
    "weights": Setting(None, "the fp32 state dict of --model FILE.py:FUNCTION"),
    "arch": Setting(
        "mobilenet_v2",
        "the architecture of a state dict (default mobilenet_v2)",
        yaml="general.arch",
        expected="an architecture name",
    ),
    "output": Setting(None, "the file to write: FILE.pt (TorchScript), FILE.onnx or FILE.pt2 (PT2E)", Path),
    "format": Setting(
        None,
        "torchscript, onnx or pt2 (default: from --output's suffix)",
        choices=FORMATS,
        yaml="quantization.format",
        expected="torchscript or onnx",
    ),
    "method": Setting(
        "static",
        "static (= post_training), dynamic (nn.Linear/LSTM only), or qat (= quantization_aware)",
        yaml="quantization.method",
        expected="static, dynamic or qat",
    ),
    "granularity": Setting(
        "per_channel",
        "weight scales per output channel, or per_tensor: one per layer",
        choices=GRANULARITIES,
        yaml="quantization.granularity",
        expected="per_channel or per_tensor",
    ),
    "observer": Setting(
        "histogram",
        "how activation ranges are estimated",
        choices=OBSERVERS,
        yaml="quantization.observer",
        expected="histogram or minmax",
    ),
    "engine": Setting(
        "auto",
        "int8 engine: qnnpack for the Pi; auto picks the fast one for this CPU",
        choices=ENGINE_CHOICES,
        yaml="quantization.engine",
        expected="an engine name",
    ),
    "operation_mode": Setting(
        "quantization",
        "quantization, or a chain: chain_eqe (evaluate, quantize, evaluate), "
        "chain_qb (quantize, benchmark), chain_eqeb (all)",
        choices=tuple(OPERATION_MODES),
    ),
    "calib_data": Setting(
        None,
        "a folder of photos (flat, or one folder per class), or imagenette (Colab)",
        Path,
        yaml="dataset.quantization_path",
        convert=Path,
        expected="a folder",
    ),
    "calib_images": Setting(
        100,
        "how many photos to calibrate on (default 100)",
        int,
        yaml="quantization.calibration_images",
        convert=_integer,
        expected="an integer",
    ),
    "calib_split": Setting(
        None,
        "or: the fraction of --calib-data to calibrate on",
        float,
        yaml="dataset.quantization_split",
        convert=_number,
        expected="a fraction between 0 and 1",
    ),
    "eval_data": Setting(
        None,
        "evaluation photos for the chains (default: the photos of --calib-data not used for calibration)",
        Path,
        yaml="dataset.test_path",
        convert=Path,
        expected="a folder",
    ),
    "eval_images": Setting(None, "evaluate on at most this many photos", int),
    "train_data": Setting(
        None,
        "QAT: labelled photos (default: the calibration subset)",
        Path,
        yaml="training.train_path",
        convert=Path,
        expected="a folder",
    ),
    "epochs": Setting(
        1, "QAT: passes over the training photos", int, yaml="training.epochs", convert=_integer, expected="an integer"
    ),
    "lr": Setting(
        3e-5,
        "QAT: learning rate (SGD with momentum)",
        float,
        yaml="training.learning_rate",
        convert=_number,
        expected="a number",
    ),
    "qat_loss": Setting(
        "labels",
        "QAT: learn from the labels (cross-entropy), or distill: from the float model's predictions (no labels "
        "used; better when the photos cover few classes, notebook 4)",
        choices=("labels", "distill"),
        yaml="training.loss",
        expected="labels or distill",
    ),
    "freeze_bn_epoch": Setting(
        0,
        "QAT: freeze BatchNorm statistics from this epoch (counted from 0; 0.5 = halfway through the first)",
        float,
        yaml="training.freeze_bn_epoch",
        convert=_number,
        expected="a number of epochs",
    ),
    "freeze_observers_epoch": Setting(
        None,
        "QAT: freeze int8 ranges from this epoch (default: the last, or halfway through a single epoch)",
        float,
        yaml="training.freeze_observers_epoch",
        convert=_number,
        expected="a number of epochs",
    ),
    "seed": Setting(
        0,
        "picks the calibration photos and random inputs",
        int,
        yaml="dataset.seed",
        convert=_integer,
        expected="an integer",
    ),
    "threads": Setting(
        None,
        "CPU threads (default: physical cores)",
        int,
        yaml="benchmarking.threads",
        convert=_integer,
        expected="an integer",
    ),
    "runs": Setting(
        50,
        "chains with benchmarking: timed runs per model",
        int,
        yaml="benchmarking.runs",
        convert=_integer,
        expected="an integer",
    ),
    "warmup": Setting(
        10,
        "chains with benchmarking: untimed runs first",
        int,
        yaml="benchmarking.warmup",
        convert=_integer,
        expected="an integer",
    ),
    "export_dir": Setting(None, yaml="quantization.export_dir", convert=Path, expected="a folder"),
    "rescale_scale": Setting(None, yaml="rescaling.scale", convert=_numbers, expected="a number or 3 numbers"),
    "rescale_offset": Setting(None, yaml="rescaling.offset", convert=_numbers, expected="a number or 3 numbers"),
    "color_mode": Setting("rgb", yaml="preprocessing.color_mode", expected="rgb or bgr"),
    "interpolation": Setting("bilinear", yaml="resizing.interpolation", expected="bilinear"),
    "aspect_ratio": Setting("crop", yaml="resizing.aspect_ratio", expected="crop"),
}


def defaults() -> dict[str, Any]:
    """Every setting at its default."""
    return {name: setting.default for name, setting in SETTINGS.items()}


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting that has one (``--calib-data`` for calib_data); a flag not given stays None."""
    for name, setting in SETTINGS.items():
        if setting.help is not None:
            parser.add_argument(
                f"--{name.replace('_', '-')}",
                type=setting.flag_type,
                choices=setting.choices,
                default=None,
                help=setting.help,
            )


def _schema() -> dict[str, dict[str, tuple[str, Callable, str] | None]]:
    """section -> key -> (flat setting name, converter, what the value must be); None: a nested section."""
    schema: dict[str, dict[str, tuple[str, Callable, str] | None]] = {
        "general": {},
        "dataset": {},
        "preprocessing": {"rescaling": None, "resizing": None},
        "rescaling": {},
        "resizing": {},
        "quantization": {},
        "training": {},
        "benchmarking": {},
    }
    for name, setting in SETTINGS.items():
        if setting.yaml:
            section, key = setting.yaml.split(".")
            schema[section][key] = (name, setting.convert, setting.expected)
    return schema


SCHEMA = _schema()
TOP_LEVEL = ("general", "operation_mode", "dataset", "preprocessing", "quantization", "training", "benchmarking")


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases: a few hundred bytes of aliases can expand to gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not allowed here; write the values out", event.start_mark
            )
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
            raise KitError(
                f"{where}: unknown key '{name}.{_name(key)}'; known keys of '{name}': {', '.join(SCHEMA[name])}"
            )
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
            raise KitError(
                f"{where}: operation_mode must be one name, e.g. quantization, not {_short(mode)}; "
                f"use one of {', '.join(OPERATION_MODES)}"
            )
        if mode not in OPERATION_MODES:
            raise KitError(
                f"{where}: operation_mode {_short(mode)} is unknown; use one of {', '.join(OPERATION_MODES)}"
            )
        settings["operation_mode"] = mode
    for name in TOP_LEVEL:
        if name != "operation_mode":
            _section(config, name, where, settings)
    check_preprocessing(settings)
    return settings


def check_preprocessing(settings: dict) -> None:
    """Refuse resizing the kit's pipeline does not do, instead of silently ignoring it."""
    for key, allowed in (
        ("interpolation", INTERPOLATIONS),
        ("aspect_ratio", ASPECT_RATIOS),
        ("color_mode", COLOR_MODES),
    ):
        value = settings.get(key)
        if value is not None and value not in allowed:
            raise KitError(
                f"preprocessing {key} '{value}' is not supported: the kit resizes like torchvision's "
                f"evaluation transform (centre crop, bilinear); use {' or '.join(allowed)}"
            )


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

    def __init__(
        self, dataset: Dataset, scale: tuple[float, ...], offset: tuple[float, ...], color_mode: str = "rgb"
    ) -> None:
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
