"""Benchmark models the same way on any machine: size, parameters, batch-1 latency, top-1/top-5.

``Codes/benchmark.py`` is the command-line front end; notebooks and the
grading tools use these functions directly. A report is a JSON-ready dict with
schema ``quantlab.benchmark/1`` (every field: ``docs/benchmark_schema.md``);
``validate_report`` checks one that a student hands in.

Example:
    from quantlab import bench, data
    loaded = bench.load_any("mnv2_int8.pt", engine="auto", threads=2)
    batches = data.loader(data.image_dataset("photos/"))
    result = bench.benchmark_model(loaded, batches, runs=50, warmup=10)
    settings = {"runs": 50, "warmup": 10, "batch_size": 1, "input_size": 224, "data": "photos/", "holdout": None,
                "seed": 0, "threads": 2, "engine": "x86"}
    report = bench.make_report([result], settings, bench.machine_info(threads=2, engine="x86"))
    assert bench.validate_report(report) == []
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import platform
import time
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from quantlab import cpu, data, engines, memory, models, onnx_tools, timing
from quantlab.engines import cpu_name
from quantlab.errors import KitError

SCHEMA = "quantlab.benchmark/1"
SCHEMA_FAMILY = "quantlab.benchmark/"
# model names load_any accepts besides files: torchvision's pretrained weights (offline copies as fallback)
TORCHVISION_NAMES = {
    "mobilenet_v2": "torchvision's pretrained fp32 MobileNetV2",
    "mobilenet_v2_int8": "torchvision's pretrained int8 MobileNetV2 (quantization-aware trained for qnnpack)",
}
QUANTIZED_ONNX_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
                      "QLinearMatMul", "ConvInteger", "MatMulInteger"}


# ---- the machine ---------------------------------------------------------------

def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(threads: int, engine: str | None) -> dict:
    """What a grader needs to tell results from different machines apart."""
    return {
        "cpu": cpu_name(),
        "arch": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnxruntime": _version("onnxruntime"),
        "threads": threads,
        "physical_cores": engines.physical_cores(),
        "engine": engine,
        **cpu.machine_fields(),  # int8_isa, int8_isa_note, ...: whether int8 sums can saturate here
    }


# ---- measuring -----------------------------------------------------------------

def measure_latency(model: Callable[[torch.Tensor], torch.Tensor], input_size: int = 224, runs: int = 50,
                    warmup: int = 10, image: torch.Tensor | None = None) -> dict:
    """Batch-1 latency of ``model`` on ``image`` (default: a fixed random one): median, p90, mean (ms), FPS.

    ``unstable`` says why the figures should not be trusted (``timing.instability``), or is None.
    """
    if runs < 1 or warmup < 0:
        raise KitError(f"need at least 1 timed run and no negative warm-up (got runs={runs}, warmup={warmup})")
    if image is None:
        image = torch.randn(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    times_ms = []
    with torch.inference_mode():
        for _ in range(warmup):  # first calls allocate buffers and pick kernels: not what a user sees later
            model(image)
        reference_before = timing.reference_workload_ms()
        for _ in range(runs):
            started = time.perf_counter()
            model(image)
            times_ms.append((time.perf_counter() - started) * 1e3)
        reference_after = timing.reference_workload_ms()
    median = float(np.median(times_ms))
    return {
        "median_ms": round(median, 4),
        "p90_ms": round(float(np.percentile(times_ms, 90)), 4),
        "mean_ms": round(float(np.mean(times_ms)), 4),
        "fps": round(1e3 / median, 2),
        "runs": runs,
        "unstable": timing.instability(times_ms, reference_before, reference_after),
    }


def _fixed_batch(model: Callable) -> int | None:
    """The batch size an ONNX model was exported with, when it is fixed (None: any batch size)."""
    shape = getattr(model, "input_shape", None)
    return shape[0] if shape and isinstance(shape[0], int) else None


def evaluate(model: Callable[[torch.Tensor], torch.Tensor], batches: Iterable, progress: bool = True,
             one_at_a_time: bool = False) -> dict:
    """Top-1 and top-5 accuracy (percent) over (images, labels) batches; None batches (unreadable) are skipped.

    ``one_at_a_time``: feed the photos singly, for models that only take batch 1
    (``LoadedModel.batch_one``, found by ``load_any``).
    """
    fixed = 1 if one_at_a_time else _fixed_batch(model)
    correct1 = correct5 = images = 0
    with torch.inference_mode():
        for batch in tqdm(batches, desc="evaluating", unit="batch", disable=not progress):
            if batch is None:
                continue
            inputs, labels = batch
            if int(labels.min()) < 0:  # data.UNLABELLED: fine for calibration, not for accuracy
                raise KitError(f"accuracy needs labelled photos, and the kit cannot tell the class of some; it "
                               f"reads labels from names: {data.LAYOUTS}")
            # a model exported or traced for batch 1 takes the images one at a time
            chunks = inputs.split(fixed) if fixed else (inputs,)
            logits = torch.cat([model(chunk) for chunk in chunks])
            if logits.shape[0] != labels.numel():  # never score a batch against another batch's answers
                raise KitError(f"the model returned {logits.shape[0]} answers for {labels.numel()} photos; it may "
                               "take batch 1 only: load it with bench.load_any, which finds out")
            if int(labels.max()) >= logits.shape[1]:
                raise KitError(f"a label ({int(labels.max())}) is beyond the model's {logits.shape[1]} classes; "
                               "use a data set labelled with the model's class indices (ImageNet-1k order)")
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top == labels.unsqueeze(1)
            correct1 += int(hits[:, 0].sum())
            correct5 += int(hits.any(dim=1).sum())
            images += labels.numel()
    if images == 0:
        raise KitError("no image of the data set could be read; pass a folder of readable photos")
    return {"top1": round(100 * correct1 / images, 2), "top5": round(100 * correct5 / images, 2), "images": images}


def evaluation_dataset(path: str | Path, size: int = 224, holdout: int | None = None, images: int | None = None,
                       seed: int = 0) -> Dataset:
    """The images accuracy is measured on, as benchmark.py picks them (graders re-measure on the same ones).

    ``holdout`` N: the images left after the first N of ``data.split``'s seeded
    shuffle, i.e. after the N that ``quantize_model.py --calib-images N --seed S``
    calibrated on. ``images`` caps the count; without a holdout the cap takes the
    first N of the seeded shuffle, so that a few images still mix the classes.
    """
    dataset = data.image_dataset(path, size)  # a folder, or "imagenette" (Colab); labels from names
    if holdout is not None:
        if holdout >= len(dataset):
            raise KitError(f"--holdout {holdout} leaves no image of the {len(dataset)} in {path}; hold out fewer")
        _, dataset = data.split(dataset, first_n=holdout, seed=seed)
        if images is not None:
            dataset = Subset(dataset, range(min(images, len(dataset))))
    elif images is not None:
        dataset, _ = data.split(dataset, first_n=images, seed=seed)
    return dataset


# ---- loading -------------------------------------------------------------------

@dataclass
class LoadedModel:
    """A model ready to benchmark and what the report says about it."""

    name: str
    model: Callable[[torch.Tensor], torch.Tensor]
    runtime: str                 # pytorch | onnxruntime
    format: str                  # torchvision | state_dict | torchscript | onnx
    engine: str | None           # PyTorch's int8 engine it runs on; None for fp32 and ONNX Runtime
    path: str | None
    size_mb: float
    parameters: int | None
    sha256: str | None
    method: str                  # fp32 | static | dynamic | qat | int8 (quantized, method unknown)
    sidecar: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # one-line remarks for the user (engine overrides, ...)
    batch_one: bool = False      # takes one photo at a time only (traced or exported for batch 1)


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
    quantized = any(node.op_type in QUANTIZED_ONNX_OPS for node in graph.node)
    # scales and zero points of QuantizeLinear/DequantizeLinear are not weights
    quant_params = {name for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")
                    for name in node.input[1:]}
    counted = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT32)
    # rank 0 initializers are constants such as Clip's bounds (ReLU6), not weights
    total = sum(math.prod(init.dims) for init in graph.initializer
                if init.dims and init.name not in quant_params and init.data_type in counted)
    return total or None, quantized


def is_torchscript_archive(path: Path) -> bool:
    """torch.jit.save archives hold Python code (``<name>/code/``); torch.save state dicts do not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _frozen(model: nn.Module) -> torch.jit.ScriptModule:
    # the same deployment form as quantize_model.py's TorchScript files, so fp32 and int8 compare fairly
    return models.script(model)


