"""One way to load a model the kit measures or runs, and say what it is: ``load_any``.

``load_any(spec)`` takes any model the kit knows:

  a torchvision name    ``TORCHVISION_NAMES`` (mobilenet_v2, mobilenet_v2_int8), pretrained weights
  a state dict          FILE.pth saved with torch.save (``arch`` names its torchvision architecture)
  TorchScript           FILE.pt, run on the engine its sidecar FILE.json names (``engine`` "auto")
  ONNX                  FILE.onnx or FILE.ort, run with ONNX Runtime
  PT2E                  FILE.pt2 (torch.export), compiled with inductor on x86 (XNNPACK's: ExecuTorch)
  ExecuTorch            FILE.pte (PT2E lowered to XNNPACK), run with ExecuTorch
  your own model        FILE.py:FUNCTION[@WEIGHTS.pth] (importing FILE.py runs its code)

and returns a ``LoadedModel``: the callable model and the facts a benchmark
report records about it. ``check`` (the default) runs it once on one and two
photos first (``probe``): one that fails or is no ImageNet classifier is a
KitError. It loads; it does not decide whether a file may run: scripts call
``quantlab.provenance.require_trusted`` first, the grader its sandbox.

A model file is loaded by the function its suffix names in ``_LOADERS``
(another kind: one ``_load_KIND(path, request)`` and one row there).

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

from quantlab import engines, files, models, onnx_tools, preprocess, vocab
from quantlab._quiet import quiet_native_warnings
from quantlab.errors import KitError, last_line
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


@dataclass(frozen=True)
class _Request:
    """What ``load_any`` was asked for, handed to each kind's loader."""

    engine: str  # "auto" or an engine to force (vocab.ENGINE_CHOICES)
    threads: int
    arch: str  # the torchvision architecture of a state dict
    input_size: int
    compile: bool | None  # PT2E: compile with inductor (None: when the sidecar's target is x86)


@dataclass
class LoadedModel:
    """A model ready to benchmark and what the report says about it."""

    name: str
    model: Callable[[torch.Tensor], torch.Tensor]
    runtime: str  # pytorch | onnxruntime | litert | executorch
    format: str  # torchvision | state_dict | torchscript | onnx | pt2 | python | tflite | pte
    engine: str | None  # PyTorch's int8 engine it runs on; None for fp32, ONNX Runtime, PT2E and LiteRT
    path: str | None
    size_mb: float
    parameters: int | None
    sha256: str | None
    method: str  # fp32 | static | dynamic | qat | int8 (quantized, method unknown)
    sidecar: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # one-line remarks for the user (engine overrides, ...)
    # why this engine (its sidecar names it, --engine forces it, the CPU's fast one); with no engine, what runs it
    engine_reason: str = ""
    batch_one: bool = False  # takes one photo at a time only (traced or exported for batch 1)
    onnx_int8: bool = False  # an ONNX file with int8 operators (QuantizeLinear, ConvInteger, ...)
    # the input it wants (quantlab.preprocess): declared in its sidecar or by FILE.py; ImageNet's otherwise
    preprocessing: preprocess.Preprocessing = preprocess.IMAGENET

    @property
    def runs_on(self) -> str:
        """The engine and why, or what runs it when it needs none: the line the demo prints."""
        if self.engine is not None:
            return f"{self.engine} ({self.engine_reason})"
        return f"none needed ({self.engine_reason or f'{self.method} model'})"

    @property
    def quantized(self) -> bool:
        """Whether it computes in int8: a PyTorch int8 engine, or int8 operators in its ONNX graph."""
        return (
            self.engine is not None
            or (self.format == "onnx" and self.onnx_int8)
            or self.format in ("tflite", "pte")
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
    notes, why = [], ""
    if name == "mobilenet_v2":
        module, used_engine, method = models.mobilenet_v2_fp32(), None, "fp32"
    else:
        used_engine, why = engines.resolve_engine(engine)
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
        engine_reason=why,
    )


def _load_torch_file(path: Path, request: _Request) -> LoadedModel:
    """A .pt/.pth file (or one of another suffix): TorchScript (torch.jit.save) or a state dict (torch.save)."""
    if files.is_torchscript_file(path):
        return _load_torchscript(path, request)
    try:
        state_dict = models.load_state_dict_file(path)
    except KitError:
        from quantlab import executorch_runtime  # a .pte renamed: say what it is

        renamed = executorch_runtime.is_pte(path)
        hint = f"; it is an ExecuTorch program: name it {path.stem}{vocab.PTE_SUFFIX}" if renamed else ""
        raise KitError(
            f"{path} is not a model file the kit can load: neither TorchScript (torch.jit.save), "
            f"a state dict (torch.save) nor ONNX (.onnx){hint}"
        ) from None
    return _load_state_dict(path, state_dict, request.engine, request.arch)


