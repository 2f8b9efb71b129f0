"""Static checks of a handed-in model file: what it may hold and which operations it may run.

A TorchScript archive is code, not data: ``torch.jit.load`` runs its
``__setstate__`` methods and ``forward`` can call any TorchScript operator,
including ``torch.from_file`` (reads or, shared, writes any file). The grader
therefore checks a student's file in three steps, each refusing with the reason
(and the operator) named:

1. ``check_zip`` (grader process, before anything loads it): the zip's central
   directory stays under ``MAX_UNCOMPRESSED_BYTES`` in total and under
   ``MAX_RATIO`` times the file's size (zip bombs); ``torch.jit.save`` stores
   its tensors uncompressed, so honest archives expand about 1.0x.
2. ``check_code_text`` (grader process): the archive's ``code/*.py`` (TorchScript
   serialized as Python syntax) parses, defines no ``__setstate__`` (code that
   would run at load time) and names no banned operator.
3. ``check_graph`` (the sandboxed child, after loading, before running): every
   node of the inlined ``forward`` graph is an operator a quantized image
   classifier needs (``ALLOWED_OPS``), loops have a constant trip count, and the
   operators run inside loops stay under ``MAX_LOOP_WORK`` (trips x body).
   ``check_onnx`` does the same for ONNX files against ``ALLOWED_ONNX_OPS``.

Example:
    problem = model_checks.check_zip(Path("mnv2_static.pt")) or model_checks.check_code_text(Path("mnv2_static.pt"))
"""

from __future__ import annotations

import ast
import hashlib
import zipfile
from pathlib import Path

# MobileNetV2 fp32 as TorchScript is 14 MB, ResNet-50 about 100 MB: 256 MB leaves room for any model of the labs.
MAX_UNCOMPRESSED_BYTES = 256 * 1024 * 1024
# Tensors are stored uncompressed and only the small code files are deflated (about 3x), so a whole archive
# expands about 1.0x; 10x leaves room and stops bombs (a 2 MB file that expands to 5 GB is 2500x).
MAX_RATIO = 10.0
MAX_ENTRIES = 20_000
MAX_CODE_BYTES = 8 * 1024 * 1024  # all code files together (MobileNetV2 holds about 13 kB)
MAX_ONNX_BYTES = MAX_UNCOMPRESSED_BYTES
MAX_LOOP_TRIPS = 10_000
# operators run inside loops, all loops together (trips x the operators in the body): a loop of 10,000 trips
# around a conv, a ReLU, a pool and a linear passes the trip cap and costs the whole time limit, for every
# row a student lists. MobileNetV2 runs no loop at all; a few short loops (a model's own tricks) stay allowed
MAX_LOOP_WORK = 1_000

