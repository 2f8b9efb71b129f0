"""Quantize a model to int8 and save it as a file that runs without the kit.

Three methods, as in the notebooks:
  static   post-training: calibrate activation ranges on a few photos, convert (CNNs: the one to use)
  dynamic  nn.Linear/nn.LSTM only, activations quantized at run time (MobileNetV2 barely changes)
  qat      quantization-aware training: fine-tune with fake quantization (learning from the float
           model's answers, --qat-loss distill, unless --qat-loss labels), then convert

The output is a TorchScript file (``torch.jit.load`` alone runs it, e.g. on the
Pi) or, with ``--format onnx``, an ONNX file for ONNX Runtime, or with ``--format
tflite`` a LiteRT file (needs litert-torch; it writes X_fp32.tflite beside X.tflite,
the float baseline converted the same way), or with ``--format pte`` PT2E int8 lowered
to ExecuTorch's XNNPACK (needs executorch; the fastest PT2E path, docs/pt2e_speed.md). A JSON sidecar
beside it records how it was made; ``Codes/mobile_net.py --model`` reads the
engine from it. ``--config FILE.yaml`` takes the same settings in sections
modelled on the STM32 model zoo (see configs/); flags override the file.

Examples:
    python Codes/quantize_model.py --output mnv2_int8.pt --calib-data photos/
    python Codes/quantize_model.py --output mnv2_qnnpack.pt --engine qnnpack --calib-data photos/   # for the Pi
    python Codes/quantize_model.py --output mnv2_pt.pt --granularity per_tensor --observer minmax --calib-data photos/
    python Codes/quantize_model.py --output mnv2_mixed.pt --keep-float features.0.0,classifier.1 --calib-data photos/
    python Codes/quantize_model.py --config my_recipe.yaml --calib-data photos/ --output mnv2_recipe.pt   # notebook 3b
    python Codes/quantize_model.py --output mnv2_dynamic.pt --method dynamic
    python Codes/quantize_model.py --output mnv2_qat.pt --method qat --train-data photos/ --epochs 1 --lr 3e-5
    python Codes/quantize_model.py --output mnv2_int8.onnx --format onnx --calib-data photos/
    python Codes/quantize_model.py --output mnv2_int8.tflite --calib-data photos/   # LiteRT, + mnv2_int8_fp32.tflite
    python Codes/quantize_model.py --output mnv2_int8.pte --calib-data photos/   # PT2E -> ExecuTorch (XNNPACK)
    python Codes/quantize_model.py --model my_finetuned.pth --arch resnet18 --output mine_int8.pt --calib-data photos/
    python Codes/quantize_model.py --config configs/quantize_chain_eqeb.yaml
    python Codes/quantize_model.py --model my_net.py:build --weights my_net.pth --output my_net_int8.pt2 --calib-data photos/
    python Codes/quantize_model.py --model my_net.onnx --format onnx --output my_net_int8.onnx --calib-data photos/
    python Codes/mobile_net.py --model mnv2_int8.pt --source samples --frames 50
"""

import argparse
import glob
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch.utils.data import Dataset

from quantlab import (
    arguments,
    bench,
    config,
    coverage,
    data,
    engines,
    files,
    loading,
    memory,
    models,
    preprocess,
    pt2e,
    quantize,
    user_model,
    vocab,
)
from quantlab.config import Setting, count, integer, number, numbers, share
from quantlab.errors import KitError, run_cli

# ---- settings: each declared once, here: its default, its flag (--calib-images for calib_images) and its key in
# a --config file (quantlab/config.py reads them); a --config file overrides the defaults, flags override both ----
size = 224  # input resolution

# operation_mode (STM32 model zoo's chains): what one run does, in order
FORMAT_SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "tflite": vocab.TFLITE_SUFFIX, "pte": vocab.PTE_SUFFIX}  # else .pt

