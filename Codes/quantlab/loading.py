"""Load any model the kit measures, and say what it is: the loading half of ``quantlab.bench``.

``load_any`` takes a torchvision name (``TORCHVISION_NAMES``), a state dict, a
TorchScript file (run on the engine its sidecar names), an ONNX file (ONNX
Runtime), a PT2E file or your own model (``FILE.py:FUNCTION[@WEIGHTS.pth]``),
runs it once (``probe``) and returns a ``LoadedModel``: the callable model and
the facts a benchmark report records about it. ``load_for_demo`` is the same for
``mobile_net.py --model``.

Example:
    from quantlab import loading
    loaded = loading.load_any("mnv2_int8.pt", engine="auto", threads=2)
    print(loaded.format, loaded.engine, loaded.method, loaded.size_mb)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from quantlab import engines, files, models, onnx_tools, vocab
from quantlab.errors import KitError
from quantlab.files import file_size_mb, sha256_of

# model names load_any accepts besides files: torchvision's pretrained weights (offline copies as fallback)
TORCHVISION_NAMES = {
    "mobilenet_v2": "torchvision's pretrained fp32 MobileNetV2",
    "mobilenet_v2_int8": "torchvision's pretrained int8 MobileNetV2 (quantization-aware trained for qnnpack)",
}


def fixed_batch(model: Callable) -> int | None:
    """The batch size an ONNX model was exported with, when it is fixed (None: any batch size)."""
    shape = getattr(model, "input_shape", None)
    return shape[0] if shape and isinstance(shape[0], int) else None


@dataclass
class LoadedModel:
    """A model ready to benchmark and what the report says about it."""

    name: str
    model: Callable[[torch.Tensor], torch.Tensor]
    runtime: str  # pytorch | onnxruntime | litert
    format: str  # torchvision | state_dict | torchscript | onnx | pt2 | python | tflite
    engine: str | None  # PyTorch's int8 engine it runs on; None for fp32 and ONNX Runtime
    path: str | None
    size_mb: float
    parameters: int | None
    sha256: str | None
    method: str  # fp32 | static | dynamic | qat | int8 (quantized, method unknown)
    sidecar: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # one-line remarks for the user (engine overrides, ...)
    batch_one: bool = False  # takes one photo at a time only (traced or exported for batch 1)
    onnx_int8: bool = False  # an ONNX file with int8 operators (QuantizeLinear, ConvInteger, ...)

    @property
    def quantized(self) -> bool:
        """Whether it computes in int8: a PyTorch int8 engine, or int8 operators in its ONNX graph."""
        return (
            self.engine is not None
            or (self.format == "onnx" and self.onnx_int8)
            or self.format == "tflite"
            and self.method != "fp32"
        )


def count_parameters(model: Callable) -> int | None:
    """Weights and biases the model computes with (int8 or float), or None when they cannot be read.

    Frozen TorchScript keeps them as graph constants (float tensors, or int8
    packed-parameter objects) rather than parameters; ``load_any`` freezes every
    PyTorch model, so BatchNorm is folded into the convolutions and all formats
    count alike (3,487,816 for MobileNetV2).
    """
    if isinstance(model, models.OnnxModel):
        return None  # counted from the file by _onnx_parameters
    if not isinstance(model, torch.jit.ScriptModule):
        return sum(p.numel() for p in model.parameters()) if isinstance(model, nn.Module) else None
    total = sum(p.numel() for p in model.parameters())
    for node in model.graph.nodes():
        if node.kind() == "prim::Constant" and node.hasAttribute("value"):
            value = node.output().toIValue()
            if isinstance(value, torch.Tensor):
                total += value.numel()
    for packed in _packed_weights(model):  # int8 conv/linear weights
        weight, bias = packed.unpack()[:2]
        total += weight.numel() + (bias.numel() if bias is not None else 0)
    return total or None


def _onnx_facts(path: Path) -> tuple[int | None, bool]:
    """Weights and biases in an ONNX file (its initializers less scalars and quantization scales); is it int8?"""
    try:
        import onnx
    except ImportError:
        return None, False
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - an ORT-format (.ort) file or a damaged one: ONNX Runtime ran it, onnx cannot read it
        return None, False
    quantized = any(node.op_type in onnx_tools.QUANTIZED_ONNX_OPS for node in graph.node)
    # scales and zero points of QuantizeLinear/DequantizeLinear are not weights
    quant_params = {
        name for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear") for name in node.input[1:]
    }
    counted = (
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.INT8,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.INT32,
    )
    # rank 0 initializers are constants such as Clip's bounds (ReLU6), not weights
    total = sum(
        math.prod(init.dims)
        for init in graph.initializer
        if init.dims and init.name not in quant_params and init.data_type in counted
    )
    return total or None, quantized


def _frozen(model: nn.Module) -> torch.jit.ScriptModule:
    # the same deployment form as quantize_model.py's TorchScript files, so fp32 and int8 compare fairly
    return models.script(model)


_QNNPACK_WEIGHTS_NOTE = (
    "note: {name}: torchvision's pretrained int8 weights were made for qnnpack; on {engine} "
    "they round differently and may run slowly (pass --engine qnnpack to match the Pi)"
)


def _load_torchvision(name: str, engine: str) -> LoadedModel:
    notes = []
    if name == "mobilenet_v2":
        module, used_engine, method = models.mobilenet_v2_fp32(), None, "fp32"
    else:
        used_engine, _ = engines.resolve_engine(engine)
        module, method = models.mobilenet_v2_int8(used_engine), "qat"
        if used_engine != "qnnpack":
            notes.append(_QNNPACK_WEIGHTS_NOTE.format(name=name, engine=used_engine))
    size = models.serialized_size_mb(module)
    scripted = _frozen(module)
    return LoadedModel(
        name=name,
        model=scripted,
        runtime="pytorch",
        format="torchvision",
        engine=used_engine,
        path=None,
        size_mb=round(size, 3),
        parameters=count_parameters(scripted),
        sha256=None,
        method=method,
        notes=notes,
    )


def _load_state_dict(path: Path, state_dict: dict, engine: str, arch: str) -> LoadedModel:
    int8 = models.is_int8_state_dict(state_dict)
    used_engine, notes = None, []
    if arch == "mobilenet_v2":
        if int8:
            used_engine, _ = engines.resolve_engine(engine)
            module = models.mobilenet_v2_int8(used_engine, path)
            if used_engine != "qnnpack":
                notes.append(_QNNPACK_WEIGHTS_NOTE.format(name=path.name, engine=used_engine))
        else:
            module = models.mobilenet_v2_fp32(path)
    else:
        if int8:
            raise KitError(f"{path} holds int8 weights; the kit rebuilds int8 models for --arch mobilenet_v2 only")
        module = models.torchvision_model(arch, state_dict, str(path))
    scripted = _frozen(module)
    return LoadedModel(
        name=path.name,
        model=scripted,
        runtime="pytorch",
        format="state_dict",
        engine=used_engine,
        path=str(path),
        size_mb=round(file_size_mb(path), 3),
        parameters=count_parameters(scripted),
        sha256=sha256_of(path),
        method="int8" if int8 else "fp32",
        notes=notes,
    )


def _load_torchscript(path: Path, engine: str, threads: int) -> LoadedModel:
    sidecar = models.read_sidecar(path)
    made_for = sidecar.get("engine")
    notes = []
    if engine == "auto":
        if made_for and made_for not in torch.backends.quantized.supported_engines:
            raise KitError(
                f"{path.name} was quantized for {made_for}, which this PyTorch build lacks; quantize "
                f"it again here (quantize_model.py --engine auto), e.g. qnnpack for a Raspberry Pi"
            )
        if made_for is None:  # the search loads the file on the engine it settles on: no need to load it again
            used_engine, notes, scripted = _engine_without_sidecar(path, threads)
        else:
            used_engine, _ = engines.resolve_engine(made_for)
    else:
        used_engine, _ = engines.resolve_engine(engine)
        if made_for and made_for != used_engine:
            notes.append(
                f"note: {path.name} was quantized for {made_for} (its sidecar says so) but --engine "
                f"forces {used_engine}: expect other speed and accuracy than on {made_for}"
            )
    if engine != "auto" or made_for is not None:
        engines.set_engine(used_engine)  # int8 weights are packed for the engine active while they load
        scripted = models.load_model_file(path, threads)
    quantized = "quantized::" in str(scripted.inlined_graph)
    method = sidecar.get("method") or ("int8" if quantized else "fp32")
    return LoadedModel(
        name=path.name,
        model=scripted,
        runtime="pytorch",
        format="torchscript",
        engine=used_engine if quantized else None,
        path=str(path),
        size_mb=round(file_size_mb(path), 3),
        parameters=count_parameters(scripted),
        sha256=sha256_of(path),
        method=method,
        sidecar=sidecar,
        notes=notes,
    )


def _packed_weights(scripted: torch.jit.ScriptModule) -> list[torch.ScriptObject]:
    """A TorchScript model's int8 conv/linear weight objects (each has ``unpack()``).

    Frozen files keep them as graph constants, others as the ``_packed_params``
    attribute of each quantized layer: both are read.
    """
    found = [
        node.output().toIValue()
        for node in scripted.graph.nodes()
        if node.kind() == "prim::Constant" and node.hasAttribute("value")
    ]
    found += [
        module._c.getattr("_packed_params")
        for _, module in scripted.named_modules()
        if module._c.hasattr("_packed_params")
    ]
    return [value for value in found if isinstance(value, torch.ScriptObject) and hasattr(value, "unpack")]


def int8_weight_schemes(scripted: torch.jit.ScriptModule) -> set:
    """The quantization schemes (per-tensor, per-channel) of a TorchScript model's int8 weights; empty for fp32."""
    return {packed.unpack()[0].qscheme() for packed in _packed_weights(scripted)}