# Operators a quantized (or float) image classifier needs: convolution, linear, activations, pooling,
# shapes, quantize/dequantize, and the checks TorchScript inserts (size, len, ne, If, RaiseException).
ALLOWED_ATEN = {
    "conv1d",
    "conv2d",
    "conv3d",
    "_convolution",
    "convolution",
    "linear",
    "matmul",
    "mm",
    "addmm",
    "bmm",
    "batch_norm",
    "layer_norm",
    "group_norm",
    "instance_norm",
    "relu",
    "relu_",
    "relu6",
    "hardtanh",
    "hardtanh_",
    "hardswish",
    "hardswish_",
    "hardsigmoid",
    "hardsigmoid_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "silu",
    "silu_",
    "gelu",
    "elu",
    "leaky_relu",
    "leaky_relu_",
    "softmax",
    "log_softmax",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_max",
    "add",
    "add_",
    "sub",
    "sub_",
    "mul",
    "mul_",
    "div",
    "div_",
    "neg",
    "rsub",
    "pow",
    "sqrt",
    "rsqrt",
    "exp",
    "cat",
    "stack",
    "flatten",
    "reshape",
    "view",
    "contiguous",
    "permute",
    "transpose",
    "t",
    "squeeze",
    "unsqueeze",
    "chunk",
    "split",
    "narrow",
    "slice",
    "select",
    "expand",
    "expand_as",
    "channel_shuffle",
    "pixel_shuffle",
    "pad",
    "constant_pad_nd",
    "upsample_bilinear2d",
    "upsample_nearest2d",
    "mean",
    "sum",
    "amax",
    "max",
    "min",
    "adaptive_avg_pool2d",
    "avg_pool2d",
    "max_pool2d",
    "adaptive_max_pool2d",
    "dropout",
    "dropout_",
    "feature_dropout",
    "alpha_dropout",
    "detach",
    "clone",
    "quantize_per_tensor",
    "quantize_per_channel",
    "dequantize",
    "q_scale",
    "q_zero_point",
    "int_repr",
    "size",
    "dim",
    "len",
    "numel",
    "eq",
    "ne",
    "gt",
    "lt",
    "ge",
    "le",
    "__not__",
    "__and__",
    "__or__",
    "__is__",
    "__isnot__",
    "__getitem__",
    "Int",
    "Float",
    "Bool",
    "ScalarImplicit",
    "floordiv",
    "remainder",
    "floor",
    "ceil",
    "abs",
    "to",
    "type_as",
    "list",
    "append",
    "format",
    "str",
    "warn_if_unused",
}
ALLOWED_PRIM = {
    "Constant",
    "If",
    "ListConstruct",
    "ListUnpack",
    "TupleConstruct",
    "TupleUnpack",
    "TupleIndex",
    "GetAttr",
    "RaiseException",
    "dtype",
    "device",
    "NumToTensor",
    "Uninitialized",
    "unchecked_cast",
    "min",
    "max",
    "shape",
    "layout",
    "is_quantized",
    "data",
    "Loop",
    "requires_grad",
    "isinstance",
}
ALLOWED_OPS_NOTE = "convolution, linear, activations, pooling, reshaping, quantize/dequantize"
# Named in the refusal when found, even where the allowlist would refuse them anyway.
BANNED_NAMES = (
    "from_file",
    "save",
    "load",
    "Print",
    "print",
    "open",
    "system",
    "popen",
    "exec",
    "eval",
    "__import__",
    "_load_for_mobile",
    "_jit_pass",
    "warn",
)

ALLOWED_ONNX_OPS = {
    "": {
        "Conv",
        "ConvInteger",
        "QLinearConv",
        "MatMul",
        "MatMulInteger",
        "QLinearMatMul",
        "Gemm",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Relu",
        "Clip",
        "HardSigmoid",
        "HardSwish",
        "Sigmoid",
        "Tanh",
        "Softmax",
        "LeakyRelu",
        "GlobalAveragePool",
        "AveragePool",
        "MaxPool",
        "GlobalMaxPool",
        "ReduceMean",
        "Flatten",
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Concat",
        "Identity",
        "Dropout",
        "BatchNormalization",
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "Cast",
        "Shape",
        "Gather",
        "Constant",
        "Pad",
        "Split",
        "Slice",
        "Erf",
        "Sqrt",
        "Pow",
    },
    "com.microsoft": {
        "QLinearAdd",
        "QLinearMul",
        "QLinearGlobalAveragePool",
        "QLinearAveragePool",
        "QLinearConcat",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QGemm",
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "FusedConv",
        "FusedGemm",
        "QLinearConv",
    },
}


# ---- in the grader, before anything loads the file ----------------------------------


