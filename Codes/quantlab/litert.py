"""LiteRT (formerly TensorFlow Lite): run a ``.tflite`` file like the kit's other models, and make one from PyTorch.

Two packages, kept apart on purpose:

* the runtime, ``ai-edge-litert`` (about 60 MB, a wheel for the Pi too; requirements-pi.txt pins it):
  ``LiteRTModel`` loads a ``.tflite`` file in LiteRT's interpreter (``threads`` threads, the XNNPACK
  delegate LiteRT applies by default) and takes and returns torch tensors, like ``models.OnnxModel``;
* the converter, ``litert-torch`` (heavy: it pulls in jax and transformers and pins its own typing
  extensions; ``pip install 'quantlab[litert]'``, best in a virtual environment of its own):
  ``convert_fp32`` and ``convert_int8`` turn a float PyTorch model into a ``.tflite`` file, int8 through
  PT2E (torch.export, LiteRT's PT2E quantizer, calibration on the kit's photos, convert).

What int8 means in a LiteRT file: weights int8, symmetric (per channel by default); activations int8 with a
zero point; and the file's input and output are int8 too. ``LiteRTModel`` quantizes each photo with the
input's scale and zero point and dequantizes the scores, so a student feeds it the same float tensors as
every other model. The layout stays NCHW at the file's input: the converter moves the computation to
LiteRT's NHWC and puts one TRANSPOSE at the front.

Example:
    from quantlab import litert
    model = litert.LiteRTModel(Path("mnv2_int8.tflite"), threads=4)
    scores = model(images)  # N x 3 x 224 x 224 float -> N x 1000 float
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from quantlab._quiet import native_stderr
from quantlab.errors import KitError

RUNTIME_PIN = "ai-edge-litert==2.3.0"  # the release requirements-pi.txt pins and tools/pi_check runs on the Pi 4/5
CONVERTER_PIN = "litert-torch==0.10.0"
RUNTIME_MISSING = f"LiteRT's runtime is not installed: pip install {RUNTIME_PIN} (it runs .tflite files)"
CONVERTER_MISSING = (
    f"writing .tflite needs LiteRT's converter, which is not installed: pip install {CONVERTER_PIN} "
    "torchao (or the kit's extra: pip install -e '.[litert]'); it pulls in jax and pins its own packages, "
    "so give it a virtual environment of its own"
)
TFLITE_IDENTIFIER = b"TFL3"  # bytes 4..8 of every LiteRT flatbuffer
_HARMLESS = ("Created TensorFlow Lite XNNPACK delegate", "Estimated count of arithmetic ops")


def require_runtime():
    """LiteRT's ``Interpreter`` class; a KitError saying what to install when the runtime is missing."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise KitError(RUNTIME_MISSING) from None
    return Interpreter


def runtime_version() -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("ai-edge-litert")
    except PackageNotFoundError:
        return None


@contextlib.contextmanager
def _native_output(said: list[str], echo: bool = True) -> Iterator[None]:
    """Collect what LiteRT's C++ writes to stderr inside the block into ``said`` (its errors arrive there, the
    exception only says "failed"); the delegate's "created" line is dropped, anything else is printed after."""
    lines: list[str] = []
    try:
        with native_stderr(lines):
            yield
    finally:
        said.extend(line.strip() for line in lines if line.strip())
        for line in lines if echo else ():
            if line.strip() and not any(text in line for text in _HARMLESS):
                print(line, file=sys.stderr)


def _first_problem(said: list[str], error: BaseException) -> str:
    """LiteRT's own reason for a failure, one line: the first ERROR line it printed, else the exception."""
    errors = [line.split("rror:", 1)[1].strip() for line in said if "ERROR:" in line or " error:" in line]
    text = errors[0] if errors else " ".join(str(error).split())
    return text[:240] or type(error).__name__


