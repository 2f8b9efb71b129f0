"""PT2E: PyTorch 2's quantization, the API that replaces eager mode and TorchScript.

Eager mode needs a model written for it (QuantStub/DeQuantStub, fusable modules,
FloatFunctional adds); PT2E takes any model that ``torch.export`` can capture:

1. ``torch.export`` captures the forward pass as a graph of ATen operators;
2. a Quantizer for the target annotates that graph: ``X86InductorQuantizer``
   on x86 (int8 kernels of oneDNN, compiled by inductor),
   ``XNNPACKQuantizer`` for ARM (ExecuTorch's XNNPACK backend, phones and the Pi);
3. ``prepare_pt2e`` inserts observers, the calibration photos run through it,
   ``convert_pt2e`` writes quantize/dequantize pairs with the measured ranges;
4. the result is exported again and saved with ``torch.export.save`` (``.pt2``)
   plus the kit's JSON sidecar.

``load_exported`` reads it back with ``torch.export.load``, after ``check_archive``
has refused every entry that torch would unpickle (a .pt2 from elsewhere must not
run code when opened); on x86 it compiles the exported graph with inductor and
``freezing`` (``InductorRunner``: weights become constants, so inductor folds the
quantize/dequantize pairs into oneDNN int8 kernels: without freezing the graph
runs float kernels between (de)quantize steps). Without a compiler, or for the
ARM target, the exported program runs as it is: correct, but not fast.

The quantizers and prepare/convert live in torchao (``pip install torchao``),
not in torch: ``require_torchao`` says so in one line when it is missing.

Example:
    from quantlab import data, pt2e, user_model
    model = user_model.build_user_model("my_net.py:build", "my_net.pth")
    calibration, _ = data.split(data.course_dataset()[0], first_n=200, seed=0)
    program, facts = pt2e.quantize(model, data.loader(calibration), target="x86", input_size=224)
    pt2e.save(program, Path("my_net_int8.pt2"), {"method": "static", **facts})
    int8 = pt2e.load_exported(Path("my_net_int8.pt2"))
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import io
import json
import logging
import pickle
import platform
import re
import time
import traceback
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils import _pytree as pytree

from quantlab import compat, cpu, models
from quantlab.errors import KitError, first_line
from quantlab.quantize import calibrate

SUFFIX = ".pt2"
TARGETS = ("x86", "arm")
# what to install when a PT2E file needs torchao: the release for this torch, from quantlab.compat's table
TORCHAO_HINT = compat.install_hint(torch.__version__)
MAX_BATCH = 1024
QUANTIZE_OPS = ("quantized_decomposed.", "torchao.")  # the namespaces of convert_pt2e's (de)quantize operators


def is_exported_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() == SUFFIX


def require_torchao() -> str:
    """torchao's version; a KitError naming the torchao to install when it is missing or does not fit this torch.

    The fit is decided from package metadata *before* the import (quantlab.compat's table): a torchao built
    for another torch can abort the whole process at import, which no ``except`` catches.
    """
    problem = compat.torchao_problem(torch.__version__, compat.installed_version("torchao"))
    if problem is not None:
        raise KitError(problem)
    try:
        with quiet_torch():
            import torchao  # noqa: F401
            from torchao.quantization.pt2e import quantize_pt2e  # noqa: F401
    except ImportError as error:
        pin = compat.torchao_for(torch.__version__)
        raise KitError(
            f"PT2E quantization needs torchao, which does not load "
            f"({first_line(error, with_type=True, limit=80)}); "
            f"pip install torchao=={pin} (the release for torch {torch.__version__})"
        ) from None
    return torchao.__version__


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """torch.export and torchao warn about internals a student cannot act on (deprecations, pytree notes)."""
    loggers = [
        logging.getLogger(name)
        for name in (
            "torch.export",
            "torch._export",
            "torch.utils._pytree",
            "torch.utils.cpp_extension",
            "torch._dynamo",
            "torch._inductor",
            "torch.fx",
        )
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        # a failed capture prints the partial graph (dozens of lines) before raising: the error says enough
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@functools.cache
def inductor_int8_available() -> bool:
    """Whether this machine runs PT2E int8 through inductor's oneDNN kernels: x86, and a torchao whose
    X86InductorQuantizer annotates this torch's graphs (torchao 0.15 on torch 2.9 annotates none: its
    "quantized" model would stay float), probed once on a one-layer graph."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if not _torchao_fits():  # nothing to probe with: load_exported says what to install
        return True
    return _x86_quantizer_annotates()


