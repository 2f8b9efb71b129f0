"""ONNX Runtime path: export a float model to ONNX, then quantize it with ONNX Runtime.

The exported file has one input named ``input`` (batch x 3 x S x S, the batch
axis dynamic) and one output named ``logits``. ONNX Runtime quantizes it two ways:

- dynamic: int8 weights; each activation is quantized at run time from its own
  min/max (no calibration data). Suits models whose time goes into big matrix
  products (Linear, LSTM, transformers).
- static: int8 weights and activations, with activation ranges calibrated on
  photos beforehand, written as QuantizeLinear/DequantizeLinear pairs (QDQ)
  that ONNX Runtime fuses into int8 kernels. Suits CNNs such as MobileNetV2.

Static quantization picks its number format for the CPU it runs on (quantize
on the machine that will run the model, or pass ``reduce_range``): uint8
activations with int8 weights (U8S8) where ONNX Runtime's U8S8 kernels are exact
(x86 with VNNI, x86 with SSE4 only, ARM); on x86 CPUs with AVX2 or AVX-512 but
no VNNI, whose U8S8 kernels add pairs of products in 16 bits and saturate, the
same with 7-bit weights (``reduce_range``), which fit. It decides by measuring:
``cpu.onnxruntime_u8s8_error`` runs one full-range convolution through ONNX
Runtime here. (int8 activations, S8S8, saturated as well on an emulated AVX2
CPU, and on an AVX-512 VNNI CPU ran about twice as slow as U8S8, close to fp32;
onnxruntime 1.32.)
The choice and the reason are recorded in the file.

Example (what notebooks/06_onnx_runtime.ipynb does):
    from quantlab import data, models, onnx_tools
    fp32 = models.mobilenet_v2_fp32()
    onnx_tools.export_onnx(fp32, Path("mnv2.onnx"))
    calibration, _ = data.split(data.course_dataset()[0], first_n=200, seed=0)
    onnx_tools.quantize_onnx_static(Path("mnv2.onnx"), Path("mnv2_qdq.onnx"), data.loader(calibration))
    onnx_tools.quantize_onnx_dynamic(Path("mnv2.onnx"), Path("mnv2_dynamic.onnx"))
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from quantlab import cpu
from quantlab.errors import KitError, first_line
from quantlab.files import atomic_write
from quantlab.models import OnnxModel
from quantlab.quantize import batch_images  # the image tensor of a calibration batch, as PyTorch's path reads it

OPSET = 18  # the lowest opset torch's exporter writes natively; ONNX Runtime 1.14 and later (the Pi's 1.23 too) run it
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
CALIBRATE_METHODS = ("minmax", "entropy", "percentile")
METADATA_PREFIX = "quantlab."  # keys of the facts written into the ONNX file's metadata_props
PROBE_MAX_ERROR = 0.05  # relative error of cpu.onnxruntime_u8s8_error above which ONNX Runtime's U8S8 sums saturate


# ---- export ---------------------------------------------------------------------


def _refuse_quantized(model: nn.Module) -> None:
    """An eager int8 model has no ONNX translation: name its first int8 layer and the fix."""
    for name, module in model.named_modules():
        if type(module).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")):
            raise KitError(
                f"cannot export layer '{name or type(module).__name__}' ({type(module).__name__}): it is already "
                "PyTorch int8, which ONNX cannot express; export the fp32 model and quantize it with "
                "quantize_onnx_static or quantize_onnx_dynamic"
            )


@contextlib.contextmanager
def _layer_tracker(model: nn.Module) -> Iterator[list[str]]:
    """Yield the stack of layers being run; after an exception it still holds the layer that raised it."""
    stack: list[str] = []
    names = {id(module): name for name, module in model.named_modules()}

    def enter(module: nn.Module, _inputs) -> None:
        stack.append(names.get(id(module), type(module).__name__))

    def leave(_module: nn.Module, _inputs, _output) -> None:
        stack.pop()

    handles = [
        handle
        for module in model.modules()
        for handle in (module.register_forward_pre_hook(enter), module.register_forward_hook(leave))
    ]
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def _describe_layer(model: nn.Module, name: str) -> str:
    try:
        module = model.get_submodule(name) if name else model
    except AttributeError:  # a path torch.export spelled differently: the name alone still helps
        return f"'{name}'"
    return f"'{name or '(top level)'}' ({type(module).__name__})"


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.export prints whole graphs and guard warnings on failure, the exporter its progress:
    students get one line instead (the KitError)."""
    loggers = [
        logging.getLogger(name)
        for name in ("torch.export", "torch._export", "torch.fx", "torch._dynamo", "torch.onnx", "onnxscript")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _layer_of_node(program: torch.export.ExportedProgram, message: str) -> str | None:
    """The innermost layer that a failing exported-graph node (named in ``message``) came from."""
    for node in program.graph.nodes:
        if f"node {node.name}" in message or f"%{node.name}" in message:
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, _type = list(stack.values())[-1]
                return path.replace("L['self'].", "").replace("L__self___", "")
    return None


def _name_batch_axis(path: Path) -> None:
    """torch.export calls the batch axis by a symbol ("s77"): call it "batch" everywhere in the file."""
    import onnx

    model = onnx.load(str(path))
    symbols = {
        dim.dim_param for value in model.graph.input for dim in value.type.tensor_type.shape.dim[:1] if dim.dim_param
    }
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in symbols:
                dim.dim_param = BATCH_AXIS
    onnx.save(model, str(path))


def export_onnx(
    model_fp32: nn.Module,
    path: Path,
    input_size: int = 224,
    opset: int = OPSET,
    example_input: torch.Tensor | None = None,
) -> Path:
    """Export a float model to ONNX: input "input" [batch, 3, S, S], output "logits", dynamic batch axis.

    ``example_input`` (batch first, batch of 2 or more) replaces the 3xSxS image
    input for models that take something else, e.g. feature vectors.
    Two steps, each with its own error: ``torch.export`` traces the model (a layer
    it cannot trace is named), then the graph is translated to ONNX operators
    (an operator without translation is named with the layer it came from). The
    file appears only when both worked.
    """
    path = Path(path)
    _refuse_quantized(model_fp32)
    was_training = model_fp32.training
    model_fp32.eval()  # BatchNorm and Dropout in inference form
    # batch 2: torch.export would treat a batch of 1 as a constant and drop the dynamic axis
    example = torch.randn(2, 3, input_size, input_size) if example_input is None else example_input
    if example.dim() == 0 or example.shape[0] < 2:
        raise KitError(f"example_input needs a batch axis of 2 or more, got shape {list(example.shape)}")
    batch = torch.export.Dim("batch", min=1, max=1024)
    try:
        with _quiet_exporter(), _layer_tracker(model_fp32) as running:
            try:
                program = torch.export.export(model_fp32, (example,), dynamic_shapes=({0: batch},), strict=False)
            except Exception as error:
                where = _describe_layer(model_fp32, running[-1]) if running else "the model's own forward"
                raise KitError(
                    f"cannot export layer {where} to ONNX: torch.export failed ({first_line(error, limit=200)})"
                ) from None

        def write(partial: Path) -> None:
            with _quiet_exporter():
                torch.onnx.export(
                    program,
                    f=str(partial),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    opset_version=opset,
                    dynamo=True,
                    external_data=False,
                    verbose=False,
                )
            _name_batch_axis(partial)

        try:
            atomic_write(path, write)
        except KitError:
            raise
        except Exception as error:
            summary = first_line(error, limit=200)
            layer = _layer_of_node(program, str(error))
            where = f"layer {_describe_layer(model_fp32, layer)}" if layer is not None else "the model"
            raise KitError(f"cannot translate {where} to ONNX opset {opset}: {summary}") from None
    finally:
        model_fp32.train(was_training)
    return path


def max_abs_diff(model_fp32: nn.Module, onnx_path: Path, batch: torch.Tensor) -> float:
    """Largest absolute difference between PyTorch's and ONNX Runtime's logits on ``batch``."""
    model_fp32.eval()
    with torch.inference_mode():
        expected = model_fp32(batch)
    got = OnnxModel(Path(onnx_path), threads=torch.get_num_threads())(batch)
    return float((expected - got).abs().max())


# ---- quantization ------------------------------------------------------------------

# operators that only a quantized ONNX graph holds: how the kit tells int8 files from float ones
QUANTIZED_ONNX_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
}