def _is_tflite(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(8)[4:8] == TFLITE_IDENTIFIER


class LiteRTModel:
    """A LiteRT interpreter (XNNPACK, ``threads`` threads) that takes and returns torch tensors, like a module.

    The file must take one image tensor of shape [1, 3, S, S] (float, or int8/uint8 with a scale and zero point)
    and return one score tensor; ``__call__`` feeds a batch one photo at a time (the interpreter's shapes are
    fixed; ``input_shape`` says batch 1, so the kit's evaluation does the same).
    """

    def __init__(self, path: Path, threads: int) -> None:
        path = Path(path)
        interpreter_class = require_runtime()
        if not path.is_file():
            raise KitError(f"model file {path} does not exist; make one with quantize_model.py --format tflite")
        if not _is_tflite(path):
            raise KitError(
                f"{path} is not a LiteRT (.tflite) model: its header lacks the 'TFL3' mark; "
                "write one with quantize_model.py --format tflite"
            )
        said: list[str] = []
        try:
            with _native_output(said):
                self.interpreter = interpreter_class(model_path=str(path), num_threads=threads)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            problem = _first_problem(said, error)
            if "unresolved custom op" in problem or "Didn't find op" in problem or "failed to prepare" in problem:
                raise KitError(
                    f"LiteRT {runtime_version()} cannot run {path}: {problem}; the file uses an operator this "
                    "runtime lacks: convert the model with builtin operators only (quantize_model.py --format tflite)"
                ) from None
            raise KitError(f"LiteRT {runtime_version()} cannot load {path}: {problem}") from None
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise KitError(
                f"{path} takes {len(inputs)} inputs and returns {len(outputs)} outputs; the kit measures image "
                "classifiers: one image tensor in, one score tensor out"
            )
        self.input, self.output = inputs[0], outputs[0]
        self.input_shape = [int(d) for d in self.input["shape"]]
        shape = self.input_shape
        if len(shape) == 4 and shape[0] == 1 and shape[3] == 3 and shape[1] != 3:
            raise KitError(
                f"{path} takes channels-last images {shape} (NHWC, as TensorFlow exports them); the kit feeds "
                "[1, 3, S, S] (NCHW), as litert-torch keeps PyTorch's layout at the input: convert the PyTorch model"
            )
        if len(shape) != 4 or shape[0] != 1 or shape[1] != 3 or shape[2] != shape[3]:
            raise KitError(f"{path} expects input {shape}; the kit feeds one image as [1, 3, S, S]")
        self.xnnpack = any(op["op_name"] == "DELEGATE" for op in self.interpreter._get_ops_details())
        self.int8 = any(np.dtype(t["dtype"]) in (np.int8, np.uint8) for t in self.interpreter.get_tensor_details())

    def _to_input(self, image: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self.input["dtype"])
        if dtype == np.float32:
            return image
        scale, zero_point = self.input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(image / scale) + zero_point, info.min, info.max).astype(dtype)

    def _from_output(self, scores: np.ndarray) -> np.ndarray:
        if np.dtype(self.output["dtype"]) == np.float32:
            return scores.copy()
        scale, zero_point = self.output["quantization"]
        return (scores.astype(np.float32) - zero_point) * scale

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        expected = self.input_shape[1:]
        if batch.dim() != 4 or list(batch.shape[1:]) != expected:
            raise KitError(
                f"the LiteRT model expects images {expected} but got {list(batch.shape)}; "
                "match --size to the size it was converted with"
            )
        rows = []
        for image in batch.detach().float().numpy():
            self.interpreter.set_tensor(self.input["index"], self._to_input(image[None]))
            self.interpreter.invoke()
            rows.append(self._from_output(self.interpreter.get_tensor(self.output["index"])))
        return torch.from_numpy(np.concatenate(rows))


def describe(model: LiteRTModel) -> str:
    """How the interpreter runs the file, for the user: int8 or float, XNNPACK or LiteRT's own kernels."""
    kernels = "XNNPACK delegate" if model.xnnpack else "LiteRT's builtin kernels (XNNPACK took no operator)"
    return f"{'int8' if model.int8 else 'float'} file, {kernels}"