def _engine_without_sidecar(path: Path, threads: int) -> tuple[str, list[str], torch.jit.ScriptModule]:
    """The engine an int8 TorchScript file with no sidecar was most likely packed for, checked by running it.

    Per-tensor int8 weights are what qnnpack's defaults (and torchvision's
    pretrained int8 weights) make; the x86 engines' defaults are per-channel.
    The guess goes first; an engine on which the file does not run is passed over.
    Returns the engine (left active), the note to print, and the file loaded on that engine.
    """
    supported = torch.backends.quantized.supported_engines
    fast, _ = engines.resolve_engine("auto")
    engines.set_engine(fast)
    loaded_on = {fast: models.load_model_file(path, threads)}  # weights are packed for the engine they load on
    schemes = int8_weight_schemes(loaded_on[fast])
    if not schemes:
        return fast, [], loaded_on[fast]  # fp32: the engine does not matter
    per_tensor = schemes <= {torch.per_tensor_affine, torch.per_tensor_symmetric}
    guess = "qnnpack" if per_tensor and "qnnpack" in supported else fast
    why = (
        "its int8 weights are per-tensor, as qnnpack's defaults make them"
        if guess == "qnnpack"
        else "its int8 weights are per-channel, as the x86 engines' defaults make them"
    )
    failures = []
    for candidate in dict.fromkeys([guess, fast, *(e for e in vocab.ENGINE_CHOICES if e in supported)]):
        if candidate == "auto":
            continue
        engines.set_engine(candidate)
        try:
            model = loaded_on.get(candidate) or models.load_model_file(path, threads)
            with torch.inference_mode():
                model(_probe_image(1))
        except Exception as error:  # noqa: BLE001 - any failure means "not this engine"
            failures.append(f"{candidate}: {_first_line(error)}")
            continue
        if candidate != guess:
            why = f"it does not run on {guess}, the first guess"
        note = (
            f"note: {path.name} has no sidecar {models.sidecar_path(path).name}; running it on {candidate} "
            f"({why}); pass --engine if it was quantized for another engine"
        )
        return candidate, [note], model
    raise KitError(
        f"{path.name} is int8 with no sidecar and runs on none of this PyTorch's engines "
        f"({'; '.join(failures)}); pass --engine ENGINE it was quantized for"
    )


