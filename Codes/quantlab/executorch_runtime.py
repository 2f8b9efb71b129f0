"""ExecuTorch: PT2E int8 lowered to XNNPACK, the fastest int8 path the kit has measured for a PT2E model.

Why it exists (docs/pt2e_speed.md): inductor runs a PT2E model's int8 convolutions with oneDNN, but
``onednn::qconv_pointwise`` builds a new oneDNN primitive descriptor on every call. oneDNN's kernels take the
same time as under TorchScript; the descriptors, their allocations and the Python wrapper cost about 0.8 ms
more per MobileNetV2 call. ExecuTorch lowers the same PT2E graph (quantized with the XNNPACK quantizer) once,
ahead of time, into a ``.pte`` file whose XNNPACK kernels keep their packed weights and plans between calls.

* ``quantize_to_pte``: export at batch 1, XNNPACKQuantizer, calibrate, convert (``quantlab.pt2e``), then
  ``to_edge_transform_and_lower`` with the XNNPACK partitioner: the bytes of a ``.pte`` file and how long
  the lowering took (a student waits for it once, when the file is written, not when it is loaded).
* ``ExecuTorchModel``: a ``.pte`` file in ExecuTorch's runtime, called like a module with torch tensors.
  A ``.pte`` is a flatbuffer: no pickle, no Python; the runtime checks its internal consistency on load
  and runs only the kernels compiled into the installed package.

The file is exported for one photo at a time: measured here, a dynamic batch axis made XNNPACK re-plan
each call (1.6 ms against 0.9 ms). ``__call__`` feeds a batch photo by photo, as for LiteRT.

Example:
    from quantlab import executorch_runtime
    model = executorch_runtime.ExecuTorchModel(Path("mnv2_int8.pte"), threads=2)
    scores = model(images)  # N x 3 x 224 x 224 float -> N x 1000 float
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from torch import nn

from quantlab._quiet import native_stderr
from quantlab.errors import KitError, first_line

PIN = "executorch==1.5.1"  # the release tested with torch 2.14.1 and torchao 0.18.0 (it requires torchao 0.18)
MISSING = (
    f"ExecuTorch is not installed: pip install {PIN} (it lowers PT2E int8 models to XNNPACK and runs .pte files; "
    "pick the release made for your torch)"
)
PTE_IDENTIFIER = b"ET12"  # bytes 4..8 of every ExecuTorch program flatbuffer
_threads_set: int | None = None  # ExecuTorch's thread pool is the process's: sized once, before the first run


def runtime_version() -> str | None:
    try:
        return version("executorch")
    except PackageNotFoundError:
        return None


def require_runtime():
    """ExecuTorch's ``Runtime``; a KitError saying what to install when it is missing or does not fit this torch."""
    try:
        with native_stderr([]):  # its C++ start-up prints CPU probing lines
            from executorch.runtime import Runtime, Verification
    except ImportError:
        raise KitError(MISSING) from None
    except Exception as error:  # noqa: BLE001 - a build for another torch fails inside its C++ extension
        raise KitError(
            f"ExecuTorch {runtime_version()} does not load with torch {torch.__version__} "
            f"({first_line(error, with_type=True, limit=160)}); install the release made for this torch"
        ) from None
    return Runtime, Verification


def missing() -> str | None:
    """Why this machine cannot make or run .pte files (None: it can)."""
    try:
        require_runtime()
    except KitError as error:
        return str(error)
    return None


def set_threads(threads: int) -> int:
    """Size ExecuTorch's thread pool to ``threads``; returns the size it has.

    The pool belongs to the process and resizing it after a model has run hung here, so only the first
    request counts: later ones with another count keep the first size.
    """
    global _threads_set
    require_runtime()
    with native_stderr([]):  # its start-up prints CPU probing lines, the resize one more
        import executorch.extension.pybindings.portable_lib as runtime_library

        if _threads_set is None:
            if runtime_library._threadpool_get_thread_count() != threads:
                runtime_library._unsafe_reset_threadpool(threads)
            _threads_set = threads
    return _threads_set


def is_pte(path: Path) -> bool:
    """Whether the file carries ExecuTorch's program mark (its suffix aside)."""
    with path.open("rb") as file:
        return file.read(8)[4:8] == PTE_IDENTIFIER