CALIBRATION_CHUNK = 16  # images whose activations ONNX Runtime holds at once while calibrating


def _planned_images(batches: Iterable) -> int | None:
    """How many images ``batches`` will yield (a data loader, or a list of tensors); None when unknown."""
    dataset = getattr(batches, "dataset", None)
    if dataset is not None:
        return len(dataset)
    if isinstance(batches, (list, tuple)):
        return sum(len(images) for images in map(batch_images, batches) if images is not None)
    return None


def _calibration_reader(batches: Iterable, input_name: str, progress: bool):
    """An onnxruntime CalibrationDataReader over the kit's batches, one image per call; ``.images`` counts them.

    One image at a time: the entropy and percentile calibrators stack what each call
    returns, which fails when the last batch is shorter than the others.
    It also reads in chunks (``set_range``, ONNX Runtime's ``CalibStridedMinMax``):
    the calibrator folds each chunk's activations into its ranges or histograms
    and lets them go, so memory stays flat however many photos calibrate
    (all at once, 200 photos took 13.8 GB). Images are read lazily, in order.
    """
    from onnxruntime.quantization import CalibrationDataReader

    class ImageReader(CalibrationDataReader):
        def __init__(self) -> None:
            total = len(batches) if hasattr(batches, "__len__") else None
            self.batches = iter(tqdm(batches, desc="calibrating", unit="batch", total=total, disable=not progress))
            self.pending: list[torch.Tensor] = []
            self.images = 0
            self.planned = _planned_images(batches)
            self.chunk: int | None = None  # set by quantize_onnx_static
            self.left_in_chunk: int | None = None  # None: no chunks, read to the end
            self.started_chunk = False
            self.chunks = 0
            self.last: dict | None = None

        def __len__(self) -> int:
            # ONNX Runtime wants a length that the chunk divides: round up, the last chunk just ends early
            return -(-(self.planned or 0) // self.chunk) * self.chunk if self.chunk else (self.planned or 0)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.left_in_chunk = end_index - start_index
            self.chunks += 1
            self.started_chunk = False

        def get_next(self) -> dict | None:
            if self.left_in_chunk is not None:
                if self.left_in_chunk == 0:
                    return None
                self.left_in_chunk -= 1
            while not self.pending:
                batch = next(self.batches, StopIteration)
                if batch is StopIteration:
                    # unreadable photos were dropped, so the last chunk can come up empty, which a calibrator
                    # refuses: it gets the last image again (min/max ranges cannot change; a histogram
                    # counts that one image twice)
                    if self.left_in_chunk is not None and not self.started_chunk and self.last is not None:
                        self.started_chunk = True
                        return self.last
                    return None
                images = batch_images(batch)
                if images is not None:
                    self.pending = list(images.split(1))
            self.images += 1
            self.started_chunk = True
            self.last = {input_name: self.pending.pop(0).numpy()}
            return self.last

    return ImageReader()


def _check_onnx_file(path: Path) -> None:
    if not path.is_file():
        raise KitError(f"ONNX file {path} does not exist; make one with export_onnx")
    try:
        import onnx

        onnx.checker.check_model(str(path))
    except ImportError:
        raise KitError("onnx is not installed; pip install onnx onnxruntime") from None
    except Exception as error:
        raise KitError(
            f"{path} is not a valid ONNX model ({first_line(error, limit=120)}); export one with export_onnx"
        ) from None


def _preprocess(fp32_onnx: Path, folder: Path) -> Path:
    """ONNX Runtime's recommended first step: symbolic shape inference and graph optimisation."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = folder / "preprocessed.onnx"
    try:
        quant_pre_process(str(fp32_onnx), str(prepared))
    except Exception as error:
        raise KitError(
            f"ONNX Runtime could not pre-process {fp32_onnx} for quantization ({first_line(error, limit=200)}); "
            "export it again with export_onnx"
        ) from None
    return prepared


def _save_with_metadata(quantized: Path, fp32_onnx: Path, output: Path, metadata: dict[str, object]) -> None:
    """Record how the file was made inside it (metadata_props), then move it into place atomically."""
    import onnx

    model = onnx.load(str(quantized))
    # shape inference renames the batch axis (e.g. "s77"): give back the exported names and shapes
    original = onnx.load(str(fp32_onnx), load_external_data=False).graph
    for kept, exported in ((model.graph.input, original.input), (model.graph.output, original.output)):
        by_name = {value.name: value for value in exported}
        for value in kept:
            if value.name in by_name:
                value.type.CopyFrom(by_name[value.name].type)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, json.dumps(value)  # JSON: numbers and booleans read back typed
    atomic_write(output, lambda partial: onnx.save(model, str(partial)))


def _quantize(fp32_onnx: Path, output: Path, quantize: Callable[[Path, Path], dict[str, object]]) -> Path:
    """Check, pre-process, quantize into a temporary folder, then write ``output`` in one step."""
    fp32_onnx, output = Path(fp32_onnx), Path(output)
    _check_onnx_file(fp32_onnx)
    if output.resolve() == fp32_onnx.resolve():
        raise KitError(f"the output {output} would overwrite the fp32 model; pick another name")
    with tempfile.TemporaryDirectory(prefix="quantlab-onnx-") as folder:
        prepared = _preprocess(fp32_onnx, Path(folder))
        quantized = Path(folder) / "quantized.onnx"
        metadata = quantize(prepared, quantized)
        _save_with_metadata(quantized, fp32_onnx, output, metadata)
    return output


def quantize_onnx_dynamic(fp32_onnx: Path, output: Path) -> Path:
    """ONNX Runtime dynamic quantization: 8-bit weights, activations quantized at run time. No calibration.

    The weights are uint8 (QUInt8), not ONNX Runtime's default int8: a convolution becomes ConvInteger, and
    onnxruntime 1.23.2 (the Pi's pin) has no ConvInteger kernel for int8 weights ("NOT_IMPLEMENTED: Could not
    find an implementation for ConvInteger(10)"); with uint8 weights it runs there and on x86 alike (same top-1
    on 200 held-out photos as int8 weights with onnxruntime 1.32).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def run(prepared: Path, quantized: Path) -> dict[str, object]:
        quantize_dynamic(str(prepared), str(quantized), weight_type=QuantType.QUInt8)
        return {
            "method": "dynamic",
            "quant_format": "QOperator",
            "granularity": "per_tensor",
            "weight_type": "uint8",
            "activation_type": "uint8, quantized at run time",
        }

    return _quantize(fp32_onnx, output, run)


def choose_static_format(reduce_range: bool | None = None) -> dict[str, object]:
    """The static QDQ number format for this CPU, measured with cpu.onnxruntime_u8s8_error, and why;
    ``reduce_range`` forces it.

    Returns the metadata quantize_onnx_static records: activation_type, weight_type, reduce_range,
    target_int8_isa (this CPU's, quantlab.cpu) and format_reason.
    """
    isa = cpu.int8_isa()
    if reduce_range is not None:
        reason = f"reduce_range={reduce_range} chosen by the caller (this CPU: {isa.label})"
    else:
        full_error = cpu.onnxruntime_u8s8_error(reduce_range=False)
        if full_error <= PROBE_MAX_ERROR:
            reduce_range = False
            reason = (
                f"U8S8 is exact on this CPU ({isa.label}): a full-range probe convolution (255 x 127) "
                f"matched fp32 within {100 * full_error:.1f} %"
            )
        else:
            reduce_range = True
            reduced_error = cpu.onnxruntime_u8s8_error(reduce_range=True)
            reason = (
                f"U8S8 saturates on this CPU ({isa.label}): a full-range probe convolution (255 x 127) gave "
                f"{100 * (1 - full_error):.0f} % of fp32's sum; with 7-bit weights (reduce_range) "
                f"it was within {100 * reduced_error:.1f} %"
            )
    return {
        "activation_type": "uint8",
        "weight_type": "int8 (7-bit range)" if reduce_range else "int8",
        "reduce_range": reduce_range,
        "target_int8_isa": isa.name,
        "format_reason": reason,
    }


def quantize_onnx_static(
    fp32_onnx: Path,
    output: Path,
    calibration_batches: Iterable,
    per_channel: bool = True,
    calibrate_method: str = "percentile",
    progress: bool = True,
    reduce_range: bool | None = None,
    chunk_images: int | None = CALIBRATION_CHUNK,
) -> Path:
    """ONNX Runtime static quantization in QDQ format, activation ranges calibrated on ``calibration_batches``.

    ``calibration_batches`` yields image tensors (Nx3xSxS), (images, labels)
    pairs or None, like quantlab.data.loader. The number of images calibrated
    on is recorded in the file (see ``read_metadata``: ``calibration_images``).
    ``percentile`` (the default) ignores the rarest activation outliers; on
    MobileNetV2 it kept top-1 within 1 point of fp32 where ``minmax`` did not
    (notebooks/06_onnx_runtime.ipynb measures both).
    ``reduce_range`` (7-bit weights) defaults to what ``choose_static_format`` measures on this CPU:
    False where ONNX Runtime's U8S8 kernels are exact, True where they saturate. The choice and its
    reason are recorded in the file (``format_reason``).
    ``chunk_images``: calibrate in chunks of at most this many images, so memory
    stays flat in the number of photos (None: all at once, as ONNX Runtime does
    by default). Min/max ranges come out identical; histograms are merged
    chunk by chunk, which moves percentile and entropy ranges slightly.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if calibrate_method not in methods:
        raise KitError(f"unknown calibrate_method '{calibrate_method}'; use one of {', '.join(CALIBRATE_METHODS)}")

    number_format = choose_static_format(reduce_range)

    def run(prepared: Path, quantized: Path) -> dict[str, object]:
        reader = _calibration_reader(calibration_batches, INPUT_NAME, progress)
        chunk = reader.chunk = chunk_images if chunk_images and reader.planned else None
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their settings
                quantize_static(
                    str(prepared),
                    str(quantized),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=methods[calibrate_method],
                    reduce_range=bool(number_format["reduce_range"]),
                    extra_options={"CalibStridedMinMax": chunk} if chunk else {},
                )
        except KitError:
            raise
        except Exception as error:
            if reader.images == 0:
                raise KitError("no calibration image could be read; pass a folder of readable photos") from None
            raise KitError(
                f"ONNX Runtime static quantization failed ({first_line(error, limit=200)}); check that the "
                f"calibration images match the model's input"
            ) from None
        if reader.images == 0:
            raise KitError("no calibration image could be read; pass a folder of readable photos")
        return {
            "method": "static",
            "quant_format": "QDQ",
            "granularity": "per_channel" if per_channel else "per_tensor",
            "calibrate_method": calibrate_method,
            "calibration_images": reader.images,
            "calibration_chunk_images": chunk if reader.chunks else None,
            **number_format,
        }

    return _quantize(fp32_onnx, output, run)


def _metadata_of(model) -> dict[str, object]:
    facts = {}
    for entry in model.metadata_props:
        if entry.key.startswith(METADATA_PREFIX):
            try:
                facts[entry.key[len(METADATA_PREFIX) :]] = json.loads(entry.value)
            except ValueError:
                facts[entry.key[len(METADATA_PREFIX) :]] = entry.value
    return facts


def read_metadata(onnx_path: Path) -> dict[str, object]:
    """What quantize_onnx_* recorded in the file (method, granularity, calibration_images, ...); {} for others."""
    import onnx

    try:
        return _metadata_of(onnx.load(str(onnx_path), load_external_data=False))
    except Exception:  # noqa: BLE001 - an ORT-format (.ort) or damaged file holds no metadata onnx can read
        return {}


def sidecar_fields(onnx_path: Path) -> dict[str, object]:
    """The facts about an ONNX file that its JSON sidecar records (quantize_model.py --format onnx).

    ``method`` is "fp32" for a file that quantize_onnx_* did not make.
    """
    import onnx
    import onnxruntime

    model = onnx.load(str(onnx_path), load_external_data=False)
    (model_input,), outputs = model.graph.input, model.graph.output
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)
    return {
        "method": "fp32",
        "format": "onnx",
        "runtime": "onnxruntime",
        "onnxruntime": onnxruntime.__version__,
        "opset": opset,
        "input_name": model_input.name,
        "input_shape": [d.dim_param or d.dim_value for d in model_input.type.tensor_type.shape.dim],
        "output_name": outputs[0].name if outputs else None,
        **_metadata_of(model),
    }