BATCH_AGREEMENT = 0.95  # cosine between an image's scores alone and in a batch, below which batches are not trusted


def _probe_image(batch: int, input_size: int = 224) -> torch.Tensor:
    return torch.randn(batch, 3, input_size, input_size, generator=torch.Generator().manual_seed(batch))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    # TorchScript errors carry the student's code as a traceback: its last line says what went wrong
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(error).__name__}: {(lines[-1] if lines else 'no details')[:160]}"


def probe(loaded: LoadedModel, input_size: int = 224, classes: int = 1000) -> None:
    """Run the model on batch 1 and batch 2: it must return ``classes`` scores per photo.

    A model that fails on batch 2 or answers it with another number of rows
    (traced with its batch fixed to 1) is marked ``batch_one`` and evaluated one
    photo at a time; one that fails on batch 1 or returns another shape is a
    KitError naming the file and the cause.
    """
    if loaded.engine is not None:
        engines.set_engine(loaded.engine)
    name = loaded.name
    try:
        with torch.inference_mode():
            output = loaded.model(_probe_image(1, input_size))
    except KitError:
        raise
    except Exception as error:  # noqa: BLE001 - a handed-in model can fail in any way inside torch
        raise KitError(
            f"{name} fails when run on one 3x{input_size}x{input_size} image ({_first_line(error)})"
        ) from None
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != (1, classes):
        shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise KitError(
            f"{name} returns {shape} for one image, not the {classes} ImageNet class scores "
            f"[1, {classes}]; the kit measures ImageNet-1k classifiers"
        )
    if not torch.isfinite(output).all():
        raise KitError(f"{name} returns NaN or infinite scores for an image; it is broken")
    if fixed_batch(loaded.model) == 1:
        loaded.batch_one = True
        return
    try:
        with torch.inference_mode():  # the same image first in a batch of two: it must get the same answer
            pair = loaded.model(torch.cat([_probe_image(1, input_size), _probe_image(2, input_size)[1:]]))
        takes_batches = isinstance(pair, torch.Tensor) and tuple(pair.shape) == (2, classes)
    except KitError:
        raise
    except Exception:  # noqa: BLE001 - failing on batch 2 is what a batch-1 trace does
        takes_batches = False
    if not takes_batches:
        loaded.batch_one = True
        loaded.notes.append(
            f"note: {name} takes one image at a time only (traced or exported for batch 1); "
            "its accuracy is measured photo by photo"
        )
        return
    # latency is timed on batch 1: a model that answers a photo otherwise alone than in a batch would be
    # timed on one computation and scored on another (dynamic quantization's ranges move a little: cosine ~1)
    agreement = float(torch.nn.functional.cosine_similarity(pair[0].float(), output[0].float(), dim=0))
    if agreement < BATCH_AGREEMENT:
        loaded.batch_one = True
        loaded.notes.append(
            f"note: {name} answers an image differently alone than in a batch (cosine "
            f"{agreement:.2f}); its accuracy is measured photo by photo, as its latency is"
        )