_QNNPACK_WEIGHTS_NOTE = ("note: {name}: torchvision's pretrained int8 weights were made for qnnpack; on {engine} "
                         "they round differently and may run slowly (pass --engine qnnpack to match the Pi)")


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
    return LoadedModel(name=name, model=scripted, runtime="pytorch", format="torchvision", engine=used_engine,
                       path=None, size_mb=round(size, 3), parameters=count_parameters(scripted), sha256=None,
                       method=method, notes=notes)


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
        try:
            module = torchvision.models.get_model(arch, weights=None)
        except ValueError:
            raise KitError(f"--arch {arch} is not a torchvision model name (e.g. mobilenet_v2, resnet18)") from None
        try:
            module.load_state_dict(state_dict)
        except RuntimeError as error:
            first = str(error).splitlines()[0][:120]
            raise KitError(f"{path} does not fit torchvision's {arch} ({first}); pass the right --arch") from None
        module.eval()
    scripted = _frozen(module)
    return LoadedModel(name=path.name, model=scripted, runtime="pytorch", format="state_dict", engine=used_engine,
                       path=str(path), size_mb=round(models.file_size_mb(path), 3),
                       parameters=count_parameters(scripted), sha256=models.sha256_of(path),
                       method="int8" if int8 else "fp32", notes=notes)