def check_zip(path: Path) -> str | None:
    """Why the zip archive must not be opened (a bomb, too large, unreadable); None when it may."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return f"{path.name} is not a readable zip archive (TorchScript files are zip archives)"
    if len(entries) > MAX_ENTRIES:
        return f"{path.name} holds {len(entries)} files; a model archive holds a few hundred: refused"
    total = sum(entry.file_size for entry in entries)
    size = max(1, path.stat().st_size)
    if total > MAX_UNCOMPRESSED_BYTES:
        return (
            f"{path.name} expands to {total / 1e6:.0f} MB, over the grader's limit of "
            f"{MAX_UNCOMPRESSED_BYTES / 1e6:.0f} MB: refused unopened (a zip bomb, or not a classifier)"
        )
    if total / size > MAX_RATIO:
        return (
            f"{path.name} expands {total / size:.0f}x (TorchScript stores tensors uncompressed, about 1x): "
            "refused unopened as a zip bomb"
        )
    return None


def check_code_text(path: Path) -> str | None:
    """Why the TorchScript code in the archive is refused before loading; None when it may load."""
    try:
        with zipfile.ZipFile(path) as archive:
            code = [
                entry for entry in archive.infolist() if "/code/" in entry.filename and entry.filename.endswith(".py")
            ]
            if sum(entry.file_size for entry in code) > MAX_CODE_BYTES:
                return f"{path.name} holds over {MAX_CODE_BYTES // 2**20} MB of TorchScript code: refused"
            texts = {entry.filename: archive.read(entry).decode("utf-8") for entry in code}
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, ValueError, RuntimeError):
        return f"{path.name}: its TorchScript code cannot be read (a damaged archive)"
    for name, text in texts.items():
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return f"{path.name}: its TorchScript code ({Path(name).name}) is not what torch.jit.save writes: refused"
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name in ("__setstate__", "__getstate__"):
                return (
                    f"{path.name} defines {node.name}, code that would run while the grader loads it: "
                    "refused (quantize_model.py never writes one)"
                )
            banned = _banned_name(node)
            if banned:
                return f"{path.name} calls '{banned}', which a classifier never needs (files, printing): refused"
    return None


def _banned_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute) and node.attr in BANNED_NAMES:
        return _dotted(node)
    if isinstance(node, ast.Name) and node.id in BANNED_NAMES:
        return node.id
    return None


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))[:80]


def archive_content_hash(path: Path) -> str | None:
    """A fingerprint of the archive's tensors: SHA-256 over the sorted SHA-256s of its tensor storages.

    Only the weights count (``data/`` and ``constants/`` entries), in any order:
    the same weights saved under another name, wrapped in another module or
    with edited code give the same fingerprint. Reading every entry also proves
    each one inflates to its declared size (CRC-checked).
    """
    storages = []
    try:
        with zipfile.ZipFile(path) as archive:
            for entry in archive.infolist():
                inner = entry.filename.split("/", 1)[-1]
                digest = hashlib.sha256()
                with archive.open(entry) as member:
                    for block in iter(lambda: member.read(1 << 20), b""):
                        digest.update(block)
                if inner.startswith(("data/", "constants/")) and entry.file_size:
                    storages.append(digest.hexdigest())
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError, EOFError):
        return None
    if not storages:
        return None
    return hashlib.sha256("".join(sorted(storages)).encode("ascii")).hexdigest()


# ---- in the sandboxed child, after loading, before running ---------------------------


def graph_problem(model) -> str | None:
    """The first operator of ``model.forward`` outside the allowlist, named; None when all are allowed."""
    try:
        graph = model.inlined_graph
    except Exception:  # noqa: BLE001 - no forward graph: nothing the grader can check
        return "it has no TorchScript forward graph to check"
    return _block_problem(graph, 1, [0])


def _block_problem(block, trips_around: int, loop_work: list[int]) -> str | None:
    """Check ``block``'s operators; ``trips_around``: how often the loops around it run it (nested loops multiply).

    ``loop_work`` (one number, shared by every block of the graph) adds up the operator runs inside loops.
    """
    for node in block.nodes():
        kind = node.kind()
        namespace, _, op = kind.partition("::")
        inner_trips = trips_around
        if trips_around > 1 and namespace in ("aten", "quantized"):
            loop_work[0] += trips_around
            if loop_work[0] > MAX_LOOP_WORK:
                return (
                    f"its loops run over {MAX_LOOP_WORK} operators in all (trips x the operators inside, "
                    f"'{kind}' among them; 'prim::Loop'), over the grader's limit: refused (too slow to grade)"
                )
        if kind == "prim::Loop":
            why = _loop_problem(node)
            if why:
                return why
            inner_trips = trips_around * int(next(iter(node.inputs())).toIValue())
            if inner_trips > MAX_LOOP_TRIPS:  # three nested loops of 10,000 run 10^12 times
                return (
                    f"it runs nested loops of {inner_trips} iterations in all ('prim::Loop'), over the "
                    f"grader's {MAX_LOOP_TRIPS}: refused"
                )
        elif not (
            namespace == "quantized"
            or (namespace == "aten" and op in ALLOWED_ATEN)
            or (namespace == "prim" and op in ALLOWED_PRIM)
        ):
            return f"it runs '{kind}', which is not an operator a quantized image classifier needs ({ALLOWED_OPS_NOTE})"
        for inner in node.blocks():
            why = _block_problem(inner, inner_trips, loop_work)
            if why:
                return why
    return None


# the C++ class of a quantized convolution's packed weights: only its unpack() is called (never a student's class)
CONV_PACKED_PARAMS = "__torch__.torch.classes.quantized.Conv2dPackedParamsBase"
# a weight's qscheme as a sidecar's granularity names it
GRANULARITY_OF_QSCHEME = {
    "torch.per_tensor_affine": "per_tensor",
    "torch.per_tensor_symmetric": "per_tensor",
    "torch.per_channel_affine": "per_channel",
    "torch.per_channel_symmetric": "per_channel",
    "torch.per_channel_affine_float_qparams": "per_channel",
}


def conv_facts(model) -> dict:
    """How ``model``'s convolutions run: ``{"int8": N, "float": M, "float_shapes", "granularities", "weights_sha256"}``.

    A dynamic model keeps its convolutions in fp32 (only Linear is int8), whatever its sidecar claims:
    ``quantized::conv*`` against ``aten::conv*`` in the graph tells them apart, and the packed weights'
    qscheme tells per-channel from per-tensor whatever the sidecar says. The packed weights are graph
    constants in a frozen model (quantize_model.py freezes) and module attributes in one that is not.
    ``weights_sha256`` fingerprints the int8 convolution weights and each int8 convolution's output scale
    and zero point (None without any): a wrapper that adds a constant to the logits, or re-saves the file,
    leaves it as it is; another model changes it. The output scales matter: quantizing the same pretrained
    weights per channel gives every honest student the same int8 weights, and only calibration (the
    activations' ranges) tells their models apart.
    """
    import torch

    int8 = floating = 0
    packed, output_qparams, float_shapes = [], [], []
    weighted, float_positions = 0, []  # convolutions and linears in the graph's order: which ones run in float
    for node in _all_nodes(model.inlined_graph):
        namespace, _, op = node.kind().partition("::")
        if (
            namespace in ("quantized", "aten")
            and "pack" not in op
            and op.startswith(("conv2d", "_convolution", "linear"))
        ):
            if namespace == "aten":
                float_positions.append(weighted)
            weighted += 1
        if op.startswith(("conv", "_convolution")) and not op.startswith(("conv_tbc", "convolution_backward")):
            if namespace == "quantized":
                int8 += 1
                output_qparams.append(_constant_qparams(node))
            elif namespace == "aten":
                floating += 1
                float_shapes.append(_weight_shape(node))
        elif node.kind() == "prim::Constant" and node.outputsSize() == 1:
            value = node.output()
            if str(value.type()) == CONV_PACKED_PARAMS:
                packed.append(value.toIValue())
    for _, module in model.named_modules():
        packed.append(getattr(module, "_packed_params", None))
        if hasattr(module, "_packed_params"):  # not frozen: the output's scale and zero point are attributes
            output_qparams.append(_number_pair(getattr(module, "scale", None), getattr(module, "zero_point", None)))
    granularities, layers = set(), set()
    for params in packed:
        # only the C++ class's unpack() is called, never a method of a student's own class
        if isinstance(params, torch.ScriptObject) and params._type().qualified_name() == CONV_PACKED_PARAMS:
            weight = params.unpack()[0]
            qscheme = str(weight.qscheme())
            granularities.add(GRANULARITY_OF_QSCHEME.get(qscheme, qscheme))
            layer = hashlib.sha256(str(tuple(weight.shape)).encode("ascii"))
            layer.update(weight.int_repr().contiguous().numpy().tobytes())
            layers.add(layer.hexdigest())  # a set: the order layers are found in, or a layer used twice, is no matter
    qparams = sorted(pair for pair in output_qparams if pair is not None)
    weights = hashlib.sha256(("".join(sorted(layers)) + repr(qparams)).encode("ascii")).hexdigest() if layers else None
    return {
        "int8": int8,
        "float": floating,
        # the float convolutions' weight shapes (None where the weight is not a constant): which layers a recipe
        # kept in float (grader/recipes.py)
        "float_shapes": sorted(float_shapes, key=repr),
        # each float convolution's or linear's place among the layers with weights, in the graph's order: the
        # recipe's layers by position, so that a float layer swapped for another of the same shape is seen
        "float_positions": float_positions,
        "weighted_layers": weighted,
        "granularities": sorted(granularities),
        "weights_sha256": weights,
    }


def _weight_shape(node) -> list[int] | None:
    """The shape of a float convolution's weight when it is a graph constant (a frozen model), else None."""
    inputs = list(node.inputs())
    if len(inputs) < 2 or inputs[1].node().kind() != "prim::Constant":
        return None
    weight = inputs[1].toIValue()
    shape = getattr(weight, "shape", None)
    return [int(size) for size in shape] if shape is not None else None


def _number_pair(scale: object, zero_point: object) -> str | None:
    """A conv output's scale and zero point as text for the fingerprint; None unless both are plain numbers."""
    if isinstance(scale, float) and isinstance(zero_point, int) and not isinstance(zero_point, bool):
        return f"{scale!r}/{zero_point}"
    return None


def _constant_qparams(node) -> str | None:
    """The output scale and zero point of a ``quantized::conv*`` node, where they are graph constants (frozen)."""
    inputs = list(node.inputs())
    if len(inputs) < 4 or any(value.node().kind() != "prim::Constant" for value in inputs[2:4]):
        return None
    return _number_pair(inputs[2].toIValue(), inputs[3].toIValue())


def _all_nodes(block) -> list:
    """Every node of ``block`` and the blocks inside its nodes (a conv in a loop or an if counts too)."""
    nodes = []
    for node in block.nodes():
        nodes.append(node)
        for inner in node.blocks():
            nodes.extend(_all_nodes(inner))
    return nodes


def _loop_problem(node) -> str | None:
    trips = next(iter(node.inputs()))
    producer = trips.node()
    if producer.kind() != "prim::Constant" or not producer.hasAttribute("value"):
        return "it runs a loop without a fixed number of iterations ('prim::Loop'): refused (it could never end)"
    count = trips.toIValue()
    if not isinstance(count, int) or count >= 2**31:  # `while True` compiles to a loop of 2^63 - 1 trips
        return "it runs a loop that never ends by itself ('prim::Loop', e.g. while True): refused"
    if count > MAX_LOOP_TRIPS:
        return f"it runs a loop of {count} iterations ('prim::Loop'), over the grader's {MAX_LOOP_TRIPS}: refused"
    return None


def onnx_problem(path: Path) -> str | None:
    """Why an ONNX file is refused before ONNX Runtime sees it: its operators, external data, functions."""
    import onnx

    if path.stat().st_size > MAX_ONNX_BYTES:
        return f"{path.name} is over {MAX_ONNX_BYTES / 1e6:.0f} MB: refused"
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - any parse failure is the student's file
        return f"{path.name} is not a readable ONNX model"
    graph = model.graph
    if model.functions:
        return f"{path.name} defines ONNX functions; export the plain operators (quantize_model.py --format onnx)"
    for initializer in graph.initializer:
        if initializer.data_location == onnx.TensorProto.EXTERNAL or initializer.external_data:
            return f"{path.name} reads its weights from other files (external data): refused, hand in one file"
    for node in graph.node:
        allowed = ALLOWED_ONNX_OPS.get(node.domain if node.domain != "ai.onnx" else "", set())
        if node.op_type not in allowed:
            op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
            return (
                f"{path.name} runs ONNX operator '{op[:60]}', which a quantized image classifier never needs: refused"
            )
    return None


def onnx_weights_hash(path: Path) -> str | None:
    """SHA-256 of an ONNX file's initializers (its weights), whatever its metadata says."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001
        return None
    digest = hashlib.sha256()
    for initializer in sorted(graph.initializer, key=lambda tensor: tensor.name):
        digest.update(initializer.SerializeToString())
    return digest.hexdigest()


# ONNX Runtime's U8S8 kernels on x86 with AVX2 or AVX-512 but no VNNI add pairs of uint8 x int8 products in
# 16 bits: 2 x 255 x 64 = 32640 fits in 32767, 2 x 255 x 65 does not (quantlab.cpu)
ONNX_EXACT_WEIGHT_MAX = 64


def onnx_int8_weight_max(path: Path) -> int | None:
    """The largest |value| of an ONNX file's int8 weight tensors (initializers of 2 or more dimensions), read from
    the file itself, not its metadata's word: above ``ONNX_EXACT_WEIGHT_MAX`` its U8S8 sums may saturate on a CPU
    without VNNI. None when it holds no int8 weights (fp32, or uint8 weights as in the kit's dynamic files)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001
        return None
    largest = None
    for initializer in graph.initializer:
        if initializer.data_type == onnx.TensorProto.INT8 and len(initializer.dims) >= 2:
            values = numpy_helper.to_array(initializer).astype(np.int16)
            if values.size:
                largest = max(largest or 0, int(np.abs(values).max()))
    return largest