def _shape_fix(shape: list) -> str:
    """How to fix an ONNX input shape the benchmark cannot feed (dimensions are ints, or names when dynamic)."""
    if len(shape) != 4:
        return "export it for image batches (batch x 3 x S x S)"
    batch, channels = shape[0], shape[1]
    if isinstance(batch, int) and batch != 1:
        return "export it for batch 1 or with a dynamic batch axis"
    if isinstance(channels, int) and channels != 3:
        return "export it for 3-channel (RGB) images"
    return "pass the --size it was exported with"


def _load_onnx(path: Path, threads: int, input_size: int) -> LoadedModel:
    onnx_model = models.load_model_file(path, threads)
    expected = [1, 3, input_size, input_size]
    shape = onnx_model.input_shape
    if len(shape) != 4 or any(isinstance(want, int) and want != got for want, got in zip(shape, expected)):
        raise KitError(
            f"{path} expects input {shape} but the benchmark feeds {expected} (batch 1, --size "
            f"{input_size}); {_shape_fix(shape)}"
        )
    parameters, quantized = _onnx_facts(path)
    # quantlab.onnx_tools records how it quantized a file in the file itself
    made = onnx_tools.read_metadata(path) or models.read_sidecar(path)
    return LoadedModel(
        name=path.name,
        model=onnx_model,
        runtime="onnxruntime",
        format="onnx",
        engine=None,
        path=str(path),
        size_mb=round(file_size_mb(path), 3),
        parameters=parameters,
        sha256=sha256_of(path),
        method=made.get("method") or ("int8" if quantized else "fp32"),
        sidecar=made,
        onnx_int8=quantized,
    )