def load_tflite(path: Path, threads: int, input_size: int = 224):
    """A .tflite file as ``loading.LoadedModel`` (benchmark.py): the model, its size, weights and how it was made."""
    from quantlab import files, loading, models

    model = LiteRTModel(path, threads)
    loading.require_input_size(path, model.input_shape, input_size)
    sidecar = models.read_sidecar(path)
    return loading.LoadedModel(
        name=path.name,
        model=model,
        runtime="litert",
        format="tflite",
        engine=None,
        path=str(path),
        size_mb=round(files.file_size_mb(path), 3),
        parameters=count_parameters(path),
        sha256=files.sha256_of(path),
        method=sidecar.get("method") or ("int8" if model.int8 else "fp32"),
        sidecar=sidecar,
        notes=[] if model.xnnpack else [f"note: {path.name}: {describe(model)}: expect it to run slowly"],
    )


# ---- facts about a file (benchmark reports) --------------------------------------------

_COUNTED_TYPES = {0: "float32", 1: "float16", 3: "uint8", 9: "int8"}  # TensorType values
_INT32 = 2
_WEIGHT_OPERATORS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}


def count_parameters(path: Path) -> int | None:
    """Weights and biases stored in a .tflite file: float and int8 constants, and the int32 biases of its
    convolutions and fully connected layers (shape and axis constants are not weights). None if unreadable."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        return None
    try:
        buffer = path.read_bytes()
        model = schema.Model.GetRootAs(buffer, 0)
        names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
        codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
        total = 0
        for s in range(model.SubgraphsLength()):
            graph = model.Subgraphs(s)
            biases = set()
            for o in range(graph.OperatorsLength()):
                operator = graph.Operators(o)
                code = codes[operator.OpcodeIndex()]
                builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
                if names.get(builtin) in _WEIGHT_OPERATORS and operator.InputsLength() > 2:
                    biases.add(operator.Inputs(2))
            for t in range(graph.TensorsLength()):
                tensor = graph.Tensors(t)
                stored = model.Buffers(tensor.Buffer()) if tensor.Buffer() > 0 else None
                if stored is None or (stored.DataLength() == 0 and stored.Size() == 0):
                    continue  # not a constant
                if tensor.Type() in _COUNTED_TYPES or (tensor.Type() == _INT32 and t in biases):
                    total += math.prod(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else 1
        return total or None
    except Exception:  # noqa: BLE001 - a damaged file: the interpreter loaded it, the count is optional
        return None


# ---- conversion (litert-torch) -------------------------------------------------------


def require_converter():
    """The ``litert_torch`` module; a KitError saying what to install when it is missing."""
    try:
        with _quiet_converter():  # its import logs TensorFlow-style notices (oneDNN, absl) to stderr
            import litert_torch
    except ImportError:
        raise KitError(CONVERTER_MISSING) from None
    return litert_torch


def check_converter() -> None:
    """A KitError at once (before any photo loads) when litert-torch is not installed; nothing is imported."""
    import importlib.util

    if importlib.util.find_spec("litert_torch") is None:
        raise KitError(CONVERTER_MISSING)


def converter_version() -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("litert-torch")
    except PackageNotFoundError:
        return None


def _example(input_size: int) -> tuple[torch.Tensor]:
    return (torch.randn(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0)),)


@contextlib.contextmanager
def _quiet_converter(said: list[str] | None = None) -> Iterator[None]:
    """litert-torch prints a progress line per pass (stdout), and it, its MLIR passes and absl log to stderr
    (warnings about internals a student cannot act on): all kept in ``said``, none printed; errors still come
    back as exceptions."""
    said = [] if said is None else said
    with (
        _native_output(said, echo=False),
        open(os.devnull, "w") as devnull,
        contextlib.redirect_stdout(devnull),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _export_file(edge_model, output: Path) -> None:
    with _quiet_converter():
        edge_model.export(str(output))


def _convert(module: nn.Module, input_size: int, **options):
    litert_torch = require_converter()
    said: list[str] = []
    try:
        with _quiet_converter(said):
            return litert_torch.convert(module, _example(input_size), **options)
    except KitError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever the converter refuses, one line says what
        raise KitError(
            f"litert-torch {converter_version()} cannot convert the model ({_first_problem(said, error)}); "
            "it needs a model torch.export can capture, made of operators LiteRT has"
        ) from None


def convert_fp32(model: nn.Module, output: Path, input_size: int = 224) -> dict:
    """The float model as a .tflite file (batch 1, NCHW input): the baseline to time int8 against."""
    edge_model = _convert(model.eval(), input_size)
    _export_file(edge_model, output)
    return {"converter": f"litert-torch {converter_version()}"}


def quantizer_for(granularity: str = "per_channel"):
    """(LiteRT's PT2E quantizer, a line saying what it makes): int8 symmetric weights, histogram-observed
    int8 activations."""
    require_converter()
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    config = get_symmetric_quantization_config(is_per_channel=granularity == "per_channel")
    return PT2EQuantizer().set_global(config), (
        f"litert-torch's PT2EQuantizer: {granularity} symmetric int8 weights, int8 activations (histogram)"
    )


def convert_int8(
    model: nn.Module,
    calibration_batches: Iterable,
    output: Path,
    input_size: int = 224,
    granularity: str = "per_channel",
) -> dict:
    """Static int8: torch.export, LiteRT's PT2E quantizer, calibrate on ``calibration_batches``, convert_pt2e,
    then litert-torch writes the .tflite file. Returns the facts for the sidecar."""
    from quantlab import pt2e
    from quantlab.quantize import calibrate

    pt2e.require_torchao()
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer, described = quantizer_for(granularity)
    program = pt2e.export(model, input_size)  # batch axis dynamic: calibration runs whole batches
    with pt2e.quiet_torch():
        prepared = prepare_pt2e(program.module(), quantizer)
    images = calibrate(prepared, calibration_batches, progress=False)
    with pt2e.quiet_torch():
        # the quantize/dequantize pairs stay in the graph: litert-torch turns them into int8 tensors and kernels
        converted = convert_pt2e(prepared, fold_quantize=False)
        move_exported_model_to_eval(converted)
    from litert_torch.quantize.quant_config import QuantConfig

    edge_model = _convert(converted, input_size, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    _export_file(edge_model, output)
    return {
        "converter": f"litert-torch {converter_version()}",
        "quantizer": described,
        "granularity": granularity,
        "observer": "histogram",
        "calibration_images": images,
    }


# ---- a small model without the converter (tests, tools/pi_check) -----------------------


def write_mean_classifier(
    path: Path,
    classes: int = 1000,
    input_size: int = 224,
    custom_op: str | None = None,
    int8: dict[str, tuple[float, int]] | None = None,
) -> Path:
    """A .tflite classifier written with LiteRT's own flatbuffer schema, no converter needed: the mean of each
    colour channel, then a fully connected layer to ``classes`` scores (weight[k, c] = (c + 1) * (k % 7 - 3) / 10,
    bias 0, so that ``mean_classifier_scores`` can check what a runtime computes).

    ``custom_op`` NAME: the layer is a custom operator of that name instead, which no runtime has (the
    "operator missing" case). ``int8``: an int8 file as LiteRT's quantizer writes them, every tensor int8 with
    the (scale, zero point) given for "image", "channel_means" and "scores", the weight symmetric (zero point 0,
    one scale). Written for tests, notebook 6 and tools/pi_check, which runs it on the emulated Pi.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    weight = _mean_classifier_weight(classes)
    model = schema.ModelT()
    model.version = 3
    model.description = "quantlab mean classifier"
    mean_code, layer_code = schema.OperatorCodeT(), schema.OperatorCodeT()
    mean_code.builtinCode = mean_code.deprecatedBuiltinCode = schema.BuiltinOperator.MEAN
    if custom_op is None:
        layer_code.builtinCode = layer_code.deprecatedBuiltinCode = schema.BuiltinOperator.FULLY_CONNECTED
    else:
        layer_code.builtinCode = layer_code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
        layer_code.customCode = custom_op
    model.operatorCodes = [mean_code, layer_code]

    def buffer(data: np.ndarray | None) -> schema.BufferT:
        stored = schema.BufferT()
        if data is not None:
            stored.data = np.frombuffer(data.tobytes(), dtype=np.uint8)
        return stored

    weight_scale = float(np.abs(weight).max()) / 127
    if int8 is not None:  # symmetric: zero point 0, one scale for the whole weight
        weight = np.clip(np.round(weight / weight_scale), -127, 127).astype(np.int8)
    model.buffers = [
        buffer(None),
        buffer(None),
        buffer(np.array([2, 3], dtype=np.int32)),
        buffer(None),
        buffer(weight),
        buffer(None),
    ]

    def tensor(name: str, shape: list[int], kind: int, stored: int) -> schema.TensorT:
        made = schema.TensorT()
        made.name, made.shape, made.type, made.buffer = name, shape, kind, stored
        if int8 is not None and kind == schema.TensorType.INT8:
            scale, zero_point = (weight_scale, 0) if name == "weight" else int8[name]
            made.quantization = schema.QuantizationParametersT()
            made.quantization.scale, made.quantization.zeroPoint = [float(scale)], [int(zero_point)]
        return made

    values = schema.TensorType.FLOAT32 if int8 is None else schema.TensorType.INT8
    int32 = schema.TensorType.INT32
    graph = schema.SubGraphT()
    graph.tensors = [
        tensor("image", [1, 3, input_size, input_size], values, 1),
        tensor("axes", [2], int32, 2),
        tensor("channel_means", [1, 3], values, 3),
        tensor("weight", [classes, 3], values, 4),
        tensor("scores", [1, classes], values, 5),
    ]
    graph.inputs, graph.outputs = [0], [4]
    mean = schema.OperatorT()
    mean.opcodeIndex, mean.inputs, mean.outputs = 0, [0, 1], [2]
    mean.builtinOptionsType = schema.BuiltinOptions.ReducerOptions
    mean.builtinOptions = schema.ReducerOptionsT()
    mean.builtinOptions.keepDims = False
    layer = schema.OperatorT()
    layer.opcodeIndex, layer.inputs, layer.outputs = 1, [2, 3, -1], [4]
    if custom_op is None:
        layer.builtinOptionsType = schema.BuiltinOptions.FullyConnectedOptions
        layer.builtinOptions = schema.FullyConnectedOptionsT()
    graph.operators = [mean, layer]
    graph.name = "main"
    model.subgraphs = [graph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    path = Path(path)
    path.write_bytes(bytes(builder.Output()))
    return path


def _mean_classifier_weight(classes: int) -> np.ndarray:
    rows = (np.arange(classes) % 7 - 3).astype(np.float32)[:, None]
    return (rows * np.arange(1, 4, dtype=np.float32)[None, :] / 10).astype(np.float32)


def mean_classifier_scores(images: np.ndarray) -> np.ndarray:
    """What ``write_mean_classifier``'s model must return for N x 3 x S x S ``images`` (1000 classes)."""
    return images.mean(axis=(2, 3)) @ _mean_classifier_weight(1000).T


def fp32_companion(output: Path) -> Path:
    """Where ``save_tflite`` writes the float model beside the int8 one: X.tflite -> X_fp32.tflite."""
    return output.with_name(f"{output.stem}_fp32{output.suffix}")


def save_tflite(
    model: nn.Module, output: Path, calibration_batches: Iterable, input_size: int, granularity: str, sidecar: dict
) -> dict:
    """quantize_model.py --format tflite: the int8 file ``output`` and the float model converted the same way
    (``fp32_companion``: the baseline to time it against on the Pi), each with its sidecar. Returns the int8
    file's sidecar."""
    from quantlab import models

    require_converter()  # before the photos load: one line when the converter is missing
    pt2e_import_check()
    float_sidecar = {**sidecar, "method": "fp32"}
    models.save_with_sidecar(fp32_companion(output), lambda path: convert_fp32(model, path, input_size), float_sidecar)

    def write(path: Path) -> dict:
        facts = convert_int8(model, calibration_batches, path, input_size, granularity)
        used = facts.pop("calibration_images")
        return {**facts, "calibration": {"images": used, **sidecar.get("calibration", {})}}

    return models.save_with_sidecar(output, write, sidecar)


def pt2e_import_check() -> None:
    """torchao fits this torch (quantlab.pt2e decides from the version table, before importing it)."""
    from quantlab import pt2e

    pt2e.require_torchao()