OPERATION_MODES = {
    "quantization": ("quantize",),
    "chain_eqe": ("evaluate", "quantize", "evaluate"),
    "chain_qb": ("quantize", "benchmark"),
    "chain_eqeb": ("evaluate", "quantize", "evaluate", "benchmark"),
}

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
    "output": Setting(
        None,
        "the file to write: FILE.pt (TorchScript), FILE.onnx, FILE.pt2 (PT2E), FILE.tflite (LiteRT) or FILE.pte "
        "(ExecuTorch)",
        Path,
    ),
    "format": Setting(
        None,
        "torchscript, onnx, pt2, tflite or pte (default: from --output's suffix)",
        choices=vocab.FORMATS,
        yaml="quantization.format",
        expected="torchscript, onnx, pt2, tflite or pte",
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
        choices=vocab.GRANULARITIES,
        yaml="quantization.granularity",
        expected="per_channel or per_tensor",
    ),
    "observer": Setting(
        "histogram",
        "how activation ranges are estimated",
        choices=vocab.OBSERVERS,
        yaml="quantization.observer",
        expected="histogram or minmax",
    ),
    "keep_float": Setting(
        (),
        "static: leave these layers in float, NAME[,NAME] (names as quantize.weighted_layers gives them, e.g. "
        "features.1.conv.0.0: notebook 3b's sensitivity chooses them)",
        config.layer_names,
        yaml="quantization.keep_float",
        convert=config.layer_names,
        expected="a list of layer names",
    ),
    "engine": Setting(
        "auto",
        "int8 engine: qnnpack for the Pi; auto picks the fast one for this CPU",
        choices=vocab.ENGINE_CHOICES,
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
        arguments.int_at_least(1),
        yaml="quantization.calibration_images",
        convert=count,
        expected="a whole number, at least 1",
    ),
    "calib_split": Setting(
        None,
        "or: the fraction of --calib-data to calibrate on",
        arguments.fraction,
        yaml="dataset.quantization_split",
        convert=share,
        expected="a fraction in (0, 1]",
    ),
    "eval_data": Setting(
        None,
        "evaluation photos for the chains (default: the photos of --calib-data not used for calibration)",
        Path,
        yaml="dataset.test_path",
        convert=Path,
        expected="a folder",
    ),
    "eval_images": Setting(None, "evaluate on at most this many photos", arguments.int_at_least(1)),
    "train_data": Setting(
        None,
        "QAT: labelled photos (default: the calibration subset)",
        Path,
        yaml="training.train_path",
        convert=Path,
        expected="a folder",
    ),
    "epochs": Setting(
        1,
        "QAT: passes over the training photos",
        arguments.int_at_least(1),
        yaml="training.epochs",
        convert=count,
        expected="a whole number, at least 1",
    ),
    "lr": Setting(
        3e-5,
        "QAT: learning rate (SGD with momentum)",
        float,
        yaml="training.learning_rate",
        convert=number,
        expected="a number",
    ),
    "qat_loss": Setting(
        "distill",
        "QAT: distill learns from the float model's predictions (no labels used: notebook 4 shows it keeps "
        "accuracy where cross-entropy on a few photos loses it), or labels: cross-entropy on the photos' labels",
        choices=("labels", "distill"),
        yaml="training.loss",
        expected="labels or distill",
    ),
    "freeze_bn_epoch": Setting(
        0,
        "QAT: freeze BatchNorm statistics from this epoch (counted from 0; 0.5 = halfway through the first)",
        float,
        yaml="training.freeze_bn_epoch",
        convert=number,
        expected="a number of epochs",
    ),
    "freeze_observers_epoch": Setting(
        None,
        "QAT: freeze int8 ranges from this epoch (default: the last, or halfway through a single epoch)",
        float,
        yaml="training.freeze_observers_epoch",
        convert=number,
        expected="a number of epochs",
    ),
    "seed": Setting(
        0,
        "picks the calibration photos and random inputs",
        int,
        yaml="dataset.seed",
        convert=integer,
        expected="an integer",
    ),
    "threads": Setting(
        None,
        "CPU threads (default: physical cores)",
        arguments.int_at_least(1),
        yaml="benchmarking.threads",
        convert=count,
        expected="a whole number, at least 1",
    ),
    "runs": Setting(
        50,
        "chains with benchmarking: timed runs per model",
        arguments.int_at_least(1),
        yaml="benchmarking.runs",
        convert=count,
        expected="a whole number, at least 1",
    ),
    "warmup": Setting(
        10,
        "chains with benchmarking: untimed runs first",
        arguments.int_at_least(0),
        yaml="benchmarking.warmup",
        convert=integer,
        expected="an integer",
    ),
    "export_dir": Setting(None, yaml="quantization.export_dir", convert=Path, expected="a folder"),
    "rescale_scale": Setting(None, yaml="rescaling.scale", convert=numbers, expected="a number or 3 numbers"),
    "rescale_offset": Setting(None, yaml="rescaling.offset", convert=numbers, expected="a number or 3 numbers"),
    "color_mode": Setting("rgb", yaml="preprocessing.color_mode", expected="rgb or bgr"),
    "interpolation": Setting("bilinear", yaml="resizing.interpolation", expected="bilinear"),
    "aspect_ratio": Setting("crop", yaml="resizing.aspect_ratio", expected="crop"),
}
# -------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags (None: the command line); each flag's type checks its value (quantlab.arguments)."""
    parser = arguments.Parser(description=__doc__)
    parser.add_argument("--config", type=Path, help="a YAML file with the settings below (see configs/)")
    config.add_flags(parser, SETTINGS)  # a flag not given stays None: the config file or the default decides
    return parser.parse_args(argv)


def resolve_settings(args: argparse.Namespace) -> dict:
    """The defaults (SETTINGS), then the config file, then the flags given on the command line."""
    from_file = config.load_config(args.config, SETTINGS) if args.config is not None else {}
    given = {key: value for key, value in vars(args).items() if value is not None and key != "config"}
    settings = {**config.defaults(SETTINGS), **from_file, **given}
    # the calibration subset is a count or a fraction: the most specific source decides which
    size_keys = ("calib_images", "calib_split")
    chosen = [k for k in size_keys if k in given] or [k for k in size_keys if k in from_file] or ["calib_images"]
    if len(chosen) == 2:
        raise KitError("give the calibration subset once: --calib-images N or --calib-split FRACTION, not both")
    settings["calib_split" if chosen == ["calib_images"] else "calib_images"] = None
    return settings


