"""Your own PyTorch model: ``my_net.py:build`` names a Python file and the function that builds it.

``build_user_model("my_net.py:build", "my_net.pth")`` imports the file by its
path, calls ``build()``, checks that it returned an ``nn.Module`` and loads the
state dict (``weights_only=True``: no code runs from the weights file).

Importing the file runs its Python code, as ``python my_net.py`` would: right
for a student's own tools, never for grading. ``grade.py`` does not call this. To measure or run such a
model, ``quantlab.loading.load_any("my_net.py:build@my_net.pth")``; ``quantize_model.py`` quantizes the
module this builds.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import traceback
from pathlib import Path

import torch
from torch import nn

from quantlab import models, onnx_tools, preprocess, vocab
from quantlab.errors import KitError, first_line

# FILE.py:FUNCTION[@WEIGHTS]: FILE may hold colons of its own (C:\...), the function name cannot


def is_user_model_spec(spec: str) -> bool:
    """True for ``FILE.py:FUNCTION`` (whether or not the file exists)."""
    return vocab.USER_MODEL_SPEC.match(str(spec)) is not None


def parse_spec(spec: str) -> tuple[Path, str, Path | None]:
    """(the Python file, the function name, the state dict or None) of ``FILE.py:FUNCTION[@WEIGHTS.pth]``."""
    match = vocab.USER_MODEL_SPEC.match(str(spec))
    if match is None:
        raise KitError(
            f"--model {spec}: write your own model as FILE.py:FUNCTION, e.g. my_net.py:build "
            "(with its weights: my_net.py:build@my_net.pth)"
        )
    return Path(match["file"]), match["function"], Path(match["weights"]) if match["weights"] else None


def _where_in(error: BaseException, path: Path) -> str:
    """'my_net.py line 12' of the last traceback frame inside the student's file, or ''."""
    frames = [
        frame for frame in traceback.extract_tb(error.__traceback__) if Path(frame.filename).resolve() == path.resolve()
    ]
    if not frames:
        return ""
    frame = frames[-1]
    code = f": {frame.line.strip()}" if frame.line else ""
    return f" at {path.name} line {frame.lineno}{code}"


def _module_name(path: Path) -> str:
    return f"quantlab_user_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}"


def import_file(path: Path):
    """Import a Python file by its path (it need not be on sys.path); its own folder is importable from it."""
    if not path.is_file():
        raise KitError(f"model file {path} does not exist; check the path of FILE.py in --model FILE.py:FUNCTION")
    name = _module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise KitError(f"{path} cannot be imported as Python; pass a .py file")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # so that my_net.py can import its neighbours, as `python my_net.py` could
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - any failure of the student's code is theirs to fix
        sys.modules.pop(name, None)
        raise KitError(
            f"importing {path} failed{_where_in(error, path)} ({first_line(error, with_type=True)})"
        ) from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def build_user_model(spec: str, weights: str | Path | None = None) -> nn.Module:
    """The student's float model: import FILE.py, call FUNCTION(), check that it made a float nn.Module, load its
    state dict (``weights``, or FILE.py:FUNCTION@WEIGHTS) into it; returned in eval mode."""
    path, function_name, in_spec = parse_spec(spec)
    if in_spec is not None and weights is not None:
        raise KitError(f"--model {spec} names its weights already; drop --weights {weights}")
    weights = weights if weights is not None else in_spec
    module = import_file(path)
    function = getattr(module, function_name, None)
    if function is None:
        defined = sorted(
            name
            for name, value in vars(module).items()
            if callable(value) and not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
        )
        raise KitError(
            f"{path} defines no '{function_name}'"
            + (f"; it defines {', '.join(defined)}" if defined else "")
            + f"; pass --model {path}:NAME of a function that returns your nn.Module"
        )
    if not callable(function):
        raise KitError(
            f"{path}:{function_name} is a {type(function).__name__}, not a function; "
            "pass a function that returns your nn.Module"
        )
    try:
        model = function()
    except Exception as error:  # noqa: BLE001 - the student's code can fail in any way
        raise KitError(
            f"calling {path.name}:{function_name}() failed{_where_in(error, path)} "
            f"({first_line(error, with_type=True)}); it must take no arguments and return an nn.Module"
        ) from None
    if not isinstance(model, nn.Module):
        raise KitError(
            f"{path.name}:{function_name}() returned {type(model).__name__}, not an nn.Module; "
            "return the model itself (e.g. `return MyNet()`)"
        )
    if weights is not None:
        _load_weights(model, spec, weights)
    if any(p.is_quantized for p in model.parameters()) or any(b.is_quantized for b in model.buffers()):
        raise KitError(f"{spec} is already quantized; return the float model")
    return model.eval()


def declared_preprocessing(spec: str) -> preprocess.Preprocessing:
    """The input ``FILE.py:FUNCTION`` declares: FUNCTION's ``preprocessing`` attribute, else FILE.py's
    ``PREPROCESSING`` dict, else ImageNet's (quantlab.preprocess). FILE.py is imported once: a second call reuses it."""
    path, function_name, _ = parse_spec(spec)
    module = sys.modules.get(_module_name(path))
    if module is None or Path(getattr(module, "__file__", "")).resolve() != path.resolve():  # another FILE.py
        module = import_file(path)
    function = getattr(module, function_name, None)
    declared = getattr(function, "preprocessing", None)
    if declared is not None:
        return preprocess.read_preprocessing(declared, f"{path.name}:{function_name}.preprocessing")
    return preprocess.read_preprocessing(getattr(module, "PREPROCESSING", None), f"{path.name} PREPROCESSING")