def load_any(spec: str, engine: str, threads: int, arch: str = "mobilenet_v2", input_size: int = 224) -> LoadedModel:
    """Load a torchvision name, a state dict, a TorchScript file or an ONNX file (run with ONNX Runtime).

    ``engine``: "auto" runs a TorchScript file on the engine in its sidecar (no
    sidecar: the engine its weights were packed for, see ``_engine_without_sidecar``);
    any other value forces that engine (and adds a note when the sidecar disagrees).
    A model file is run once before it is returned (``probe``): one that fails or
    is no ImageNet classifier is a KitError, one that takes batch 1 only is marked.
    """
    if spec in TORCHVISION_NAMES:
        return _load_torchvision(spec, engine)
    loaded = _load_file(spec, engine, threads, arch, input_size)
    probe(loaded, input_size)
    return loaded


def _load_file(spec: str, engine: str, threads: int, arch: str, input_size: int) -> LoadedModel:
    from quantlab import pt2e, user_model  # your own model: PT2E files and FILE.py:FUNCTION specs

    # an existing file is always loaded as a file: a handed-in "evil.py:f@x.pt" must never import evil.py
    if user_model.is_user_model_spec(spec) and not Path(spec).exists():
        return _load_user_model(spec, input_size)
    path = Path(spec)
    if path.is_file() and pt2e.is_exported_file(path):
        return _load_exported(path, input_size)
    if not path.exists():
        raise KitError(
            f"--model {spec}: no such file, and not a model name the kit knows "
            f"({', '.join(TORCHVISION_NAMES)}); check the path"
        )
    if not path.is_file():
        raise KitError(f"--model {spec} is a folder; pass a model file (.pt, .pth or .onnx)")
    if path.suffix.lower() in vocab.ONNX_SUFFIXES:
        return _load_onnx(path, threads, input_size)
    if path.suffix.lower() == vocab.TFLITE_SUFFIX:
        from quantlab import litert  # LiteRT's runtime: imported only for a .tflite file

        return litert.load_tflite(path, threads, input_size)
    if files.is_torchscript_file(path):
        return _load_torchscript(path, engine, threads)
    try:
        state_dict = models.load_state_dict_file(path)
    except KitError:
        raise KitError(
            f"{path} is not a model file the kit can load: neither TorchScript (torch.jit.save), "
            "a state dict (torch.save) nor ONNX (.onnx)"
        ) from None
    return _load_state_dict(path, state_dict, engine, arch)


