"""Build MobileNetV2 (fp32 or int8) the way the labs do, and save quantized models with their sidecars.

Default path for students: torchvision's weights API (downloads once, then
cached). Offline: ``--weights PATH`` (a state dict). Saving a quantized model
with its sidecar (``save_torchscript``, ``save_with_sidecar``) is here too;
loading a model file, of any kind, is ``quantlab.loading.load_any``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from quantlab.assets import ASSETS_ENV, FLOAT_WEIGHTS, INT8_WEIGHTS, asset_path
from quantlab.errors import KitError, first_line
from quantlab.files import file_size_mb, partial_path, sha256_of


def pretrained_state_dict(weights: torchvision.models.WeightsEnum, offline_asset: str | None) -> tuple[dict, str]:
    """torchvision's pretrained weights through its weights API (downloaded once, then cached).

    Without internet, fall back to the offline copy under $QUANTLAB_ASSETS when it
    exists (CI and offline classrooms); otherwise one clear error.
    """
    try:
        return weights.get_state_dict(progress=False, check_hash=True), f"torchvision {weights}"
    except Exception as error:  # URLError, socket errors, hash mismatch, ...
        reason = first_line(error, with_type=True)
    offline = asset_path(offline_asset) if offline_asset else None
    if offline is not None:
        print(f"note: could not download {weights} ({reason[:80]}); using the offline copy {offline}")
        return load_state_dict_file(offline), str(offline)
    raise KitError(
        f"could not download torchvision's pretrained weights {weights} ({reason[:120]}); connect to the "
        f"internet once (they are cached afterwards) or pass a saved state dict (--weights PATH in "
        f"mobile_net.py, --model PATH in the other tools)"
        + (f", or set {ASSETS_ENV} to a folder holding {offline_asset}" if offline_asset else "")
    )


def load_state_dict_file(path: str | Path) -> dict:
    """Load a state dict safely (``weights_only=True``: no code runs from the file)."""
    path = Path(path)
    if not path.is_file():
        raise KitError(f"weights file {path} does not exist; pass the path of a saved state dict")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise KitError(
            f"{path} is not a PyTorch state dict ({type(error).__name__}); save one with "
            "torch.save(model.state_dict(), PATH)"
        ) from None
    if isinstance(state_dict, dict) and "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]  # a training checkpoint
    if not isinstance(state_dict, dict) or not state_dict:
        raise KitError(f"{path} holds a {type(state_dict).__name__}, not a state dict of tensors")
    return state_dict


def is_int8_state_dict(state_dict: dict) -> bool:
    return any(key.endswith(("zero_point", "_packed_params")) for key in state_dict)


def mobilenet_v2_weights(model: nn.Module, path: str | Path | None = None) -> dict:
    """Weights for ``model`` (see ``mobilenet_v2_weights_and_source``)."""
    return mobilenet_v2_weights_and_source(model, path)[0]


def mobilenet_v2_weights_and_source(model: nn.Module, path: str | Path | None = None) -> tuple[dict, str]:
    """Weights for ``model`` (torchvision's fp32 or int8 MobileNetV2) and where they came from: the state dict at
    ``path``, else torchvision's pretrained ones (downloaded once, then cached; the offline copy when there is no internet).

    They are checked against ``model`` first: ``model.load_state_dict`` then cannot fail halfway, and a
    KitError says what does not fit (fp32 weights for the int8 model, another architecture's weights).
    """
    from torchvision.models.quantization import MobileNet_V2_QuantizedWeights

    expected = model.state_dict()
    want_int8 = is_int8_state_dict(expected)
    if path is not None:
        state_dict, source = load_state_dict_file(path), str(path)
    elif want_int8:
        state_dict, source = pretrained_state_dict(MobileNet_V2_QuantizedWeights.IMAGENET1K_QNNPACK_V1, INT8_WEIGHTS)
    else:
        state_dict, source = pretrained_state_dict(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1, FLOAT_WEIGHTS)
    what = "int8 MobileNetV2" if want_int8 else "fp32 MobileNetV2"
    if is_int8_state_dict(state_dict) != want_int8:
        hint = "drop --quantize (these are fp32 weights)" if want_int8 else "add --quantize (these are int8 weights)"
        raise KitError(f"{source} does not fit {what}; {hint}")
    unfit = sorted(set(expected) ^ set(state_dict)) or [
        key
        for key, value in state_dict.items()
        if isinstance(value, torch.Tensor)
        and isinstance(expected[key], torch.Tensor)
        and value.shape != expected[key].shape
    ]
    if unfit:
        raise KitError(f"{source} does not fit {what} (first mismatch: {unfit[0][:80]}); pass MobileNetV2 weights")
    return state_dict, source


def mobilenet_v2_fp32(weights_path: str | Path | None = None) -> nn.Module:
    """Float MobileNetV2: torchvision's IMAGENET1K_V1 weights, or a state dict file.

    ``model.weights_source`` records which (``describe_weights`` says what that means for the numbers).
    """
    model = torchvision.models.mobilenet_v2(weights=None)
    state_dict, source = mobilenet_v2_weights_and_source(model, weights_path)
    model.load_state_dict(state_dict)
    model.weights_source = source
    return model.eval()


def holds_offline_copy(model: nn.Module) -> bool:
    """Whether ``model`` was loaded from the kit's offline float weights (derived from the int8 model)."""
    source, offline = getattr(model, "weights_source", None), asset_path(FLOAT_WEIGHTS)
    return source is not None and offline is not None and Path(source).resolve() == offline.resolve()


def describe_weights(model: nn.Module) -> str:
    """One line for a notebook: which float weights ``model`` holds, and what that means for its numbers."""
    source = getattr(model, "weights_source", None)
    if source is None:
        return "weights: not loaded by models.mobilenet_v2_fp32 (source unknown)"
    if source.startswith("torchvision "):
        return (
            f"weights: {source.removeprefix('torchvision ')}, torchvision's own float weights (downloaded): "
            "the quantization losses you measure are the ones the course discusses"
        )
    if holds_offline_copy(model):
        return (
            f"weights: the kit's offline copy {source}, derived from torchvision's int8 model: they already lie "
            "on an int8 grid, so post-training quantization loses less here than with torchvision's downloaded "
            "float weights (Colab)"
        )
    return f"weights: {source} (a state dict you passed)"


def mobilenet_v2_int8(engine: str, weights_path: str | Path | None = None) -> nn.Module:
    """Pretrained int8 MobileNetV2 (torchvision's QNNPACK weights), packed for ``engine``.

    torchvision builds the quantized architecture, then the weights are loaded
    with ``engine`` active: loading is what packs the int8 weights for an engine.
    """
    from torchvision.models.quantization import mobilenet_v2

    model = mobilenet_v2(weights=None, quantize=True)  # builds with qnnpack, as the weights were made
    weights = mobilenet_v2_weights(model, weights_path)
    torch.backends.quantized.engine = engine  # loading packs the int8 weights for the active engine
    model.load_state_dict(weights)
    return model.eval()


AUX_HEADS = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}  # training-only classifiers


def torchvision_model(arch: str, state_dict: dict, source: str, quantizable: bool = False) -> nn.Module:
    """torchvision's float ``arch`` holding ``state_dict``, in eval mode: the kit's one way to load a state dict
    into a torchvision architecture. ``quantizable``: its eager-mode quantizable version (QuantStub,
    ``fuse_model``) from ``torchvision.models.quantization``.

    GoogLeNet and Inception v3 are built without their auxiliary classifiers, whose weights are dropped.
    """
    extra = {"aux_logits": False, "init_weights": False} if arch in AUX_HEADS else {}
    try:
        if quantizable:
            from torchvision.models import quantization

            model = getattr(quantization, arch)(weights=None, quantize=False, **extra)
        else:
            model = torchvision.models.get_model(arch, weights=None, **extra)
    except (ValueError, AttributeError):
        raise KitError(f"--arch {arch} is not a torchvision model name (e.g. mobilenet_v2, resnet18)") from None
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(AUX_HEADS.get(arch, ()))}
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise KitError(
            f"{source} does not fit {arch} ({first_line(error, limit=100)}); pass --arch with the model's architecture"
        ) from None
    return model.eval()