def _load_weights(model: nn.Module, spec: str, weights: str | Path) -> None:
    state_dict = models.load_state_dict_file(weights)
    if models.is_int8_state_dict(state_dict):
        raise KitError(f"{weights} holds int8 weights: it is already quantized; pass fp32 weights")
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, KeyError, ValueError) as error:
        raise KitError(
            f"{weights} does not fit {spec} ({first_line(error)}); pass the state dict saved from this model"
        ) from None


def output_classes(model: nn.Module, input_size: int) -> int:
    """How many class scores the model returns for one 3 x S x S photo (checked: a [1, C] tensor)."""
    try:
        with torch.inference_mode():
            output = model(torch.randn(1, 3, input_size, input_size))
    except Exception as error:  # noqa: BLE001 - the student's forward can fail in any way
        raise KitError(
            f"the model fails on one 3x{input_size}x{input_size} image ({first_line(error, with_type=True)}); "
            "the kit feeds RGB photos, batch first"
        ) from None
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != 1:
        shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise KitError(f"the model returns {shape} for one image; a classifier returns [1, classes] scores")
    return int(output.shape[1])


# ---- your own ONNX model ----------------------------------------------------------------


def check_onnx_classifier(path: Path, input_size: int) -> dict:
    """Check that ``path`` is a float ONNX classifier with one image input; facts about it.

    One input (initializers aside) of float N x 3 x S x S (N, S may be symbolic),
    and for one random photo a first output of [1, classes]: anything else is a
    KitError saying what the file is instead.
    """
    path = Path(path)
    if not path.is_file():
        raise KitError(f"ONNX file {path} does not exist; check the path")
    try:
        import onnx
    except ImportError:
        raise KitError("onnx is not installed; pip install onnx onnxruntime") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf raises several kinds
        raise KitError(
            f"{path} is not an ONNX file ({first_line(error, with_type=True, limit=100)}); export one with torch.onnx.export"
        ) from None
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(value.name for value in inputs) or "none"
        raise KitError(
            f"{path} has {len(inputs)} inputs ({names}); the kit quantizes classifiers with one image "
            "input (batch x 3 x S x S)"
        )
    tensor_type = inputs[0].type.tensor_type
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(tensor_type.elem_type) if tensor_type.elem_type else "not a tensor"
        raise KitError(f"{path}'s input '{inputs[0].name}' is {kind}, not float32 images; export the float model")
    shape = [dim.dim_param or (dim.dim_value if dim.HasField("dim_value") else "?") for dim in tensor_type.shape.dim]
    fixed = dict(enumerate(shape))
    if (
        len(shape) != 4
        or (isinstance(fixed[1], int) and fixed[1] != 3)
        or any(isinstance(fixed[axis], int) and fixed[axis] != input_size for axis in (2, 3))
    ):
        raise KitError(
            f"{path}'s input '{inputs[0].name}' is {shape}, not images of batch x 3 x {input_size} x "
            f"{input_size}; the kit quantizes image classifiers on {input_size}x{input_size} RGB photos"
        )
    if any(node.op_type in onnx_tools.QUANTIZED_ONNX_OPS for node in model.graph.node):
        raise KitError(f"{path} is already quantized (it holds QuantizeLinear/QLinear operators); pass the float model")
    session = models.OnnxModel(path, threads=torch.get_num_threads())
    try:
        output = session(torch.randn(1, 3, input_size, input_size))
    except KitError:
        raise
    except Exception as error:  # noqa: BLE001 - ONNX Runtime's errors name the node
        raise KitError(
            f"ONNX Runtime fails on one 3x{input_size}x{input_size} image with {path} ({first_line(error, with_type=True)})"
        ) from None
    if output.dim() != 2 or output.shape[0] != 1:
        raise KitError(
            f"{path} returns {list(output.shape)} for one image, not class scores [1, classes]; "
            "the kit quantizes classifiers"
        )
    return {"input_name": inputs[0].name, "input_shape": shape, "classes": int(output.shape[1])}


def with_input_named(path: Path, input_name: str, folder: Path) -> Path:
    """``path`` itself when its input is called ``input_name``, else a copy in ``folder`` with it renamed.

    The kit's ONNX Runtime calibration feeds photos by the name its own exports use.
    """
    import onnx

    model = onnx.load(str(path))
    initializers = {init.name for init in model.graph.initializer}
    (graph_input,) = [value for value in model.graph.input if value.name not in initializers]
    if graph_input.name == input_name:
        return path
    old = graph_input.name
    if any(input_name in (*node.input, *node.output) for node in model.graph.node):
        raise KitError(
            f"{path} already uses the name '{input_name}' inside its graph; rename its input to "
            f"'{input_name}' when exporting"
        )
    graph_input.name = input_name
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = input_name
    for output in model.graph.output:
        if output.name == old:
            raise KitError(f"{path} returns its input unchanged; it is not a classifier")
    renamed = Path(folder) / "renamed_input.onnx"
    onnx.save(model, str(renamed))
    return renamed


def onnx_size_mb(path: Path) -> float:
    """An ONNX model's size in MB, its external weight files included (torch.onnx.export writes FILE.onnx.data)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    locations = {
        entry.value
        for tensor in model.graph.initializer
        if uses_external_data(tensor)
        for entry in tensor.external_data
        if entry.key == "location"
    }
    files = [Path(path), *(Path(path).parent / location for location in locations)]
    return sum(file.stat().st_size for file in files if file.is_file()) / 1e6