def check_settings(settings: dict) -> None:
    """What argparse and the config reader cannot check; fills in the method, format and output."""
    method = vocab.METHOD_ALIASES.get(str(settings["method"]), str(settings["method"]))
    if method not in vocab.METHODS:
        known = ", ".join((*vocab.METHODS, *vocab.METHOD_ALIASES))
        raise KitError(f"unknown --method '{settings['method']}'; use one of {known}")
    settings["method"] = method
    for key, setting in SETTINGS.items():  # argparse checks the flags' choices; a --config file's too
        if setting.choices and settings.get(key) is not None and settings[key] not in setting.choices:
            raise KitError(f"unknown {key} '{settings[key]}'; use one of {', '.join(setting.choices)}")
    if settings["calib_split"] is not None and settings["calib_data"] is None:
        raise KitError("--calib-split needs --calib-data (the folder to split)")
    output = settings["output"]
    if output is None:
        if settings["export_dir"] is None:
            raise KitError("name the file to write: --output FILE.pt (or quantization.export_dir in --config)")
        suffix = FORMAT_SUFFIXES.get(settings["format"], ".pt")
        name = Path(str(settings["model"])).stem
        output = (
            Path(settings["export_dir"])
            / f"{name}_{method}{'_' + settings['granularity'] if method != 'dynamic' else ''}{suffix}"
        )
    output = Path(output)
    suffix_format = (
        "onnx"
        if output.suffix.lower() in vocab.ONNX_SUFFIXES
        else "pt2"
        if pt2e.is_exported_file(output)
        else "tflite"
        if output.suffix.lower() == vocab.TFLITE_SUFFIX
        else "pte"
        if output.suffix.lower() == vocab.PTE_SUFFIX
        else "torchscript"
    )
    settings["format"] = settings["format"] or suffix_format
    if settings["format"] != suffix_format:
        raise KitError(
            f"--output {output} does not fit --format {settings['format']}; "
            f"name it FILE{FORMAT_SUFFIXES.get(settings['format'], '.pt')}"
        )
    check_own_model_route(settings, method)
    check_keep_float(settings, method)
    if settings["format"] == "onnx" and method == "qat":
        raise KitError("--format onnx takes static or dynamic quantization; for QAT write TorchScript (FILE.pt)")
    if output.suffix.lower() == ".json":
        raise KitError(f"--output {output} ends in .json, the sidecar's suffix; name the model FILE.pt")
    files.check_writable(output, "--output", f"model{output.suffix or '.pt'}")  # fail now, not after calibrating
    # X.pt and X.onnx would share the sidecar X.json: writing one would leave the other with a wrong sidecar
    siblings = sorted(
        other.name
        for other in output.parent.glob(f"{glob.escape(output.stem)}.*")
        if other.suffix.lower() in vocab.MODEL_SUFFIXES and other.name != output.name
    )
    if siblings and models.sidecar_path(output).exists():
        raise KitError(
            f"{models.sidecar_path(output)} is the sidecar of {siblings[0]} already: name this model "
            f"differently (e.g. {output.stem}_{settings['format']}{output.suffix}), or delete {siblings[0]} first"
        )
    settings["output"] = output


def check_own_model_route(settings: dict, method: str) -> None:
    """Your own model: FILE.py:FUNCTION goes through PT2E (FILE.pt2) or ONNX Runtime, FILE.onnx through ONNX Runtime."""
    model = str(settings["model"])
    own, onnx_input = user_model.is_user_model_spec(model), Path(model).suffix.lower() in vocab.ONNX_SUFFIXES
    if settings["weights"] is not None and not own:
        raise KitError(
            "--weights is the state dict of --model FILE.py:FUNCTION; for a torchvision architecture "
            "pass the state dict itself as --model (with --arch)"
        )
    if (own or onnx_input) and settings["operation_mode"] != "quantization":
        raise KitError(
            f"operation mode {settings['operation_mode']} runs with torchvision models; quantize your "
            "own model, then measure it with benchmark.py --model"
        )
    if own and settings["format"] == "torchscript":
        raise KitError(
            f"--model {model} is your own model: eager mode cannot take a model not written for it, so "
            "it goes through PT2E: name the output FILE.pt2 (or FILE.onnx for ONNX Runtime)"
        )
    if onnx_input and settings["format"] != "onnx":
        raise KitError(
            f"--model {model} is an ONNX file: ONNX Runtime quantizes it; add --format onnx and name "
            "the output FILE.onnx"
        )
    if settings["format"] in ("pt2", "pte") and method != "static":
        raise KitError(
            f"PT2E (FILE.{settings['format']}) does static post-training quantization here, not --method {method}; "
            "drop --method"
        )
    if settings["format"] == "tflite" and (method != "static" or settings["observer"] != "histogram"):
        raise KitError(
            "LiteRT (FILE.tflite) gets static post-training quantization with its PT2E quantizer's histogram "
            f"observer here; drop --method {method} / --observer {settings['observer']}"
        )
    if settings["format"] == "tflite":
        from quantlab import litert

        litert.check_converter()  # fail now, not after loading the model and the photos
    if settings["format"] == "pte":
        from quantlab import executorch_runtime

        executorch_runtime.require_runtime()  # fail now, not after loading the model and the photos
    if settings["format"] in ("pt2", "pte") and settings["observer"] != "histogram":
        raise KitError(
            "PT2E's quantizers observe activations with a histogram; drop --observer "
            f"{settings['observer']} (or write FILE.onnx for ONNX Runtime's minmax calibration)"
        )