def _load_exported(path: Path, input_size: int) -> LoadedModel:
    """A PT2E file (torch.export.save): compiled with inductor on x86 (see pt2e.load_exported)."""
    from quantlab import pt2e

    loaded = pt2e.load_exported(path, input_size)
    sidecar = models.read_sidecar(path)
    notes = [loaded.note] if loaded.note else []
    if loaded.compiled:
        notes.append(
            f"note: {path.name} runs through torch.compile (inductor, freezing): compiled for batch 1, "
            "it compiles again for each new batch size (the evaluation's)"
        )
    return LoadedModel(
        name=path.name,
        model=loaded,
        runtime="pytorch",
        format="pt2",
        engine=None,
        path=str(path),
        size_mb=round(file_size_mb(path), 3),
        parameters=None,
        sha256=sha256_of(path),
        method=sidecar.get("method") or ("int8" if loaded.quantized else "fp32"),
        sidecar=sidecar,
        notes=notes,
    )


def _load_user_model(spec: str, input_size: int) -> LoadedModel:
    """Your own float model, FILE.py:FUNCTION[@WEIGHTS.pth]: runs as TorchScript when it scripts, else eagerly."""
    from quantlab import user_model

    module = user_model.load_user_model(spec)
    notes = []
    try:
        model: Callable = _frozen(module)  # the same deployment form as the kit's fp32 baseline
    except Exception as error:  # noqa: BLE001 - many models do not script; eager mode still measures them
        model = module
        notes.append(
            f"note: {spec} does not compile to TorchScript ({_first_line(error)[:100]}); "
            "measured in eager mode (usually slower)"
        )
    weights = user_model.parse_spec(spec)[2]
    return LoadedModel(
        name=spec,
        model=model,
        runtime="pytorch",
        format="python",
        engine=None,
        path=str(weights) if weights else None,
        size_mb=round(models.serialized_size_mb(module), 3),
        parameters=sum(p.numel() for p in module.parameters()),
        sha256=sha256_of(weights) if weights else None,
        method="fp32",
        notes=notes,
    )


def load_for_demo(path: Path, engine: str, input_size: int, threads: int) -> tuple[Callable, str, str]:
    """``mobile_net.py --model FILE``: the model, its engine and why (as printed), and a line describing it.

    A TorchScript file runs on the engine its sidecar names (it was quantized for it) unless ``engine`` forces
    another; an ONNX file runs in ONNX Runtime, a PT2E file (.pt2) through torch.compile: no engine to pick.
    """
    from quantlab import pt2e  # PT2E needs torch.export: imported only for a .pt2 file

    path = Path(path)
    size = f"{file_size_mb(path):.1f} MB" if path.is_file() else ""
    if pt2e.is_exported_file(path):
        exported = pt2e.load_exported(path, input_size)  # x86: compiled with inductor (takes a while, once)
        if exported.note:
            print(exported.note)
        how = "torch.compile, inductor" if exported.compiled else "exported program, uncompiled"
        return exported, f"none needed ({how})", f"{path} ({size}, PT2E)"
    if path.suffix.lower() in vocab.ONNX_SUFFIXES:
        return models.load_model_file(path, threads), "none needed (ONNX Runtime)", f"{path} ({size}, ONNX)"
    if path.suffix.lower() == vocab.TFLITE_SUFFIX:
        from quantlab import litert

        model = litert.LiteRTModel(path, threads)
        return model, f"none needed (LiteRT, {litert.describe(model)})", f"{path} ({size}, LiteRT)"
    made_for = models.read_sidecar(path).get("engine")
    if engine == "auto" and made_for:
        chosen, _ = engines.resolve_engine(made_for)
        why = f"from {models.sidecar_path(path).name}: the model was quantized for it"
    else:
        chosen, why = engines.resolve_engine(engine)
    engines.set_engine(chosen)  # int8 weights are packed for the engine active while they load
    return models.load_model_file(path, threads), f"{chosen} ({why})", f"{path} ({size})"
