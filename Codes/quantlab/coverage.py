"""How much of a model is int8: its layers with weights in int8 and in float, and the MB of weights left in float.

A quantized file that is only 1.25x smaller than its fp32 original kept much of itself in float; this says which
layers and how many MB (issue 30). Four kinds of model:

- an ONNX file: a node with a weight (Conv, Gemm, MatMul and their integer forms) is int8 when its weight is an
  8-bit initializer (QDQ's DequantizeLinear in front, or ConvInteger/MatMulInteger/QLinearConv), float otherwise;
- a PyTorch module (eager mode): a layer is int8 when its weight is a quantized tensor (torch.ao.nn.quantized),
  float when it is a float parameter;
- a TorchScript module (``torch.jit``, frozen or not): a ``quantized::conv2d``/``quantized::linear`` (any variant,
  dynamic included) holds int8 packed weights, an ``aten::conv2d``/``aten::linear`` a float weight;
- a PT2E graph (``torch.export``, ``program.module()``): a convolution or linear layer whose weight comes through
  a ``dequantize_per_*`` of an int8 constant is int8, one with a float constant is float.

``of_loaded(loaded)`` picks the right one for a ``quantlab.loading.LoadedModel``: benchmark.py and
quantize_model.py print it (``format_coverage``) and benchmark.py's JSON holds it (docs/benchmark_schema.md).

Example:
    python -m quantlab.coverage mobilenet_v2_qdq.onnx      # the table; --json for the numbers
"""

from __future__ import annotations

import json
from pathlib import Path

from quantlab.errors import KitError

WEIGHTED_ONNX_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "QLinearConv",
                     "QLinearMatMul"}  # fmt: skip
EIGHT_BIT = {2, 3}  # onnx.TensorProto.UINT8, INT8


def onnx_coverage(path: str | Path) -> dict:
    """Layers with weights in int8 and in float, and MB of weights of each kind, for an ONNX file."""
    import onnx

    try:
        graph = onnx.load(str(path)).graph
    except Exception as error:
        raise KitError(f"{path} is not an ONNX model onnx can read ({type(error).__name__})") from None
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}

    def weight_of(node) -> onnx.TensorProto | None:
        """The node's weight initializer (through a DequantizeLinear in QDQ files), or None."""
        for name in node.input[1:]:
            source = producer.get(name)
            if source is not None and source.op_type == "DequantizeLinear":
                name = source.input[0]
            tensor = initializers.get(name)
            if tensor is not None and len(tensor.dims) >= 2:
                return tensor
        return None

    layers = []
    for node in graph.node:
        if node.op_type not in WEIGHTED_ONNX_OPS or (weight := weight_of(node)) is None:
            continue
        count = 1
        for dim in weight.dims:
            count *= dim
        int8 = weight.data_type in EIGHT_BIT
        layers.append({"name": node.name or node.output[0], "op": node.op_type, "int8": int8,
                       "weight_mb": count * (1 if int8 else onnx.helper.tensor_dtype_to_np_dtype(weight.data_type).itemsize) / 1e6})  # fmt: skip
    return _summary(layers)


def module_coverage(model) -> dict:
    """Layers with weights in int8 and in float, and MB of weights of each kind, for an eager PyTorch model."""
    import torch

    layers = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        weight = weight() if callable(weight) else weight  # quantized modules return their packed weight
        # a container whose children hold the weights counts through them (a quantized Linear's packed
        # parameters are a child without a weight: it counts as one layer)
        if (
            not isinstance(weight, torch.Tensor)
            or weight.dim() < 2
            or any(hasattr(c, "weight") for c in module.children())
        ):
            continue
        int8 = weight.is_quantized
        layers.append({"name": name, "op": type(module).__name__, "int8": int8,
                       "weight_mb": weight.numel() * (1 if int8 else weight.element_size()) / 1e6})  # fmt: skip
    return _summary(layers)


# TorchScript operators with a weight: int8 ones take packed parameters (unpack() gives the int8 weight)
_SCRIPT_FLOAT_OPS = {"aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::_convolution", "aten::linear",
                     "aten::conv_transpose1d", "aten::conv_transpose2d"}  # fmt: skip


def _script_value(value, root) -> tuple[object, str]:
    """The object a TorchScript graph value stands for (a constant, or an attribute reached from ``self``) and a
    name for it: the attribute's path (features.0.0.weight), or the constant's name in a frozen graph."""
    node = value.node()
    if node.kind() == "prim::Constant" and node.hasAttribute("value"):
        return node.output().toIValue(), value.debugName()
    if node.kind() == "prim::GetAttr":
        owner, path = _script_value(node.input(), root)
        name = node.s("name")
        return (getattr(owner, name, None) if owner is not None else None), (f"{path}.{name}" if path else name)
    if node.kind() == "prim::Param":
        return root, ""
    return None, ""


def _layer_name(where: str) -> str:
    """features.0.0 of self.features.0.0.weight_fused_bn (frozen) or features.0.0._packed_params._packed_params;
    '' for an anonymous constant."""
    name = where.removeprefix("self.")
    for suffix in (".weight_fused_bn", ".weight", "._packed_params._packed_params", "._packed_params"):
        name = name.removesuffix(suffix)
    return name if "." in where and name else ""