def _load_torchscript(path: Path, engine: str, threads: int) -> LoadedModel:
    sidecar = models.read_sidecar(path)
    made_for = sidecar.get("engine")
    notes = []
    if engine == "auto":
        if made_for and made_for not in torch.backends.quantized.supported_engines:
            raise KitError(f"{path.name} was quantized for {made_for}, which this PyTorch build lacks; quantize "
                           f"it again here (quantize_model.py --engine auto), e.g. qnnpack for a Raspberry Pi")
        if made_for is None:  # the search loads the file on the engine it settles on: no need to load it again
            used_engine, notes, scripted = _engine_without_sidecar(path, threads)
        else:
            used_engine, _ = engines.resolve_engine(made_for)
    else:
        used_engine, _ = engines.resolve_engine(engine)
        if made_for and made_for != used_engine:
            notes.append(f"note: {path.name} was quantized for {made_for} (its sidecar says so) but --engine "
                         f"forces {used_engine}: expect other speed and accuracy than on {made_for}")
    if engine != "auto" or made_for is not None:
        engines.set_engine(used_engine)  # int8 weights are packed for the engine active while they load
        scripted = models.load_model_file(path, threads)
    quantized = "quantized::" in str(scripted.inlined_graph)
    method = sidecar.get("method") or ("int8" if quantized else "fp32")
    return LoadedModel(name=path.name, model=scripted, runtime="pytorch", format="torchscript",
                       engine=used_engine if quantized else None, path=str(path),
                       size_mb=round(models.file_size_mb(path), 3), parameters=count_parameters(scripted),
                       sha256=models.sha256_of(path), method=method, sidecar=sidecar, notes=notes)


def _packed_weights(scripted: torch.jit.ScriptModule) -> list[torch.ScriptObject]:
    """A TorchScript model's int8 conv/linear weight objects (each has ``unpack()``).

    Frozen files keep them as graph constants, others as the ``_packed_params``
    attribute of each quantized layer: both are read.
    """
    found = [node.output().toIValue() for node in scripted.graph.nodes()
             if node.kind() == "prim::Constant" and node.hasAttribute("value")]
    found += [module._c.getattr("_packed_params") for _, module in scripted.named_modules()
              if module._c.hasattr("_packed_params")]
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
    why = ("its int8 weights are per-tensor, as qnnpack's defaults make them" if guess == "qnnpack"
           else "its int8 weights are per-channel, as the x86 engines' defaults make them")
    failures = []
    for candidate in dict.fromkeys([guess, fast, *(e for e in engines.ENGINE_CHOICES if e in supported)]):
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
        note = (f"note: {path.name} has no sidecar {models.sidecar_path(path).name}; running it on {candidate} "
                f"({why}); pass --engine if it was quantized for another engine")
        return candidate, [note], model
    raise KitError(f"{path.name} is int8 with no sidecar and runs on none of this PyTorch's engines "
                   f"({'; '.join(failures)}); pass --engine ENGINE it was quantized for")


BATCH_AGREEMENT = 0.95  # cosine between an image's scores alone and in a batch, below which batches are not trusted