def check_keep_float(settings: dict, method: str) -> None:
    """Layers kept in float: static eager-mode quantization of a torchvision architecture, names it has."""
    names = settings["keep_float"]
    if not names:
        return
    if method != "static" or settings["format"] != "torchscript":
        raise KitError(
            f"--keep-float works with --method static written as TorchScript (FILE.pt), not {method} / "
            f"{settings['format']}; drop --keep-float"
        )
    if user_model.is_user_model_spec(str(settings["model"])):
        raise KitError("--keep-float names layers of a torchvision architecture, not of your own model FILE.py")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise KitError(f"--keep-float names {', '.join(twice)} twice: name each layer once")
    quantize.check_layer_names(names, list(quantize.arch_layers(settings["arch"])), settings["arch"])


# ---- the float model -------------------------------------------------------------------


def torchvision_fp32(name: str) -> torch.nn.Module:
    """A torchvision classifier with its default pretrained weights (weights API; offline copy for MobileNetV2)."""
    if name == "mobilenet_v2":
        return models.mobilenet_v2_fp32()
    weights = torchvision.models.get_model_weights(name).DEFAULT
    state_dict, _ = models.pretrained_state_dict(weights, offline_asset=None)
    return build_fp32(name, state_dict, f"torchvision {weights}")


def build_fp32(arch: str, state_dict: dict, source: str) -> torch.nn.Module:
    """torchvision's float ``arch`` holding ``state_dict``."""
    if models.is_int8_state_dict(state_dict):
        raise KitError(f"{source} holds int8 weights: it is already quantized; pass fp32 weights")
    return models.torchvision_model(arch, state_dict, source)


def load_fp32(name_or_path: str, arch: str) -> torch.nn.Module:
    """The float model: a torchvision name (pretrained weights) or a state dict file for ``arch``."""
    known = set(torchvision.models.list_models(module=torchvision.models))
    for name in (name_or_path, arch):
        if name in known and name not in quantize.QUANTIZABLE_ARCHS:
            raise KitError(
                f"{name} has no eager-mode quantizable version (torchvision.models.quantization provides "
                f"{', '.join(quantize.QUANTIZABLE_ARCHS)}): eager mode needs QuantStub/DeQuantStub, fusable "
                "modules and quantized adds written into the model. FX graph mode could trace it, but it is "
                "deprecated with the rest of torch.ao.quantization; the labs stay in eager mode"
            )
    if arch not in quantize.QUANTIZABLE_ARCHS:
        raise KitError(f"--arch '{arch}' is not one of {', '.join(quantize.QUANTIZABLE_ARCHS)}")
    if name_or_path in known:
        return torchvision_fp32(name_or_path)
    path = Path(name_or_path)
    if not path.exists() and (path.suffix or len(path.parts) > 1):
        raise KitError(
            f"model file {path} does not exist; check the path, or pass a torchvision name such as mobilenet_v2"
        )
    if not path.exists():
        raise KitError(
            f"--model '{name_or_path}' is neither a torchvision model name nor an existing file; "
            f"pass one of {', '.join(quantize.QUANTIZABLE_ARCHS)} or the path of a fp32 state dict"
        )
    if path.suffix.lower() in vocab.ONNX_SUFFIXES:
        raise KitError(
            f"{path} is an ONNX file; quantize_model.py starts from PyTorch fp32 weights "
            "(it exports to ONNX itself with --format onnx)"
        )
    if files.is_torchscript_file(path):
        raise KitError(
            f"{path} is a TorchScript file: it cannot be quantized again in eager mode; "
            "pass the fp32 state dict it came from (torch.save(model.state_dict(), PATH))"
        )
    if arch == "mobilenet_v2":
        return models.mobilenet_v2_fp32(path)
    return build_fp32(arch, models.load_state_dict_file(path), str(path))


# ---- data -----------------------------------------------------------------------------


def with_preprocessing(dataset: Dataset, settings: dict) -> Dataset:
    """The config's rescaling / colour order, when it differs from the kit's ImageNet normalisation."""
    if settings["rescale_scale"] is None and settings["rescale_offset"] is None and settings["color_mode"] == "rgb":
        return dataset
    scale, offset = data.default_rescaling()
    return data.Rescaled(
        dataset, settings["rescale_scale"] or scale, settings["rescale_offset"] or offset, settings["color_mode"]
    )