BROKEN = "a corrupt, truncated or crafted file, or one written by another ExecuTorch release"
# loads a program and its forward method, then exits: 0 loaded, 3 refused (its reason on stdout), killed: crashed
_CHILD_LOAD = """
import sys
from executorch.runtime import Runtime, Verification
try:
    program = Runtime.get().load_program(sys.argv[1], verification=Verification.InternalConsistency)
    program.load_method("forward")
except Exception as error:
    print(" ".join(str(error).split())[:200])
    sys.exit(3)
"""


def check_in_child(path: Path, timeout_s: float = 120) -> None:
    """Load ``path`` once in a child process first: a file the kit did not write can crash ExecuTorch's C++
    loader (a one-byte change to a string in a .pte aborted the process here); the child dies, not the caller."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD_LOAD, str(path)], capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        raise KitError(f"ExecuTorch took over {timeout_s:.0f} s to load {path}: {BROKEN}") from None
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise KitError(f"ExecuTorch {runtime_version()} crashed ({name}) loading {path}: {BROKEN}")
    if done.returncode != 0:
        reason = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else f"exit code {done.returncode}"
        raise KitError(f"ExecuTorch {runtime_version()} cannot load {path}: {reason} ({BROKEN})")


class ExecuTorchModel:
    """A ``.pte`` program run by ExecuTorch (its XNNPACK delegate), taking and returning torch tensors.

    ``source``: the file, or the program's bytes (``lower``'s, for a .pt2 lowered as it loads). The program
    must take one float image tensor [1, 3, S, S] and return one score tensor.
    """

    def __init__(self, source: Path | bytes, threads: int) -> None:
        runtime, verification = require_runtime()
        path = Path("lowered.pte") if isinstance(source, bytes) else Path(source)
        if not isinstance(source, bytes):
            if not path.is_file():
                raise KitError(f"model file {path} does not exist; make one with quantize_model.py --format pte")
            if not is_pte(path):
                raise KitError(
                    f"{path} is not an ExecuTorch (.pte) program: its header lacks the 'ET12' mark; "
                    "write one with quantize_model.py --format pte"
                )
            from quantlab import provenance

            if not provenance.made_here(path):
                check_in_child(path)
        self.threads = set_threads(threads)
        said: list[str] = []
        try:
            with native_stderr(said):
                # the method runs inside the program's memory (and a bytes source's): both live as long as the model
                self.program = runtime.get().load_program(source, verification=verification.InternalConsistency)
                self.method = self.program.load_method("forward")
        except Exception as error:  # noqa: BLE001 - the runtime raises RuntimeError/ValueError with a bare code
            problems = [line.strip() for line in said if " E " in line or "rror" in line]
            reason = problems[0][-200:] if problems else first_line(error, with_type=True, limit=200)
            raise KitError(f"ExecuTorch {runtime_version()} cannot load {path}: {reason} ({BROKEN})") from None
        if self.method is None:
            raise KitError(f"{path} has no 'forward' method; the kit runs image classifiers")
        meta = self.method.metadata
        if meta.num_inputs() != 1 or meta.num_outputs() != 1:
            raise KitError(
                f"{path} takes {meta.num_inputs()} inputs and returns {meta.num_outputs()} outputs; the kit "
                "measures image classifiers: one image tensor in, one score tensor out"
            )
        self.compile_s: float | None = None  # load_pte: the lowering's seconds, from the sidecar
        self.input_shape = list(meta.input_tensor_meta(0).sizes())
        shape = self.input_shape
        if len(shape) != 4 or shape[0] != 1 or shape[1] != 3 or shape[2] != shape[3]:
            raise KitError(f"{path} expects input {shape}; the kit feeds one image as [1, 3, S, S]")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        expected = self.input_shape[1:]
        if batch.dim() != 4 or list(batch.shape[1:]) != expected:
            raise KitError(
                f"the ExecuTorch model expects images {expected} but got {list(batch.shape)}; "
                "match --size to the size it was written for"
            )
        rows = [self.method.execute([image.unsqueeze(0).float().contiguous()])[0] for image in batch.detach()]
        return torch.cat(rows)


def quantize_to_pte(
    model: nn.Module | torch.export.ExportedProgram,
    calibration_batches,
    input_size: int = 224,
    granularity: str = "per_channel",
) -> tuple[bytes, dict]:
    """PT2E static int8 with the XNNPACK quantizer, lowered to ExecuTorch: (the .pte bytes, facts for the sidecar).

    The facts say which quantizer, how many photos calibrated it and ``lower_s``: the seconds the lowering
    took (XNNPACK's ahead-of-time compile, what ``compile_s`` is for inductor).
    """
    from quantlab import pt2e

    require_runtime()
    quantized, facts = pt2e.quantize(model, calibration_batches, "arm", input_size, granularity)
    started = time.perf_counter()
    buffer, outside = lower(quantized, input_size)
    lower_s = round(time.perf_counter() - started, 2)
    return buffer, {**facts, "target": "xnnpack", "lower_s": lower_s, "outside_xnnpack": outside}


def lower(program: torch.export.ExportedProgram, input_size: int) -> tuple[bytes, list[str]]:
    """An exported (PT2E-quantized) program re-exported for batch 1 and lowered to XNNPACK: (the .pte bytes,
    the operators left outside XNNPACK, which ExecuTorch's portable kernels run slowly; [] for MobileNetV2)."""
    from quantlab import pt2e

    require_runtime()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    example = (torch.randn(1, 3, input_size, input_size),)
    try:
        with pt2e.quiet_torch():
            one_photo = torch.export.export(program.module(), example, strict=False)
            lowered = to_edge_transform_and_lower(one_photo, partitioner=[XnnpackPartitioner()])
            buffer = lowered.to_executorch().buffer
    except Exception as error:  # noqa: BLE001 - an operator XNNPACK or ExecuTorch cannot take, say which
        raise KitError(
            f"ExecuTorch {runtime_version()} could not lower the model ({first_line(error, with_type=True, limit=200)})"
        ) from None
    graph = lowered.exported_program().graph
    # the operators ExecuTorch runs itself; not its memory planning (alloc) nor the calls into XNNPACK
    outside = sorted(
        {
            str(node.target).split("::")[-1]
            for node in graph.nodes
            if node.op == "call_function"
            and not getattr(node.target, "__module__", "").startswith("executorch.exir.memory")
            and getattr(node.target, "__name__", "") not in ("executorch_call_delegate", "getitem")
        }
    )
    return buffer, outside


def save_pte(buffer: bytes, output: Path, sidecar: dict) -> dict:
    """Write the .pte file and its sidecar atomically; the sidecar."""
    from quantlab import models

    def write(path: Path) -> dict:
        path.write_bytes(buffer)
        return {"executorch": runtime_version()}

    return models.save_with_sidecar(output, write, sidecar)


def load_pte(path: Path, threads: int, input_size: int = 224):
    """A .pte file as ``loading.LoadedModel`` (benchmark.py): the model, its size and how it was made."""
    from quantlab import files, loading, models

    model = ExecuTorchModel(path, threads)
    loading.require_input_size(path, model.input_shape, input_size)
    notes = []
    if model.threads != threads:
        notes.append(
            f"note: {path.name} runs on {model.threads} threads, not {threads}: ExecuTorch's thread pool was sized "
            "by the first .pte this process loaded; start a new process to measure another count"
        )
    sidecar = models.read_sidecar(path)
    lower_s = sidecar.get("lower_s")  # the sidecar is the writer's word: take only what it could have written
    usable = isinstance(lower_s, (int, float)) and not isinstance(lower_s, bool) and 0 <= lower_s < math.inf
    model.compile_s = lower_s if usable else None
    return loading.LoadedModel(
        name=path.name,
        model=model,
        runtime="executorch",
        format="pte",
        engine=None,
        path=str(path),
        size_mb=round(files.file_size_mb(path), 3),
        parameters=None,
        sha256=files.sha256_of(path),
        method="static" if sidecar.get("method") == "static" else "int8",  # the kit writes static int8 .pte only
        sidecar=sidecar,
        notes=notes,
        engine_reason=f"ExecuTorch {runtime_version()}, XNNPACK, {model.threads} threads",
    )