def _x86_quantizer_annotates() -> bool:
    try:
        with quiet_torch():
            from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
                X86InductorQuantizer,
                get_default_x86_inductor_quantization_config,
            )

            graph = torch.export.export(nn.Conv2d(3, 4, 3).eval(), (torch.randn(1, 3, 8, 8),), strict=False).module()
            quantizer = X86InductorQuantizer()
            quantizer.set_global(get_default_x86_inductor_quantization_config())
            quantizer.annotate(graph)
    except Exception:  # noqa: BLE001 - a quantizer that fails on a conv annotates nothing the kit can use
        return False
    return any("quantization_annotation" in node.meta for node in graph.graph.nodes)


def target_for(engine: str) -> str:
    """The PT2E target for the kit's --engine: qnnpack (the Pi's engine) and ARM CPUs mean arm, else x86."""
    if engine == "qnnpack" or platform.machine().lower() in ("arm64", "aarch64", "armv7l"):
        return "arm"
    return "x86"


def quantizer_for(target: str, granularity: str = "per_channel"):
    """(the torchao/ExecuTorch Quantizer for ``target``, a line saying which)."""
    require_torchao()
    if target == "x86":
        if granularity != "per_channel":
            raise KitError(
                "X86InductorQuantizer quantizes weights per channel only; drop --granularity per_tensor "
                "(or use --engine qnnpack for the ARM quantizer, which has both)"
            )
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )

        # inductor runs oneDNN's int8 kernels: where their uint8 x int8 sums saturate (no VNNI), 7-bit
        # activations keep every pair of products inside 16 bits, as the x86 engine's reduce_range does
        reduce_range = cpu.engine_isa("onednn").saturates_u8s8
        quantizer = X86InductorQuantizer()
        quantizer.set_global(get_default_x86_inductor_quantization_config(reduce_range=reduce_range))
        activations = "7-bit uint8 activations (reduce_range: no VNNI here)" if reduce_range else "uint8 activations"
        return quantizer, f"X86InductorQuantizer (torchao): {activations}, per-channel int8 weights, inductor"
    if target == "arm":
        per_channel = granularity == "per_channel"
        try:  # ExecuTorch owns the XNNPACK quantizer; torchao keeps a copy for its tests
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )

            where = "ExecuTorch"
        except ImportError:
            from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

            where = "torchao's copy; pip install executorch to run it with XNNPACK"
        quantizer = XNNPACKQuantizer()
        quantizer.set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
        return quantizer, f"XNNPACKQuantizer ({where}): int8 activations, {granularity} int8 weights"
    raise KitError(f"unknown PT2E target '{target}'; use one of {', '.join(TARGETS)}")


def _where_in_model(error: BaseException, model: nn.Module) -> str:
    """' at my_net.py line 12: if x.sum() > 0:' — the last traceback frame in the model's own code."""
    try:
        own_file = Path(inspect.getfile(type(model))).resolve()
    except (TypeError, OSError):
        return ""
    frames = [
        frame for frame in traceback.extract_tb(error.__traceback__) if Path(frame.filename).resolve() == own_file
    ]
    # non-strict export runs the forward in Python: errors raised inside it carry its frames
    user_frame = frames[-1] if frames else None
    if user_frame is None:  # strict-mode errors keep the user's stack in the message instead
        return ""
    code = f": {user_frame.line.strip()}" if user_frame.line else ""
    return f" at {own_file.name} line {user_frame.lineno}{code}"