def declared_preprocessing(settings: dict) -> preprocess.Preprocessing:
    """The input your own model FILE.py:FUNCTION declares (quantlab.preprocess); ImageNet's for the others (a
    --config's rescaling is applied by with_preprocessing)."""
    model = str(settings["model"])
    configured = settings["rescale_scale"] or settings["rescale_offset"] or settings["color_mode"] != "rgb"
    if configured or not user_model.is_user_model_spec(model) or Path(model).suffix.lower() in vocab.ONNX_SUFFIXES:
        return preprocess.IMAGENET
    declared = user_model.declared_preprocessing(model)
    if declared.size not in (None, size):
        raise KitError(f"{model} declares input size {declared.size}; quantize_model.py feeds {size}x{size} photos")
    if declared != preprocess.IMAGENET:
        print(f"{model} declares its preprocessing: {declared.describe()} (calibration and evaluation use it)")
    return declared


def data_subsets(
    settings: dict, preprocessing: preprocess.Preprocessing = preprocess.IMAGENET
) -> tuple[Dataset | None, Dataset | None]:
    """(calibration subset, evaluation set): the evaluation photos never include calibration photos."""
    calibration = evaluation = None
    if settings["calib_data"] is not None:  # ranges need no labels
        dataset = data.image_dataset(settings["calib_data"], size, need_labels=False, preprocessing=preprocessing)
        if settings["calib_split"] is not None:
            calibration, evaluation = data.split(dataset, fraction=settings["calib_split"], seed=settings["seed"])
        else:
            calibration, evaluation = data.split(dataset, first_n=settings["calib_images"], seed=settings["seed"])
    if settings["eval_data"] is not None:
        evaluation = data.image_dataset(settings["eval_data"], size, preprocessing=preprocessing)
    if evaluation is not None and settings["eval_images"] is not None:
        evaluation = torch.utils.data.Subset(evaluation, range(min(settings["eval_images"], len(evaluation))))
    return calibration, evaluation


def calibration_batches(settings: dict, calibration: Dataset | None) -> tuple[list | torch.utils.data.DataLoader, str]:
    """Batches to calibrate on and a description of their source."""
    if calibration is None:
        print(
            "WARNING: no --calib-data: calibrating on random noise. The file size and speed are real, "
            "but the accuracy of this model is meaningless; pass --calib-data FOLDER of photos",
            file=sys.stderr,
        )
        generator = torch.Generator().manual_seed(settings["seed"])
        noise = torch.randn(settings["calib_images"] or 16, 3, size, size, generator=generator)
        return list(noise.split(16)), "random noise"
    return data.loader(with_preprocessing(calibration, settings), batch_size=16), str(settings["calib_data"])


def training_set(settings: dict, calibration: Dataset | None) -> tuple[Dataset, str]:
    """QAT's labelled photos: --train-data, else the calibration subset (never the evaluation photos)."""
    if settings["train_data"] is not None:
        return data.image_dataset(settings["train_data"], size), str(settings["train_data"])
    if calibration is None:
        raise KitError("--method qat needs labelled photos: pass --train-data DIR (or --calib-data DIR)")
    data.require_labels(calibration, "QAT on the calibration photos")
    print(
        f"note: no --train-data: fine-tuning on the {len(calibration)} calibration photos of {settings['calib_data']}"
    )
    return calibration, f"{settings['calib_data']} (calibration subset)"


# ---- quantize, evaluate, benchmark, save -----------------------------------------------