def _probe_image(batch: int, input_size: int = 224) -> torch.Tensor:
    return torch.randn(batch, 3, input_size, input_size, generator=torch.Generator().manual_seed(batch))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    # TorchScript errors carry the student's code as a traceback: its last line says what went wrong
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(error).__name__}: {(lines[-1] if lines else 'no details')[:160]}"


def probe(loaded: "LoadedModel", input_size: int = 224, classes: int = 1000) -> None:
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
        raise KitError(f"{name} fails when run on one 3x{input_size}x{input_size} image "
                       f"({_first_line(error)})") from None
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != (1, classes):
        shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise KitError(f"{name} returns {shape} for one image, not the {classes} ImageNet class scores "
                       f"[1, {classes}]; the kit measures ImageNet-1k classifiers")
    if not torch.isfinite(output).all():
        raise KitError(f"{name} returns NaN or infinite scores for an image; it is broken")
    if _fixed_batch(loaded.model) == 1:
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
        loaded.notes.append(f"note: {name} takes one image at a time only (traced or exported for batch 1); "
                            "its accuracy is measured photo by photo")
        return
    # latency is timed on batch 1: a model that answers a photo otherwise alone than in a batch would be
    # timed on one computation and scored on another (dynamic quantization's ranges move a little: cosine ~1)
    agreement = float(torch.nn.functional.cosine_similarity(pair[0].float(), output[0].float(), dim=0))
    if agreement < BATCH_AGREEMENT:
        loaded.batch_one = True
        loaded.notes.append(f"note: {name} answers an image differently alone than in a batch (cosine "
                            f"{agreement:.2f}); its accuracy is measured photo by photo, as its latency is")


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
        raise KitError(f"{path} expects input {shape} but the benchmark feeds {expected} (batch 1, --size "
                       f"{input_size}); {_shape_fix(shape)}")
    parameters, quantized = _onnx_facts(path)
    # quantlab.onnx_tools records how it quantized a file in the file itself
    made = onnx_tools.read_metadata(path) or models.read_sidecar(path)
    return LoadedModel(name=path.name, model=onnx_model, runtime="onnxruntime", format="onnx", engine=None,
                       path=str(path), size_mb=round(models.file_size_mb(path), 3), parameters=parameters,
                       sha256=models.sha256_of(path), method=made.get("method") or ("int8" if quantized else "fp32"),
                       sidecar=made)


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
        raise KitError(f"--model {spec}: no such file, and not a model name the kit knows "
                       f"({', '.join(TORCHVISION_NAMES)}); check the path")
    if not path.is_file():
        raise KitError(f"--model {spec} is a folder; pass a model file (.pt, .pth or .onnx)")
    if path.suffix.lower() in models.ONNX_SUFFIXES:
        return _load_onnx(path, threads, input_size)
    if is_torchscript_archive(path):
        return _load_torchscript(path, engine, threads)
    try:
        state_dict = models.load_state_dict_file(path)
    except KitError:
        raise KitError(f"{path} is not a model file the kit can load: neither TorchScript (torch.jit.save), "
                       "a state dict (torch.save) nor ONNX (.onnx)") from None
    return _load_state_dict(path, state_dict, engine, arch)


def _load_exported(path: Path, input_size: int) -> LoadedModel:
    """A PT2E file (torch.export.save): compiled with inductor on x86 (see pt2e.load_exported)."""
    from quantlab import pt2e

    loaded = pt2e.load_exported(path, input_size)
    sidecar = models.read_sidecar(path)
    notes = [loaded.note] if loaded.note else []
    if loaded.compiled:
        notes.append(f"note: {path.name} runs through torch.compile (inductor, freezing): compiled for batch 1, "
                     "it compiles again for each new batch size (the evaluation's)")
    return LoadedModel(name=path.name, model=loaded, runtime="pytorch", format="pt2", engine=None, path=str(path),
                       size_mb=round(models.file_size_mb(path), 3), parameters=None, sha256=models.sha256_of(path),
                       method=sidecar.get("method") or ("int8" if loaded.quantized else "fp32"), sidecar=sidecar,
                       notes=notes)