def export(model: nn.Module, input_size: int, batch: int = 2) -> torch.export.ExportedProgram:
    """``torch.export`` of an eval-mode model for 3 x S x S images, batch axis dynamic.

    A model it cannot capture (data-dependent ``if``, ``.item()``, numpy calls in
    forward, ...) is a KitError naming the line of the model and the reason.
    """
    if not isinstance(model, torch.fx.GraphModule):  # an exported graph has no train/eval switch
        model.eval()
    # batch 2: torch.export would specialise a batch of 1 into a constant
    example = (torch.randn(batch, 3, input_size, input_size),)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
    try:
        with quiet_torch():
            return torch.export.export(model, example, dynamic_shapes=dynamic, strict=False)
    except Exception as error:  # noqa: BLE001 - whatever export refuses, the student needs the line and why
        raise KitError(
            f"torch.export cannot capture the model{_where_in_model(error, model)} ({first_line(error, with_type=True, limit=200)}); "
            "PT2E needs a forward without data-dependent Python control flow, .item() or numpy calls"
        ) from None


def quantize(
    model: nn.Module | torch.export.ExportedProgram,
    calibration_batches: Iterable,
    target: str,
    input_size: int,
    granularity: str = "per_channel",
) -> tuple[torch.export.ExportedProgram, dict]:
    """Export (unless ``model`` is exported already), annotate for ``target``, calibrate on
    ``calibration_batches``, convert, export again.

    Returns the quantized ExportedProgram and facts for the sidecar (quantizer,
    calibration image count, torchao version).
    """
    torchao_version = require_torchao()
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    quantizer, described = quantizer_for(target, granularity)
    program = model if isinstance(model, torch.export.ExportedProgram) else export(model, input_size)
    with quiet_torch():
        prepared = prepare_pt2e(program.module(), quantizer)
    if not any(str(node.target).startswith("activation_post_process") for node in prepared.graph.nodes):
        raise KitError(
            f"{described} inserted no observer into this model (torch {torch.__version__}): its int8 model would "
            "stay float; on x86 with torch 2.9 use --engine qnnpack (target arm, XNNPACKQuantizer), or a newer torch"
        )
    images = calibrate(prepared, calibration_batches, progress=False)
    return convert_and_export(prepared, input_size), {
        "quantizer": described,
        "target": target,
        "calibration_images": images,
        "torchao": torchao_version,
        "granularity": granularity,
    }