def quantize_torch(
    fp32: torch.nn.Module, settings: dict, engine: str, calibration: Dataset | None
) -> tuple[torch.nn.Module, dict]:
    """The int8 PyTorch model and what the sidecar says about how it was made."""
    method = settings["method"]
    if method == "dynamic":
        engines.set_engine(engine)
        print("dynamic quantization: nn.Linear/nn.LSTM layers only (int8 weights, activations quantized at run time)")
        return quantize.quantize_dynamic(fp32), {"granularity": None, "observer": None, "calibration": None}
    if method == "qat":
        train, source = training_set(settings, calibration)
        int8 = quantize.quantize_qat(
            fp32,
            data.loader(with_preprocessing(train, settings), batch_size=16, shuffle_seed=settings["seed"]),
            engine,
            epochs=settings["epochs"],
            lr=settings["lr"],
            granularity=settings["granularity"],
            freeze_bn_epoch=settings["freeze_bn_epoch"],
            freeze_observers_epoch=settings["freeze_observers_epoch"],
            arch=settings["arch"],
            teacher=fp32 if settings["qat_loss"] == "distill" else None,
        )
        skipped = data.skipped_count(train)
        training = {
            "source": source,
            "images": len(train) - skipped,
            "skipped_unreadable": skipped,
            "epochs": settings["epochs"],
            "lr": settings["lr"],
            "loss": "distillation from the float model" if settings["qat_loss"] == "distill" else "cross-entropy",
            "freeze_bn_epoch": settings["freeze_bn_epoch"],
            "freeze_observers_epoch": settings["freeze_observers_epoch"],
        }
        print(
            f"QAT: {settings['granularity']} weights, {settings['epochs']} epoch(s) on {training['images']} "
            f"photos from {source}, lr {settings['lr']}, {training['loss']}"
        )
        return int8, {
            "granularity": settings["granularity"],
            "observer": "moving-average min/max (fake quantization)",
            "calibration": None,
            "training": training,
        }
    batches, source = calibration_batches(settings, calibration)
    int8 = quantize.quantize_static(
        fp32,
        batches,
        engine,
        settings["granularity"],
        settings["observer"],
        arch=settings["arch"],
        float_layers=settings["keep_float"],
    )
    skipped = data.skipped_count(calibration) if calibration is not None else 0
    used = (len(calibration) if calibration is not None else settings["calib_images"] or 16) - skipped
    print(
        f"static quantization: {settings['granularity']} weights, {settings['observer']} observer, "
        f"calibrated on {used} images from {source}"
        + (f" ({skipped} unreadable skipped)" if skipped else "")
        + (f"; in float: {', '.join(settings['keep_float'])}" if settings["keep_float"] else "")
    )
    facts = {
        "granularity": settings["granularity"],
        "observer": settings["observer"],
        "calibration": {"source": source, "images": used, "skipped_unreadable": skipped},
    }
    if settings["keep_float"]:  # the grader checks these layers are the float ones in the file
        facts["keep_float"] = list(settings["keep_float"])
    return int8, facts


def quantize_with_pt2e(
    fp32: torch.nn.Module, settings: dict, engine: str, calibration: Dataset | None, sidecar: dict
) -> dict:
    """PT2E: torch.export, the target's quantizer, calibration, convert; saved as FILE.pt2, or with --format pte
    (the XNNPACK quantizer) lowered ahead of time to ExecuTorch's XNNPACK and saved as FILE.pte; the sidecar."""
    lowered = settings["format"] == "pte"
    target = "arm" if lowered else pt2e.target_for(engine)
    pt2e.quantizer_for(target, settings["granularity"])  # fail before the photos load: torchao missing, ...
    program = pt2e.export(fp32, size)  # ... or a model torch.export cannot capture
    batches, source = calibration_batches(settings, calibration)
    if lowered:
        from quantlab import executorch_runtime

        buffer, facts = executorch_runtime.quantize_to_pte(program, batches, size, settings["granularity"])
    else:
        program, facts = pt2e.quantize(program, batches, target, size, settings["granularity"])
    skipped = data.skipped_count(calibration) if calibration is not None else 0
    print(
        f"PT2E static quantization for {'ExecuTorch' if lowered else target}: {facts['quantizer']}; calibrated on "
        f"{facts['calibration_images']} images from {source}" + (f" ({skipped} unreadable skipped)" if skipped else "")
    )
    del sidecar["engine"]  # the quantizer picks the int8 kernels: inductor's (x86) or XNNPACK's (ARM, ExecuTorch)
    sidecar.update(
        runtime="executorch" if lowered else "torch.export",
        target=facts["target"],
        quantizer=facts["quantizer"],
        torchao=facts["torchao"],
        granularity=facts["granularity"],
        observer="histogram",  # both quantizers' activation observer
        calibration={"source": source, "images": facts["calibration_images"], "skipped_unreadable": skipped},
    )
    if not lowered:
        return pt2e.save(program, settings["output"], sidecar)
    print(f"lowered to XNNPACK in {facts['lower_s']} s (ExecuTorch's ahead-of-time compile, done once per file)")
    if facts["outside_xnnpack"]:
        print(f"note: outside XNNPACK (ExecuTorch's slower portable kernels): {', '.join(facts['outside_xnnpack'])}")
    sidecar.update(lower_s=facts["lower_s"], outside_xnnpack=facts["outside_xnnpack"])
    return executorch_runtime.save_pte(buffer, settings["output"], sidecar)