def _load_user_model(spec: str, input_size: int) -> LoadedModel:
    """Your own float model, FILE.py:FUNCTION[@WEIGHTS.pth]: runs as TorchScript when it scripts, else eagerly."""
    from quantlab import user_model

    module = user_model.load_user_model(spec)
    notes = []
    try:
        model: Callable = _frozen(module)  # the same deployment form as the kit's fp32 baseline
    except Exception as error:  # noqa: BLE001 - many models do not script; eager mode still measures them
        model = module
        notes.append(f"note: {spec} does not compile to TorchScript ({_first_line(error)[:100]}); "
                     "measured in eager mode (usually slower)")
    weights = user_model.parse_spec(spec)[2]
    return LoadedModel(name=spec, model=model, runtime="pytorch", format="python", engine=None,
                       path=str(weights) if weights else None, size_mb=round(models.serialized_size_mb(module), 3),
                       parameters=sum(p.numel() for p in module.parameters()),
                       sha256=models.sha256_of(weights) if weights else None, method="fp32", notes=notes)


# ---- one model's results, the report ---------------------------------------------

def _first_photo(batches: Iterable | None) -> torch.Tensor | None:
    """The first readable photo of ``batches`` as a 1x3xSxS tensor; None without photos."""
    if batches is None:
        return None
    for batch in batches:
        if batch is not None:
            return batch[0][:1].clone()
    return None


def benchmark_model(loaded: LoadedModel, batches: Iterable | None, runs: int, warmup: int,
                    input_size: int = 224, progress: bool = True) -> dict:
    """Measure one model: one entry of the report's "results" (see docs/benchmark_schema.md)."""
    if loaded.engine is not None:
        engines.set_engine(loaded.engine)  # quantized ops dispatch on the active engine too
    memory.reset_peak()  # the peak below is this model's run (the process, with every model loaded so far)
    # timed on a photo that is scored, when there are photos: a model cannot tell the timed input from the
    # scored ones (on random noise, one that answers noise cheaply would look fast and score on photos)
    latency = measure_latency(loaded.model, input_size, runs, warmup, _first_photo(batches))
    accuracy = {"top1": None, "top5": None, "images": None}
    skipped = None
    if batches is not None:
        dataset = getattr(batches, "dataset", None)
        before = data.skipped_count(dataset) if dataset is not None else 0
        accuracy = evaluate(loaded.model, batches, progress, one_at_a_time=loaded.batch_one)
        # the data set counts unreadable files over its lifetime: this model's pass is the difference
        skipped = data.skipped_count(dataset) - before if dataset is not None else 0
    return {
        "name": loaded.name,
        "file": Path(loaded.path).name if loaded.path else None,
        "path": loaded.path,
        "format": loaded.format,
        "runtime": loaded.runtime,
        "method": loaded.method,
        "engine": loaded.engine,
        "sha256": loaded.sha256,
        "size_mb": loaded.size_mb,
        "parameters": loaded.parameters,
        "latency_ms": {"median": latency["median_ms"], "p90": latency["p90_ms"], "mean": latency["mean_ms"]},
        "fps": latency["fps"],
        "unstable": latency["unstable"],  # why the latency should not be trusted, or None
        **accuracy,
        "skipped": skipped,
        "peak_rss_mb": memory.peak_rss_mb(),
    }


def make_report(results: list[dict], settings: dict, machine: dict) -> dict:
    """The JSON document benchmark.py --json writes."""
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"schema": SCHEMA, "created": created, "machine": machine, "settings": settings, "results": results}


def ratios(result: dict, baseline: dict) -> dict:
    """How ``result`` compares with ``baseline`` (the first model): x faster, x smaller, top-1 points lost."""
    drop = None
    if result.get("top1") is not None and baseline.get("top1") is not None:
        drop = round(baseline["top1"] - result["top1"], 2)
    return {
        "speedup": round(baseline["latency_ms"]["median"] / result["latency_ms"]["median"], 3),
        "size_ratio": round(baseline["size_mb"] / result["size_mb"], 3),
        "top1_drop": drop,
    }


# ---- validation (the grader) -------------------------------------------------------

_NUMBER = (int, float)
_OPTIONAL_STR = (str, type(None))
_OPTIONAL_INT = (int, type(None))
_OPTIONAL_NUMBER = (int, float, type(None))

MACHINE_FIELDS = {"cpu": str, "arch": str, "os": str, "python": str, "torch": str, "torchvision": str,
                  "onnxruntime": _OPTIONAL_STR, "threads": int, "physical_cores": int, "engine": _OPTIONAL_STR}