def script(model: nn.Module) -> torch.jit.ScriptModule:
    """TorchScript + freeze: removes Python overhead and folds constants."""
    scripted = torch.jit.script(model.eval())
    return torch.jit.freeze(scripted)


def sidecar_path(model_path: str | Path) -> Path:
    """The JSON written beside a model file by quantize_model.py."""
    return Path(model_path).with_suffix(".json")


def read_sidecar(model_path: str | Path) -> dict:
    """The model's sidecar JSON object, or {} when there is none, it is unreadable or it is not an object."""
    path = sidecar_path(model_path)
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return sidecar if isinstance(sidecar, dict) else {}


class OnnxModel:
    """An ONNX Runtime session that takes and returns torch tensors, like a module."""

    def __init__(self, path: Path, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise KitError("onnxruntime is not installed; pip install onnxruntime") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:
            said = " ".join(str(error).split())[:300] or type(error).__name__  # ONNX Runtime's own words, one line
            if "NOT_IMPLEMENTED" in said:
                raise KitError(
                    f"onnxruntime {ort.__version__} has no kernel for an operator of {path}: {said}; quantize it "
                    "another way (quantize_model.py --format onnx: static QDQ, or --method dynamic, uint8 weights)"
                ) from None
            raise KitError(
                f"onnxruntime {ort.__version__} cannot load {path}: {said}; "
                "export an ONNX model with quantize_model.py --format onnx"
            ) from None
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_shape = list(model_input.shape)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        expected = self.input_shape
        if len(expected) != batch.dim() or any(
            isinstance(want, int) and want != got for want, got in zip(expected, batch.shape)
        ):
            raise KitError(
                f"the ONNX model expects input {expected} but got {list(batch.shape)}; "
                "match --size to the size it was exported with"
            )
        (logits,) = self.session.run(None, {self.input_name: batch.numpy()})[:1]
        return torch.from_numpy(logits)


def make_sidecar(
    method: str,
    format: str,
    engine: str | None,
    model: str,
    arch: str | None,
    seed: int,
    input_size: int,
    **facts: object,
) -> dict:
    """The JSON written beside a model file (``save_with_sidecar`` adds its sha256 and size).

    ``engine`` None: no PyTorch engine to pick (ONNX Runtime, PT2E); ``facts``: how it was made
    (granularity, observer, calibration, training, ...).
    """
    sidecar = {
        "method": method,
        "format": format,
        "engine": engine,
        "model": model,
        "arch": arch,
        "seed": seed,
        "input_size": [1, 3, input_size, input_size],
        "torch": torch.__version__,
        **facts,
    }
    if engine is None:
        del sidecar["engine"]
    return sidecar


def recipe(sidecar: dict) -> str | None:
    """How a model was quantized, in a few words from its sidecar (benchmark tables show it); None when unsaid.

    e.g. "per_channel, histogram, 100 photos" for static PTQ, "per_tensor, 8 epochs, distillation from ..." for QAT.
    """
    words = [sidecar[key] for key in ("granularity", "observer") if isinstance(sidecar.get(key), str)]
    calibration, training = sidecar.get("calibration"), sidecar.get("training")
    if isinstance(training, dict) and isinstance(training.get("epochs"), (int, float)):
        words.append(f"{training['epochs']:g} epoch{'' if training['epochs'] == 1 else 's'}")
        if isinstance(training.get("loss"), str):
            words.append(training["loss"])
    elif isinstance(calibration, dict) and isinstance(calibration.get("images"), int):
        words.append(f"{calibration['images']} photos")
    return ", ".join(str(word)[:60] for word in words) or None


def save_with_sidecar(output: Path, write_model: Callable[[Path], dict], sidecar: dict) -> dict:
    """Write a model file and its JSON sidecar atomically: partial files never stay behind.

    ``write_model(path)`` writes the model to ``path`` and returns facts to add to
    the sidecar; the sha256 and size of the written file are added too.
    """
    output = Path(output)
    json_path = sidecar_path(output)
    partial_model, partial_json = partial_path(output), partial_path(json_path)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        sidecar.update(write_model(partial_model))
        sidecar.update(sha256=sha256_of(partial_model), size_bytes=partial_model.stat().st_size)
        partial_json.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
        os.replace(partial_model, output)
        os.replace(partial_json, json_path)
        from quantlab import provenance  # written by the kit here: benchmark.py runs it without --trust

        provenance.remember(output, sidecar["sha256"])
    except (OSError, RuntimeError) as error:  # torch.jit.save raises RuntimeError when it cannot write
        output.unlink(missing_ok=True)  # a model without its sidecar would load on the wrong engine
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise KitError(f"could not write {output} ({reason}); pick a writable --output") from None
    finally:
        for partial in (partial_model, partial_json):
            with contextlib.suppress(OSError):  # its folder may not exist (a file where a folder should be)
                partial.unlink(missing_ok=True)
    return sidecar


def save_torchscript(model: nn.Module, output: Path, sidecar: dict) -> dict:
    """Save ``model`` as frozen TorchScript (loads with torch.jit.load alone) plus its sidecar; return the sidecar.

    Set the engine the model was quantized for first: scripting packs int8 weights for it.
    """

    def write(path: Path) -> dict:
        torch.jit.save(script(model), str(path))
        return {}

    return save_with_sidecar(output, write, sidecar)


def serialized_size_mb(model: nn.Module) -> float:
    """Size of a model's state dict when saved, in MB: what it costs on disk."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pth"
        torch.save(model.state_dict(), path)
        return file_size_mb(path)