def write_onnx(fp32: torch.nn.Module | Path, settings: dict, calibration: Dataset | None, partial: Path) -> dict:
    """Export to ONNX (or take your own float ONNX file) and quantize it with ONNX Runtime into ``partial``;
    the sidecar's facts."""
    from quantlab import onnx_tools

    with tempfile.TemporaryDirectory(prefix="quantlab-") as folder:
        if isinstance(fp32, Path):  # your own ONNX file, its input named as the kit's calibration feeds it
            fp32_onnx = user_model.with_input_named(fp32, onnx_tools.INPUT_NAME, Path(folder))
        else:
            fp32_onnx = onnx_tools.export_onnx(fp32, Path(folder) / "fp32.onnx", size)
        if settings["method"] == "dynamic":
            print("ONNX Runtime dynamic quantization: int8 weights, activations quantized at run time")
            onnx_tools.quantize_onnx_dynamic(fp32_onnx, partial)
            return {**onnx_tools.sidecar_fields(partial), "granularity": None, "observer": None, "calibration": None}
        batches, source = calibration_batches(settings, calibration)
        # ONNX Runtime's histogram-based calibrator that matches PyTorch's HistogramObserver best
        method = "minmax" if settings["observer"] == "minmax" else "percentile"
        onnx_tools.quantize_onnx_static(
            fp32_onnx, partial, batches, per_channel=settings["granularity"] == "per_channel", calibrate_method=method
        )
    recorded = onnx_tools.read_metadata(partial)
    used = int(recorded.get("calibration_images", 0))
    print(
        f"ONNX Runtime static quantization (QDQ): {settings['granularity']} weights, {method} calibration "
        f"on {used} images from {source}"
    )
    print(
        f"number format: {recorded.get('activation_type')} activations, {recorded.get('weight_type')} weights "
        f"({recorded.get('format_reason')})"
    )
    return {
        **onnx_tools.sidecar_fields(partial),
        "granularity": settings["granularity"],
        "observer": method,
        "calibration": {
            "source": source,
            "images": used,
            "skipped_unreadable": data.skipped_count(calibration) if calibration is not None else 0,
        },
    }


def evaluate(name: str, model: Callable, evaluation: Dataset, settings: dict) -> dict:
    result = bench.evaluate(model, data.loader(with_preprocessing(evaluation, settings), batch_size=32))
    print(f"{name}: top-1 {result['top1']:.1f} %, top-5 {result['top5']:.1f} % on {result['images']} images")
    return result


def float_model(settings: dict) -> torch.nn.Module | Path:
    """The model to quantize: your own ONNX file (ONNX Runtime takes the file), your own PyTorch model (its file
    runs here, as with python), or a torchvision classifier."""
    model = str(settings["model"])
    if Path(model).suffix.lower() in vocab.ONNX_SUFFIXES:
        facts = user_model.check_onnx_classifier(Path(model), size)
        print(
            f"{model}: float ONNX classifier, input '{facts['input_name']}' {facts['input_shape']}, "
            f"{facts['classes']} classes"
        )
        return Path(model)
    if user_model.is_user_model_spec(model):
        fp32 = user_model.build_user_model(model, settings["weights"])
        print(
            f"{model}: {type(fp32).__name__}, {sum(p.numel() for p in fp32.parameters()):,} parameters, "
            f"{user_model.output_classes(fp32, size)} classes"
        )
        return fp32
    return load_fp32(model, settings["arch"])


def first_sidecar(
    settings: dict, engine: str, fp32: torch.nn.Module | Path, declared: preprocess.Preprocessing = preprocess.IMAGENET
) -> dict:
    """What the sidecar says before quantizing: the settings, the preprocessing when it is not the kit's."""
    sidecar = models.make_sidecar(
        settings["method"], settings["format"], engine, str(settings["model"]), settings["arch"], settings["seed"], size
    )
    if declared != preprocess.IMAGENET:  # benchmark.py, mobile_net.py and the grader read it back
        sidecar["preprocessing"] = declared.as_dict()
    if settings["rescale_scale"] or settings["rescale_offset"] or settings["color_mode"] != "rgb":
        sidecar["preprocessing"] = {
            "scale": settings["rescale_scale"],
            "offset": settings["rescale_offset"],
            "color_mode": settings["color_mode"],
        }
    if not isinstance(fp32, torch.nn.Module) or user_model.is_user_model_spec(str(settings["model"])):
        sidecar.update(arch=None, weights=settings["weights"])  # not a torchvision architecture
    return sidecar


def quantize_and_save(
    fp32: torch.nn.Module | Path, settings: dict, engine: str, calibration: Dataset | None, sidecar: dict
) -> dict:
    """Quantize in the --format asked for and write the file and its sidecar (atomically); the sidecar."""
    output = settings["output"]
    if settings["format"] == "onnx":
        del sidecar["engine"]  # ONNX Runtime has its own int8 kernels: no PyTorch engine to pick
        sidecar["runtime"] = "onnxruntime"
        return models.save_with_sidecar(
            output, lambda partial: write_onnx(fp32, settings, calibration, partial), sidecar
        )
    if settings["format"] == "tflite":  # LiteRT: litert-torch converts, its PT2E quantizer calibrates
        from quantlab import litert

        del sidecar["engine"]  # LiteRT runs its own kernels (XNNPACK): no PyTorch engine to pick
        batches, source = calibration_batches(settings, calibration)
        sidecar.update(runtime="litert", calibration={"source": source})
        sidecar = litert.save_tflite(fp32, output, batches, size, settings["granularity"], sidecar)
        print(f"LiteRT: {sidecar['quantizer']}; calibrated on {sidecar['calibration']['images']} images from {source}")
        print(f"wrote the float model converted the same way: {litert.fp32_companion(output)}")
        return sidecar
    if settings["format"] in ("pt2", "pte"):
        return quantize_with_pt2e(fp32, settings, engine, calibration, sidecar)
    int8, facts = quantize_torch(fp32, settings, engine, calibration)
    sidecar.update(facts)
    return models.save_torchscript(int8, output, sidecar)