def convert_and_export(prepared: torch.fx.GraphModule, input_size: int) -> torch.export.ExportedProgram:
    """A prepared (PTQ-calibrated or QAT-trained) graph converted to int8 and exported again, ready for ``save``."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    with quiet_torch():
        converted = convert_pt2e(prepared)
    _drop_unused_weights(converted)
    quantized = export(converted, input_size)
    quantized.example_inputs = None  # torch.export.save would store them: 1.2 MB of noise at 224x224
    return quantized


def _drop_unused_weights(graph_module: torch.fx.GraphModule) -> None:
    """convert_pt2e adds int8 copies of the weights but keeps the float ones as attributes: drop those.

    Exporting again would save every attribute, doubling the file.
    """
    graph_module.graph.eliminate_dead_code()
    used = {node.target for node in graph_module.graph.nodes if node.op == "get_attr"}
    for name, _ in [*graph_module.named_parameters(), *graph_module.named_buffers()]:
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            delattr(graph_module.get_submodule(owner) if owner else graph_module, leaf)
    graph_module.recompile()


def save(program: torch.export.ExportedProgram, output: Path, sidecar: dict) -> dict:
    """``torch.export.save`` into ``output`` (.pt2) with its JSON sidecar, atomically; the sidecar."""

    def write(path: Path) -> dict:
        with quiet_torch():
            torch.export.save(program, str(path))
        return {}

    return models.save_with_sidecar(Path(output), write, sidecar)


class ExportedModel:
    """A loaded .pt2: called like a module; ``compiled`` says whether inductor or ExecuTorch runs it
    (``runner``: which; ``compile_s``: how long its first compile or its lowering took); ``graph_module`` is the
    exported graph itself (what quantlab.coverage reads)."""

    def __init__(
        self,
        module: nn.Module,
        compiled: bool,
        note: str | None,
        quantized: bool,
        graph_module: nn.Module | None = None,
        compile_s: float | None = None,
        runner: str | None = None,
    ) -> None:
        self.module = module
        self.runner = runner or ("inductor" if compiled else None)  # "inductor" | "executorch" | None
        self.graph_module = graph_module if graph_module is not None else module
        self.compiled = compiled
        self.note = note
        self.quantized = quantized
        self.compile_s = compile_s  # seconds inductor took for the first shape (None: not compiled)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.module(batch)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.module.parameters()


# What a .pt2 archive may hold, under its one top folder: the graph as JSON, raw tensor bytes and their JSON
# configs, the sample inputs, the version files. torch.export.load unpickles (weights_only=False) any weight or
# constant marked use_pickle, "opaque" and "custom" objects, legacy data/weights/<model>.pt files and sample
# inputs that fail to load with weights_only=True: a pickle runs code, so each of these is refused first.
_ARCHIVE_FILES = ("archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id")
_ARCHIVE_FOLDERS = ("models/", "data/weights/", "data/constants/", "data/sample_inputs/", "extra/")


def _inspected(name: str) -> bool:
    """The entries check_archive reads: the graph, the configs, the sample inputs (not the tensors' bytes)."""
    return name.startswith(("models/", "data/sample_inputs/")) or name.endswith("_config.json")


def _archive_entries(path: Path) -> dict[str, bytes | None]:
    """Every file of a .pt2 archive by its name below the top folder, with its bytes where check_archive reads
    them (a model's weights are left for torch to read once); a KitError if the zip is not plain."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if len(set(names)) != len(names):  # two entries of one name: torch could read the other one
                raise KitError(f"{path} holds two files of the same name: refused (not what torch.export.save writes)")
            tops = {name.split("/", 1)[0] for name in names}
            if len(tops) != 1 or any("/" not in name for name in names):
                raise KitError(f"{path} is not a .pt2 archive (torch.export.save writes one top folder)")
            below_top = {name.split("/", 1)[1]: name for name in names if not name.endswith("/")}
            return {short: archive.read(name) if _inspected(short) else None for short, name in below_top.items()}
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as error:
        raise KitError(f"{path} is not a .pt2 archive torch.export.save wrote ({type(error).__name__})") from None


# Graph node targets a classifier's exported program calls: ATen and the (de)quantize operators. torch's verifier
# already refuses most other callables; the kit refuses them before torch reads the graph at all.
_ALLOWED_TARGET = re.compile(r"torch\.ops\.(aten|quantized_decomposed|torchao|prims)\.\w+\.\w+")
_REFUSED_OPERATORS = ("from_file",)  # ATen operators that read or write files
# torch.export's shape guards are Python source that ExportedProgram.module() compiles and runs at each call:
# a guard may name the inputs (L['x']) and their sizes, nothing else.
_GUARD_NAMES = {"L", "size", "stride", "and", "or", "not", "True", "False"}
# Symbolic sizes (a dynamic batch axis) are sympy text that torch.export.load hands to sympy.sympify, which
# evaluates Python: one may name symbols (s77), numbers, arithmetic and sympy's and torch's size functions only.
_SIZE_NAMES = {
    *("Symbol", "Integer", "Float", "Rational", "positive", "integer", "real", "nonnegative", "True", "False"),
    *("Max", "Min", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Abs"),
    *("FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv"),
    *("LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "TruncToFloat", "TruncToInt"),
    *("RoundToInt", "RoundDecimal", "ToFloat", "Identity", "IsNonOverlappingAndDenseIndicator"),
}
_SYMBOL = re.compile(r"[a-z]+\d+")  # torch's size symbols: s77, u0, ...


def _symbolic_targets() -> set[str]:
    """The names torch writes for the integer/boolean operations of symbolic shapes (operator.add, math.ceil...)."""
    try:
        from torch._export.serde.serialize import _SYM_OPS
    except ImportError:  # another torch: only ATen targets pass, which a classifier of fixed size needs
        return set()
    return {f"{op.__module__}.{op.__name__}" for op in _SYM_OPS if hasattr(op, "__name__")}


def _graph_problem(name: str, program: object) -> str | None:
    """Why an exported program's JSON could run code other than ATen operators, or None."""
    targets: list[str] = []
    sizes: list[object] = []

    def collect(value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("target", "as_operator") and isinstance(item, str):
                    targets.append(item)
                if key == "expr_str":
                    sizes.append(item)
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    collect(program)
    symbolic = _symbolic_targets()
    for target in targets:
        operator = _ALLOWED_TARGET.fullmatch(target)
        if (operator is None and target not in symbolic) or (operator and target.split(".")[3] in _REFUSED_OPERATORS):
            return f"{name} calls {target[:80]}, not an operator of torch.ops.aten or of (de)quantization"
    for size in sizes:
        if not isinstance(size, str) or not _plain_size(size):
            return f"{name}: a symbolic size holds Python code ({str(size)[:60]!r})"
    guards = program.get("guards_code", []) if isinstance(program, dict) else None
    if not isinstance(guards, list) or not all(isinstance(guard, str) for guard in guards):
        return f"{name}: its shape guards are not a list of expressions"
    for guard in guards:
        unquoted = re.sub(r"'[^'\\]*'|\"[^\"\\]*\"", "''", guard)
        if "__" in unquoted or set(re.findall(r"[A-Za-z_]\w*", unquoted)) - _GUARD_NAMES:
            return f"{name}: a shape guard holds Python code ({guard[:60]!r})"
    return None


def _plain_size(text: str) -> bool:
    """True for sympy text of a size: quoted symbol names, numbers, arithmetic, allowed function names."""
    unquoted = re.sub(r"'[a-z]+\d+'", "''", text)
    if "__" in unquoted or not re.fullmatch(r"[A-Za-z0-9_ ,.()+\-*/=<>!']*", unquoted):
        return False
    return all(word in _SIZE_NAMES or _SYMBOL.fullmatch(word) for word in re.findall(r"[A-Za-z_]\w*", unquoted))


def _pickle_free_tensor_file(data: bytes) -> bool:
    """True if ``data`` is empty (torch reads no sample inputs) or a torch.save file that loads with
    weights_only=True (no code can run)."""
    if not data:
        return True
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, TypeError, AttributeError, KeyError):
        return False
    return True


def check_archive(path: Path) -> None:
    """Refuse a .pt2 file that torch.export.load would unpickle code from, or whose program would run Python
    (shape guards) or operators other than ATen's and (de)quantization; pass one torch.export.save wrote for a
    model of tensors and ATen operators (every PT2E file the kit makes)."""
    entries = _archive_entries(path)
    refused = f"{path} is refused: it could run code when opened"
    for name, data in entries.items():
        if name in _ARCHIVE_FILES:
            continue
        if not name.startswith(_ARCHIVE_FOLDERS):
            raise KitError(f"{refused} ({name} is not part of an exported program)")
        if name.startswith("models/"):
            try:
                problem = _graph_problem(name, json.loads(data))
            except (ValueError, RecursionError):
                raise KitError(f"{path}: {name} is not an exported program's JSON") from None
            if problem:
                raise KitError(f"{refused} ({problem})")
        if name.startswith("data/sample_inputs/") and not _pickle_free_tensor_file(data):
            raise KitError(f"{refused} ({name}: sample inputs that need pickle)")
        if name.startswith(("data/weights/", "data/constants/")) and name.endswith(".pt"):
            raise KitError(f"{refused} ({name}: a legacy pickled weights file)")
        if not name.endswith("_config.json"):
            continue
        try:
            config = json.loads(data)["config"]
            entries_config = list(config.items())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise KitError(f"{path}: {name} is not a weights config torch.export.save writes") from None
        for key, payload in entries_config:
            if not isinstance(payload, dict) or payload.get("use_pickle") is not False:
                raise KitError(f"{refused} ({name}: {str(key)[:60]} is stored as a pickle)")
            if name.startswith("data/constants/") and not str(payload.get("path_name", "")).startswith("tensor_"):
                raise KitError(f"{refused} ({name}: {str(key)[:60]} is a pickled object, not a tensor)")


def _torchao_fits() -> bool:
    """torchao is installed and built for this torch (decided from package metadata, without importing it)."""
    version = compat.installed_version("torchao")
    return version is not None and compat.torchao_problem(torch.__version__, version) is None


def _load_program(path: Path) -> torch.export.ExportedProgram:
    if not path.is_file():
        raise KitError(f"model file {path} does not exist; make one with quantize_model.py --model FILE.py:FUNCTION")
    check_archive(path)
    try:  # registers the quantize/dequantize operators a PT2E file calls; a torchao for another torch can abort
        # the process at import, so it is imported only when quantlab.compat's table says it fits
        if _torchao_fits():
            with quiet_torch():
                importlib.import_module("torchao.quantization.pt2e")
        else:
            raise ImportError("no torchao that fits this torch")
    except ImportError:  # torch keeps its own copy of them (deprecated): enough to run a file, e.g. on the Pi
        with contextlib.suppress(ImportError), quiet_torch():
            importlib.import_module("torch.ao.quantization.fx._decomposed")
    try:
        with quiet_torch():
            return torch.export.load(str(path))
    except Exception as error:  # noqa: BLE001 - a corrupt, foreign or newer-format file
        hint = (
            f"; if it is PT2E-quantized: {TORCHAO_HINT}"
            if "torchao" in str(error) or "quantized_decomposed" in str(error)
            else ""
        )
        raise KitError(
            f"{path} is not an exported program torch.export.load can read ({first_line(error, with_type=True, limit=160)})"
            f"{hint}; make one with quantize_model.py --model FILE.py:FUNCTION"
        ) from None


def load_exported(path: Path, input_size: int = 224, compile: bool | None = None) -> ExportedModel:
    """Load a .pt2 file; on x86 (``compile`` None = by the sidecar's target) compile it with inductor + freezing;
    one quantized for XNNPACK (target arm) is lowered to ExecuTorch instead where executorch is installed.

    The first call compiles (tens of seconds on 2 cores): done here, on one image,
    so that a missing C++ compiler falls back to the exported program with a note
    instead of failing later, and timing starts warm.
    """
    path = Path(path)
    program = _load_program(path)
    module = program.module()
    quantized = any(str(node.target).startswith(QUANTIZE_OPS) for node in program.graph.nodes)
    sidecar = models.read_sidecar(path)
    if compile is None and quantized and sidecar.get("target") == "arm":
        lowered = _lowered_to_executorch(program, input_size, module)
        if lowered is not None:
            return lowered
    if compile is None:
        compile = sidecar.get("target", "x86") == "x86" and inductor_int8_available()
    if not compile:
        return ExportedModel(module, compiled=False, note=None, quantized=quantized)
    if quantized:
        try:  # importing the x86 quantizer registers inductor's int8 fusion passes: without them inductor
            # compiles the (de)quantize pairs around float convolutions, slower than fp32 (measured: 52 float convs)
            if not _torchao_fits():
                raise ImportError("no torchao that fits this torch")
            with quiet_torch():
                importlib.import_module("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")
        except ImportError:
            note = (
                f"note: {path.name} runs uncompiled: inductor's int8 kernels for PT2E files come with torchao; "
                f"{TORCHAO_HINT}"
            )
            return ExportedModel(module, compiled=False, note=note, quantized=quantized)
    runner = InductorRunner(module)
    try:
        runner(torch.randn(1, 3, input_size, input_size))
    except Exception as error:  # noqa: BLE001 - no C++ compiler, an unsupported CPU, ...
        note = (
            f"note: {path.name}: inductor failed ({first_line(error, with_type=True, limit=120)}); running the "
            "exported program uncompiled (correct, slower)"
        )
        return ExportedModel(module, compiled=False, note=note, quantized=quantized)
    return ExportedModel(
        runner, compiled=True, note=None, quantized=quantized, graph_module=module, compile_s=runner.compile_s
    )


def _lowered_to_executorch(
    program: torch.export.ExportedProgram, input_size: int, module: nn.Module
) -> ExportedModel | None:
    """A .pt2 quantized for XNNPACK (target arm), lowered to ExecuTorch as it loads; None without executorch
    (the exported program runs uncompiled then, as before). The fastest PT2E path the kit measured
    (docs/pt2e_speed.md); a .pte file saves the lowering."""
    from quantlab import executorch_runtime

    if executorch_runtime.missing() is not None:
        return None
    started = time.perf_counter()
    try:
        buffer, _ = executorch_runtime.lower(program, input_size)
        runner = executorch_runtime.ExecuTorchModel(buffer, torch.get_num_threads())
    except KitError as error:  # an operator ExecuTorch cannot take: the exported program still runs, slowly
        note = f"note: {error}; running the exported program uncompiled (correct, slower)"
        return ExportedModel(module, compiled=False, note=note, quantized=True)
    seconds = round(time.perf_counter() - started, 2)
    return ExportedModel(
        runner, compiled=True, note=None, quantized=True, graph_module=module, compile_s=seconds, runner="executorch"
    )


class InductorRunner(nn.Module):
    """An exported graph compiled by inductor (``torch._inductor.compile``), once per input shape.

    Not ``torch.compile``: its Dynamo front end re-checks its guards on every call (the graph holds ~200
    weights), measured 0.8-1.1 ms of CPU per int8 MobileNetV2 call, a fifth of the whole call. An
    exported graph needs no tracing and no guards; the one guard that matters (inductor's code is
    specialised to one input shape) is the dictionary lookup below. ``freezing`` makes the weights
    constants, so inductor folds the quantize/dequantize pairs into oneDNN int8 kernels (without it the
    graph runs float kernels between (de)quantize steps). Not AOTInductor either: it loads a native
    library (code the kit would have to vouch for) and ran MobileNetV2 int8 about 3x slower here.
    """

    def __init__(self, graph_module: nn.Module) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.out_spec = graph_module.graph._codegen.pytree_info.out_spec
        self.by_shape: dict[tuple, Callable] = {}
        self.compile_s: float | None = None  # the first compile (what a student waits for), seconds

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.contiguous()  # inductor's code is specialised to the strides it compiled for as well
        key = (tuple(batch.shape), batch.dtype)
        compiled = self.by_shape.get(key)
        if compiled is None:
            compiled = self.by_shape[key] = self._compile(batch)
        with torch.no_grad():  # freezing applies to inference only
            outputs = compiled(batch)
        if isinstance(outputs, torch.Tensor):  # the exported module's own pytree code ran inside the compiled one
            return outputs
        # or inductor returned the graph's outputs as a flat list: give them the exported program's structure back
        return pytree.tree_unflatten(list(outputs), self.out_spec)

    def _compile(self, example: torch.Tensor) -> Callable:
        import torch._inductor
        import torch._inductor.config as inductor_config

        started = time.perf_counter()
        # inductor's int8 lowering warns about its own tensor copy each time it compiles; forward already
        # guarantees the shape, strides and dtype inductor's size asserts re-check before each kernel
        settings = {"freezing": True, "size_asserts": False, "alignment_asserts": False}
        with quiet_torch(), torch.no_grad(), inductor_config.patch(settings):
            compiled = torch._inductor.compile(self.graph_module, [example])
        if self.compile_s is None:
            self.compile_s = round(time.perf_counter() - started, 2)
        return compiled