SETTINGS_FIELDS = {"runs": int, "warmup": int, "batch_size": int, "input_size": int, "data": _OPTIONAL_STR,
                   "holdout": _OPTIONAL_INT, "seed": int, "threads": int, "engine": _OPTIONAL_STR}
RESULT_FIELDS = {"name": str, "file": _OPTIONAL_STR, "path": _OPTIONAL_STR, "format": str, "runtime": str,
                 "method": str, "engine": _OPTIONAL_STR, "sha256": _OPTIONAL_STR, "size_mb": _NUMBER,
                 "parameters": _OPTIONAL_INT, "latency_ms": dict, "fps": _NUMBER, "top1": _OPTIONAL_NUMBER,
                 "top5": _OPTIONAL_NUMBER, "images": _OPTIONAL_INT, "skipped": _OPTIONAL_INT}
# written by newer versions of the kit; a report without them is still valid
OPTIONAL_RESULT_FIELDS = {"unstable": _OPTIONAL_STR, "peak_rss_mb": _OPTIONAL_NUMBER}
FORMATS = ("torchvision", "state_dict", "torchscript", "onnx", "pt2", "python")
RUNTIMES = ("pytorch", "onnxruntime")


def _type_name(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


MAX_RESULTS = 50          # rows of a report: the homework has five models
MAX_STRING = 500          # characters of any text field (file names, CPU names, paths)
MAX_SIZE_MB = 1e5
MAX_LATENCY_MS = 1e7      # about 3 hours for one image: anything above is not a measurement
SIGNED_INTS = {"seed"}    # every other integer of the schema is a count


def _shown(value) -> str:
    """A value for a one-line problem, capped (reports come from students)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_fields(section: dict, fields: dict, where: str) -> list[str]:
    problems = []
    for key, types in fields.items():
        if key not in section:
            problems.append(f"{where}: missing field '{key}'")
            continue
        value = section[key]
        # bool is an int in Python, but true is not a thread count
        if isinstance(value, bool) or not isinstance(value, types):
            problems.append(f"{where}.{key}: expected {_type_name(types)}, got {type(value).__name__} {_shown(value)}")
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{where}.{key}: must be a finite number, got {value}")
        elif isinstance(value, int) and value < 0 and key not in SIGNED_INTS:
            problems.append(f"{where}.{key}: a count cannot be negative, got {value}")
        elif isinstance(value, str) and len(value) > MAX_STRING:
            problems.append(f"{where}.{key}: over {MAX_STRING} characters")
    return problems


def _check_result(result: dict, where: str, has_data: bool) -> list[str]:
    problems = _check_fields(result, RESULT_FIELDS, where)
    problems += _check_fields(result, {key: types for key, types in OPTIONAL_RESULT_FIELDS.items() if key in result},
                              where)
    if problems:
        return problems
    if result["format"] not in FORMATS:
        problems.append(f"{where}.format: '{result['format']}' is not one of {', '.join(FORMATS)}")
    if result["runtime"] not in RUNTIMES:
        problems.append(f"{where}.runtime: '{result['runtime']}' is not one of {', '.join(RUNTIMES)}")
    if not 0 < result["size_mb"] <= MAX_SIZE_MB:
        problems.append(f"{where}.size_mb: must be positive and at most {MAX_SIZE_MB:g}, got {result['size_mb']}")
    if result["fps"] <= 0:
        problems.append(f"{where}.fps: must be positive, got {result['fps']}")
    latency = result["latency_ms"]
    for key in ("median", "p90", "mean"):
        value = latency.get(key)
        if isinstance(value, bool) or not isinstance(value, _NUMBER):
            problems.append(f"{where}.latency_ms.{key}: expected a number of milliseconds, got {_shown(value)}")
        elif not 0 < value <= MAX_LATENCY_MS:  # NaN fails this too
            problems.append(f"{where}.latency_ms.{key}: must be positive and at most {MAX_LATENCY_MS:g}, got {value}")
    if not any(p.startswith((f"{where}.latency_ms", f"{where}.fps")) for p in problems):
        if latency["p90"] < latency["median"]:
            problems.append(f"{where}.latency_ms: p90 {latency['p90']} is below the median {latency['median']}")
        if not math.isclose(result["fps"], 1e3 / latency["median"], rel_tol=0.01):
            problems.append(f"{where}.fps: {result['fps']} is not 1000 / median latency "
                            f"({1e3 / latency['median']:.2f})")
    for key in ("top1", "top5"):
        value = result[key]
        if value is not None and not 0 <= value <= 100:
            problems.append(f"{where}.{key}: a percentage must lie in 0..100, got {value}")
        if (value is None) == has_data:
            problems.append(f"{where}.{key}: must be " + ("a number when settings.data is set" if has_data
                                                          else "null when settings.data is null"))
    if result["top1"] is not None and result["top5"] is not None and result["top5"] < result["top1"]:
        problems.append(f"{where}: top5 {result['top5']} is below top1 {result['top1']}")
    if has_data and (result["images"] is None or result["images"] < 1):
        problems.append(f"{where}.images: must be at least 1 when settings.data is set, got {result['images']}")
    return problems


def validate_report(report: dict) -> list[str]:
    """Problems with a benchmark report, one human-readable line each; [] when it is valid."""
    if not isinstance(report, dict):
        return [f"the report must be a JSON object, got {type(report).__name__}"]
    schema = report.get("schema")
    if schema != SCHEMA:
        if isinstance(schema, str) and schema.startswith(SCHEMA_FAMILY):
            return [f"schema '{schema[:40]}' is another version than this kit reads ('{SCHEMA}'); "
                    "rerun benchmark.py from this kit"]
        return [f"schema: expected '{SCHEMA}', got {_shown(schema)}: not a quantlab benchmark report"]
    problems = _check_fields(report, {"created": str, "machine": dict, "settings": dict, "results": list}, "report")
    if problems:
        return problems
    try:
        datetime.datetime.strptime(report["created"], "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        problems.append(f"report.created: expected UTC time like 2026-11-26T01:30:00Z, got {_shown(report['created'])}")
    problems += _check_fields(report["machine"], MACHINE_FIELDS, "machine")
    problems += _check_fields(report["settings"], SETTINGS_FIELDS, "settings")
    if not report["results"]:
        problems.append("results: empty; a report holds at least one model")
    if len(report["results"]) > MAX_RESULTS:
        return problems + [f"results: {len(report['results'])} rows, over the {MAX_RESULTS} a report may hold; "
                           "benchmark only the models you hand in"]
    has_data = report["settings"].get("data") is not None
    for index, result in enumerate(report["results"]):
        where = f"results[{index}]"
        if not isinstance(result, dict):
            problems.append(f"{where}: expected an object, got {type(result).__name__}")
        else:
            problems += _check_result(result, where, has_data)
    return problems


# ---- output files (written atomically: a failed run leaves no half-written file) --------------

def write_json(report: dict, path: Path) -> None:
    """Write the report as JSON, atomically."""
    text = json.dumps(report, indent=2) + "\n"
    models.atomic_write(Path(path), lambda partial: partial.write_text(text, encoding="utf-8"), "--json")


CSV_COLUMNS = ("name", "path", "format", "runtime", "method", "engine", "size_mb", "parameters", "latency_median_ms",
               "latency_p90_ms", "latency_mean_ms", "fps", "top1", "top5", "images", "skipped", "speedup_vs_first",
               "size_ratio_vs_first", "top1_drop_vs_first", "threads", "cpu", "sha256", "peak_rss_mb", "unstable")


def csv_text(report: dict) -> str:
    """One row per model, with the ratios against the first model and the machine in every row."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    first = report["results"][0]
    for result in report["results"]:
        compared = ratios(result, first)
        latency = result["latency_ms"]
        writer.writerow({**{key: result[key] for key in CSV_COLUMNS if key in result},
                         "latency_median_ms": latency["median"], "latency_p90_ms": latency["p90"],
                         "latency_mean_ms": latency["mean"], "speedup_vs_first": compared["speedup"],
                         "size_ratio_vs_first": compared["size_ratio"], "top1_drop_vs_first": compared["top1_drop"],
                         "threads": report["settings"]["threads"], "cpu": report["machine"]["cpu"]})
    return buffer.getvalue()


def write_csv(report: dict, path: Path) -> None:
    """Write the results as CSV, atomically."""
    text = csv_text(report)
    models.atomic_write(Path(path), lambda partial: partial.write_text(text, encoding="utf-8"), "--csv")


def write_plot(report: dict, path: Path) -> None:
    """Top-1 accuracy against median latency, marker area proportional to size on disk; atomic PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed (CI, ssh on a Pi)
    import matplotlib.pyplot as plt

    results = report["results"]
    if any(r["top1"] is None for r in results):
        raise KitError("the plot needs accuracy: pass --data FOLDER with --plot")
    largest = max(r["size_mb"] for r in results)
    figure, axes = plt.subplots(figsize=(9, 4.5))
    for result in results:
        axes.scatter(result["latency_ms"]["median"], result["top1"], s=1500 * result["size_mb"] / largest, alpha=0.6,
                     label=f"{result['name']} ({result['size_mb']:.1f} MB)")
    machine, settings = report["machine"], report["settings"]
    axes.set_xlabel("median batch-1 latency (ms, lower is better)")
    axes.set_ylabel(f"top-1 accuracy (%) on {results[0]['images']} images")
    axes.set_title(f"{machine['cpu']}, {settings['threads']} threads, torch {machine['torch']}\n"
                   "marker area = size on disk", fontsize=9)
    axes.margins(0.25)
    axes.set_xlim(left=0)  # latency starts at zero: the gaps between models read as ratios
    axes.grid(alpha=0.3)
    # a legend rather than labels beside the markers: models of equal speed and accuracy would overlap
    legend = axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    for handle in legend.legend_handles:
        handle.set_sizes([40])
    figure.tight_layout()
    try:
        models.atomic_write(Path(path), lambda partial: figure.savefig(partial, format="png", dpi=120), "--plot")
    finally:
        plt.close(figure)


def format_table(report: dict) -> str:
    """The results as a text table, ratios against the first model, the machine in the header."""
    machine, settings = report["machine"], report["settings"]
    lines = [f"machine: {machine['cpu']} ({machine['arch']}), {settings['threads']} threads "
             f"({machine['physical_cores']} physical cores), torch {machine['torch']}, engine {settings['engine']}"
             + (f", int8: {machine['int8_isa_note']}" if machine.get("int8_isa_note") else ""),
             f"latency: batch 1, {settings['input_size']}x{settings['input_size']}, {settings['runs']} runs after "
             f"{settings['warmup']} warm-up"]
    header = (f"{'model':<24}{'format':<12}{'method':<8}{'engine':<8}{'MB':>7}{'params':>11}{'median ms':>11}"
              f"{'p90 ms':>9}{'mean ms':>9}{'FPS':>8}{'top-1':>7}{'top-5':>7}{'faster':>8}{'smaller':>8}{'top-1 drop':>11}"
              f"{'peak MB':>9}")
    lines += [header, "-" * len(header)]
    first = report["results"][0]

    def shown(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for result in report["results"]:
        compared = ratios(result, first)
        latency = result["latency_ms"]
        lines.append(
            f"{result['name'][:23]:<24}{result['format']:<12}{result['method'][:7]:<8}{shown(result['engine'], 's'):<8}"
            f"{result['size_mb']:>7.2f}{shown(result['parameters'], ',d'):>11}"
            f"{('!' if result.get('unstable') else '') + format(latency['median'], '.2f'):>11}"
            f"{latency['p90']:>9.2f}{latency['mean']:>9.2f}{result['fps']:>8.1f}{shown(result['top1'], '.1f'):>7}"
            f"{shown(result['top5'], '.1f'):>7}{compared['speedup']:>7.2f}x{compared['size_ratio']:>7.2f}x"
            f"{shown(compared['top1_drop'], '+.1f'):>11}{shown(result.get('peak_rss_mb'), '.0f'):>9}")
    if first["images"] is not None:
        skipped = first["skipped"]
        lines.append(f"accuracy on {first['images']} images from {settings['data']}"
                     + (f" (holdout: after the first {settings['holdout']})" if settings["holdout"] else "")
                     + (f"; {skipped} unreadable files skipped" if skipped else ""))
    lines.append(f"ratios against the first model ({first['name']}): faster = its median / this median, "
                 "smaller = its size / this size, top-1 drop in percentage points; peak MB: the process's peak "
                 "resident memory while that model ran (every model loaded so far included)")
    unstable = [result for result in report["results"] if result.get("unstable")]
    for result in unstable:
        lines.append(f"! UNSTABLE latency of {result['name']}: {result['unstable']}")
    return "\n".join(lines)