def _all_nodes(block):
    """Every node of a TorchScript graph, those inside if/loop blocks included (a Conv2d's padding-mode branch)."""
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from _all_nodes(inner)


def scripted_coverage(scripted) -> dict:
    """Layers with weights in int8 and in float, and MB of each, for a TorchScript module (frozen or not)."""
    import torch

    layers, seen = [], set()
    for node in _all_nodes(scripted.inlined_graph):
        kind = node.kind()
        if not (kind.startswith("quantized::") or kind in _SCRIPT_FLOAT_OPS):
            continue
        inputs = list(node.inputs())
        if len(inputs) < 2:
            continue
        weight, where = _script_value(inputs[1], scripted)
        if where in seen:  # the same weight under both branches of an if (a Conv2d's padding modes)
            continue
        seen.add(where)
        if kind.startswith("quantized::") and hasattr(weight, "unpack"):
            weight = weight.unpack()[0]
        if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
            continue  # quantized::add and the like: no weight
        int8 = weight.is_quantized
        op = kind.split("::")[1]
        layers.append({"name": _layer_name(where) or f"{op} #{len(layers)}", "op": op, "int8": int8,
                       "weight_mb": weight.numel() * (1 if int8 else weight.element_size()) / 1e6})  # fmt: skip
    return _summary(layers)


def exported_coverage(graph_module) -> dict:
    """Layers with weights in int8 and in float, and MB of each, for a PT2E graph (``ExportedProgram.module()``)."""
    import torch

    def tensor_of(node) -> torch.Tensor | None:
        if getattr(node, "op", None) != "get_attr":
            return None
        owner = graph_module
        for part in node.target.split("."):
            owner = getattr(owner, part, None)
        return owner if isinstance(owner, torch.Tensor) else None

    layers = []
    for node in graph_module.graph.nodes:
        target = str(node.target)
        if node.op != "call_function" or not target.startswith(("aten.conv", "aten.linear")) or len(node.args) < 2:
            continue
        source = node.args[1]
        through_dequantize = getattr(source, "op", None) == "call_function" and "dequantize" in str(source.target)
        weight = tensor_of(source.args[0] if through_dequantize else source)
        if weight is None or weight.dim() < 2:
            continue
        int8 = through_dequantize and weight.element_size() == 1
        stack = node.meta.get("nn_module_stack") or {}
        name = next(reversed(stack.values()))[0] if stack else node.name  # the layer's path in the float model
        layers.append({"name": name, "op": target.split(".")[1], "int8": int8,
                       "weight_mb": weight.numel() * weight.element_size() / 1e6})  # fmt: skip
    return _summary(layers)


def of_loaded(loaded) -> dict | None:
    """The coverage of a ``quantlab.loading.LoadedModel`` by its format; None when it cannot be read
    (an ORT-format file, a compiled module without its graph, a model without weighted layers)."""
    import torch

    model = loaded.model
    try:
        if loaded.format == "onnx":
            return onnx_coverage(loaded.path) if loaded.path and str(loaded.path).endswith(".onnx") else None
        if loaded.format == "pt2":
            graph_module = getattr(model, "graph_module", None)
            return exported_coverage(graph_module) if graph_module is not None else None
        if isinstance(model, torch.jit.ScriptModule):
            return scripted_coverage(model)
        if isinstance(model, torch.nn.Module):
            return module_coverage(model)
    except KitError:
        return None
    return None


def _summary(layers: list[dict]) -> dict:
    if not layers:
        raise KitError("the model has no layer with weights (Conv, Linear, Gemm, MatMul): nothing to report")
    float_layers = [layer for layer in layers if not layer["int8"]]
    return {
        "layers": len(layers),
        "int8_layers": len(layers) - len(float_layers),
        "float_layers": [layer["name"] for layer in float_layers],
        "int8_weight_mb": round(sum(layer["weight_mb"] for layer in layers if layer["int8"]), 6),
        "float_weight_mb": round(sum(layer["weight_mb"] for layer in float_layers), 6),
    }


def format_coverage(coverage: dict) -> str:
    """Two lines: the counts and MB, then the float layers (the first ten)."""
    floats = coverage["float_layers"]
    listed = ", ".join(floats[:10]) + (f" and {len(floats) - 10} more" if len(floats) > 10 else "")
    return (
        f"coverage: {coverage['int8_layers']} of {coverage['layers']} layers with weights in int8 "
        f"({coverage['int8_weight_mb']:.2f} MB of int8 weights), {len(floats)} in float "
        f"({coverage['float_weight_mb']:.2f} MB of float weights)" + (f"\n  float: {listed}" if floats else "")
    )


def main(argv: list[str] | None = None) -> int:
    from quantlab import arguments

    parser = arguments.Parser(prog="python -m quantlab.coverage", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="an ONNX file")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        raise KitError(f"model file {args.model} does not exist")
    coverage = onnx_coverage(args.model)
    print(json.dumps(coverage, indent=2) if args.json else format_coverage(coverage))
    return 0


if __name__ == "__main__":
    from quantlab.errors import run_cli

    run_cli(main)