def _load_state_dict(path: Path, state_dict: dict, engine: str, arch: str) -> LoadedModel:
    int8 = models.is_int8_state_dict(state_dict)
    used_engine, notes, why = None, [], ""
    if arch == "mobilenet_v2":
        if int8:
            used_engine, why = engines.resolve_engine(engine)
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
        engine_reason=why,
    )


def _jit_load(path: Path) -> torch.jit.ScriptModule:
    """A TorchScript file, in eval mode. Set the engine first: int8 weights are packed for the engine active
    while they load."""
    try:
        with quiet_native_warnings():
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as error:  # noqa: BLE001 - a damaged or foreign archive
        raise KitError(
            f"{path} is not a TorchScript model torch.jit.load can read ({type(error).__name__}); "
            "make a model file with quantize_model.py"
        ) from None


def _load_torchscript(path: Path, request: _Request) -> LoadedModel:
    engine = request.engine
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
            used_engine, notes, scripted = _engine_without_sidecar(path)
            why = "the engine its int8 weights run on (no sidecar)"
        else:
            used_engine, _ = engines.resolve_engine(made_for)
            why = f"from {models.sidecar_path(path).name}: the model was quantized for it"
    else:
        used_engine, why = engines.resolve_engine(engine)
        if made_for and made_for != used_engine:
            notes.append(
                f"note: {path.name} was quantized for {made_for} (its sidecar says so) but --engine "
                f"forces {used_engine}: expect other speed and accuracy than on {made_for}"
            )
    if engine != "auto" or made_for is not None:
        engines.set_engine(used_engine)  # int8 weights are packed for the engine active while they load
        scripted = _jit_load(path)
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
        engine_reason=why if quantized else "",
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


def _engine_without_sidecar(path: Path) -> tuple[str, list[str], torch.jit.ScriptModule]:
    """The engine an int8 TorchScript file with no sidecar was most likely packed for, checked by running it.

    Per-tensor int8 weights are what qnnpack's defaults (and torchvision's
    pretrained int8 weights) make; the x86 engines' defaults are per-channel.
    The guess goes first; an engine on which the file does not run is passed over.
    Returns the engine (left active), the note to print, and the file loaded on that engine.
    """
    supported = torch.backends.quantized.supported_engines
    fast, _ = engines.resolve_engine("auto")
    engines.set_engine(fast)
    loaded_on = {fast: _jit_load(path)}  # weights are packed for the engine they load on
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
            model = loaded_on.get(candidate) or _jit_load(path)
            with torch.inference_mode():
                model(_probe_image(1))
        except Exception as error:  # noqa: BLE001 - any failure means "not this engine"
            failures.append(f"{candidate}: {last_line(error)}")
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


def require_input_size(path: Path, input_shape: list[int], input_size: int) -> None:
    """A file made for one image size (LiteRT, ExecuTorch: [1, 3, S, S]) fed another: one line naming --size S."""
    if input_shape[2] != input_size:
        raise KitError(
            f"{path} expects input {input_shape} but it would be fed [1, 3, {input_size}, {input_size}] "
            f"(--size {input_size}); pass --size {input_shape[2]}"
        )


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
        raise KitError(f"{name} fails when run on one 3x{input_size}x{input_size} image ({last_line(error)})") from None
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


def _load_onnx(path: Path, request: _Request) -> LoadedModel:
    onnx_model, input_size = models.OnnxModel(path, request.threads), request.input_size
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
        engine_reason="ONNX Runtime",
    )