def print_sizes(fp32: torch.nn.Module | Path, settings: dict, sidecar: dict) -> None:
    """fp32 against int8 on disk; for dynamic quantization, how little of a CNN it quantizes."""
    fp32_mb = user_model.onnx_size_mb(fp32) if isinstance(fp32, Path) else models.serialized_size_mb(fp32)
    int8_mb = sidecar["size_bytes"] / 1e6
    print(
        f"size: fp32 {fp32_mb:.2f} MB ({'ONNX file' if isinstance(fp32, Path) else 'state dict'}) -> int8 "
        f"{int8_mb:.2f} MB ({settings['format']} file), {fp32_mb / int8_mb:.1f}x smaller"
    )
    if settings["method"] == "dynamic" and isinstance(fp32, torch.nn.Module):
        linear = sum(
            p.numel() for m in fp32.modules() if isinstance(m, (torch.nn.Linear, torch.nn.LSTM)) for p in m.parameters()
        )
        total = sum(p.numel() for p in fp32.parameters())
        print(
            f"note: only the Linear/LSTM layers are quantized ({100 * linear / total:.0f}% of the parameters); "
            "the convolutions stay fp32, so a CNN shrinks little and runs at fp32 speed; "
            "--method static quantizes them too"
        )
    print(
        f"wrote {settings['output']} ({settings['format']}, {int8_mb:.2f} MB) and {models.sidecar_path(settings['output'])}"
    )


def compare_latency(fp32: torch.nn.Module, int8_model: Callable, settings: dict, engine: str, threads: int) -> None:
    """The chains' benchmark step: fp32 TorchScript against the int8 file, batch 1."""
    fp32_latency = bench.measure_latency(models.script(fp32), size, settings["runs"], settings["warmup"])
    engines.set_engine(engine)
    int8_latency = bench.measure_latency(int8_model, size, settings["runs"], settings["warmup"])
    print(
        f"latency (batch 1, {threads} threads, median of {settings['runs']}): fp32 TorchScript "
        f"{fp32_latency['median_ms']:.2f} ms, int8 {int8_latency['median_ms']:.2f} ms "
        f"({int8_latency['median_ms'] / fp32_latency['median_ms']:.2f}x the fp32 time)"
    )
    for name, latency in (("fp32", fp32_latency), ("int8", int8_latency)):
        if latency["unstable"]:
            print(f"! UNSTABLE {name} latency: {latency['unstable']}")


def main(argv: list[str] | None = None) -> int:
    settings = resolve_settings(parse_args(argv))
    check_settings(settings)
    steps = OPERATION_MODES[settings["operation_mode"]]
    threads = engines.set_threads(settings["threads"])
    torch.manual_seed(settings["seed"])
    engine, why = engines.resolve_engine(settings["engine"])
    print(f"engine: {engine} ({why}); threads: {threads}")
    if settings["format"] in ("onnx", "tflite", "pte"):
        runtime = {"onnx": "ONNX Runtime", "tflite": "LiteRT (XNNPACK)", "pte": "ExecuTorch (XNNPACK)"}[
            settings["format"]
        ]
        print(f"note: {runtime} runs the file with its own int8 kernels; --engine applies to PyTorch only")
    fp32 = float_model(settings)
    declared = declared_preprocessing(settings)
    calibration, evaluation = data_subsets(settings, declared)
    if "evaluate" in steps and (evaluation is None or len(evaluation) == 0):
        raise KitError(
            f"operation mode {settings['operation_mode']} evaluates: pass --eval-data DIR "
            "(dataset.test_path), or --calib-data with photos left over after calibration"
        )
    if "evaluate" in steps:
        fp32_top1 = evaluate("fp32", fp32, evaluation, settings)["top1"]

    sidecar = quantize_and_save(fp32, settings, engine, calibration, first_sidecar(settings, engine, fp32, declared))
    print_sizes(fp32, settings, sidecar)
    # the file as it was written, loaded back as benchmark.py loads it (a .pt2 uncompiled: benchmark.py compiles it)
    int8_model = loading.load_any(settings["output"], engine, threads, input_size=size, check=False, compile=False)
    written = coverage.of_loaded(int8_model)  # which layers stayed in float, and how many MB of weights they hold
    if written is not None:
        print(coverage.format_coverage(written))
    if "evaluate" in steps:
        int8_top1 = evaluate("int8", int8_model.model, evaluation, settings)["top1"]
        print(f"top-1 change: {int8_top1 - fp32_top1:+.1f} points (fp32 {fp32_top1:.1f} % -> int8 {int8_top1:.1f} %)")
    if "benchmark" in steps:
        compare_latency(fp32, int8_model.model, settings, engine, threads)
    peak = memory.peak_rss_mb()
    if peak is not None:  # ONNX Runtime's calibration used to take 13.7 GB here: the figure is worth a line
        print(f"peak resident memory of this run: {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    run_cli(main)
