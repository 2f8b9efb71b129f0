"""How much of a model is int8: its layers with weights in int8 and in float, and the MB of weights left in float.

A quantized file that is only 1.25x smaller than its fp32 original kept much of itself in float; this says which
layers and how many MB (issue 30). Two kinds of model:

- an ONNX file: a node with a weight (Conv, Gemm, MatMul and their integer forms) is int8 when its weight is an
  8-bit initializer (QDQ's DequantizeLinear in front, or ConvInteger/MatMulInteger/QLinearConv), float otherwise;
- a PyTorch module (eager mode): a layer is int8 when its weight is a quantized tensor (torch.ao.nn.quantized),
  float when it is a float parameter.

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