def load_any(
    spec: str | Path,
    engine: str = "auto",
    threads: int | None = None,
    arch: str = "mobilenet_v2",
    input_size: int = 224,
    *,
    check: bool = True,
    compile: bool | None = None,
) -> LoadedModel:
    """Load a torchvision name, a model file or your own model (see the module's docstring).

    ``engine``: "auto" runs a TorchScript file on the engine in its sidecar (no
    sidecar: the engine its weights were packed for, see ``_engine_without_sidecar``);
    any other value forces that engine (and adds a note when the sidecar disagrees).
    ``threads``: ONNX Runtime's (None: PyTorch's current setting). ``check``: run the
    model once first (``probe``): one that fails or is no ImageNet classifier is a
    KitError, one that takes batch 1 only is marked. ``compile``: a PT2E file
    through inductor (None: when its sidecar's target is x86).
    """
    spec = str(spec)
    if spec in TORCHVISION_NAMES:
        return _load_torchvision(spec, engine)
    request = _Request(engine, threads or torch.get_num_threads(), arch, input_size, compile)
    # an existing file is always loaded as a file: a handed-in "evil.py:f@x.pt" must never import evil.py
    if vocab.USER_MODEL_SPEC.match(spec) and not Path(spec).exists():
        loaded = _load_user_model(spec, request)
    else:
        path = Path(spec)
        if not path.exists():
            raise KitError(
                f"--model {spec}: no such file, and not a model name the kit knows "
                f"({', '.join(TORCHVISION_NAMES)}); check the path"
            )
        if not path.is_file():
            raise KitError(f"--model {spec} is a folder; pass a model file ({', '.join(vocab.MODEL_SUFFIXES)})")
        loaded = _LOADERS.get(path.suffix.lower(), _load_torch_file)(path, request)
        declared = (
            loaded.sidecar.get("preprocessing") if loaded.sidecar else models.read_sidecar(path).get("preprocessing")
        )
        loaded.preprocessing = preprocess.read_preprocessing(declared, f"{models.sidecar_path(path).name}")
    if loaded.preprocessing.size not in (None, input_size):
        raise KitError(
            f"{loaded.name} declares input size {loaded.preprocessing.size} ({loaded.preprocessing.describe()}); "
            f"pass --size {loaded.preprocessing.size}"
        )
    if check:
        probe(loaded, input_size)
    return loaded


def _load_exported(path: Path, request: _Request) -> LoadedModel:
    """A PT2E file (torch.export.save): checked (pt2e.check_archive), compiled with inductor on x86; one
    quantized for XNNPACK (target arm) lowered to ExecuTorch where it is installed."""
    from quantlab import pt2e  # PT2E needs torch.export: imported only for a .pt2 file

    loaded = pt2e.load_exported(path, request.input_size, request.compile)
    sidecar = models.read_sidecar(path)
    notes = [loaded.note] if loaded.note else []
    if loaded.runner == "inductor":
        notes.append(
            f"note: {path.name} runs compiled by inductor (freezing, {loaded.compile_s} s): compiled for batch 1, "
            "it compiles again for each new batch size"
        )
    elif loaded.runner == "executorch":
        notes.append(
            f"note: {path.name} was lowered to ExecuTorch's XNNPACK as it loaded ({loaded.compile_s} s); "
            f"quantize_model.py --output {path.stem}.pte saves that wait"
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
        engine_reason={"inductor": "inductor", "executorch": "ExecuTorch, XNNPACK"}.get(
            loaded.runner, "exported program"
        ),
    )


def _load_user_model(spec: str, request: _Request) -> LoadedModel:
    """Your own float model, FILE.py:FUNCTION[@WEIGHTS.pth]: runs as TorchScript when it scripts, else eagerly."""
    from quantlab import user_model

    module = user_model.build_user_model(spec)
    notes = []
    try:
        model: Callable = _frozen(module)  # the same deployment form as the kit's fp32 baseline
    except Exception as error:  # noqa: BLE001 - many models do not script; eager mode still measures them
        model = module
        notes.append(
            f"note: {spec} does not compile to TorchScript ({last_line(error, limit=100)}); "
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
        preprocessing=user_model.declared_preprocessing(spec),
    )


def _load_tflite(path: Path, request: _Request) -> LoadedModel:
    """A LiteRT file: LiteRT's interpreter runs it (XNNPACK), no PyTorch engine to pick."""
    from quantlab import litert  # LiteRT's runtime: imported only for a .tflite file

    loaded = litert.load_tflite(path, request.threads, request.input_size)
    loaded.engine_reason = f"LiteRT, {litert.describe(loaded.model)}"
    return loaded


def _load_pte(path: Path, request: _Request) -> LoadedModel:
    """An ExecuTorch program: its runtime runs it (XNNPACK), no PyTorch engine to pick."""
    from quantlab import executorch_runtime  # imported only for a .pte file

    return executorch_runtime.load_pte(path, request.threads, request.input_size)


# how each kind of model file is loaded, by its suffix; any other suffix: TorchScript or a state dict, by content
_LOADERS: dict[str, Callable[[Path, _Request], LoadedModel]] = {
    vocab.PT2_SUFFIX: _load_exported,
    **dict.fromkeys(vocab.ONNX_SUFFIXES, _load_onnx),
    vocab.TFLITE_SUFFIX: _load_tflite,
    vocab.PTE_SUFFIX: _load_pte,
    **dict.fromkeys(vocab.TORCH_SUFFIXES, _load_torch_file),
}
