"""Keep PyTorch's deprecation noise (and known, harmless warnings) out of student output."""

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

# Messages PyTorch >= 2.10 prints for eager-mode quantization and TorchScript.
# They are explained once in labs/02_quantization.md (successors: torchao's
# PT2E quantization and ExecuTorch with XNNPACK).
_NOISY_MESSAGES = (
    r".*torch\.ao\.quantization is deprecated.*",
    r".*quantized tensor creation functions.*deprecated.*",
    r".*torch\.jit\..* is deprecated.*",
    r".*`torch\.jit\.\w+` is deprecated.*",
    r".*TorchScript.*deprecated.*",
    r".*must run observer before calling calculate_qparams.*",
    r".*please use the new.*torchao.*",
    r".*_check_is_size will be removed.*",
    r".*TypedStorage is deprecated.*",
    r".*isinstance\(treespec, LeafSpec\).*",  # torch 2.11's ONNX exporter (seen with Colab-era releases)
    # a dynamic nn.Linear asks every engine for reduce_range; qnnpack uses the full 8 bits anyway, which is
    # what the Pi should do: nothing for a student to fix
    r".*qnnpack incorrectly ignores reduce_range.*",
)


def silence_deprecations() -> None:
    """Hide the known deprecation warnings of torch.ao.quantization and TorchScript."""
    for message in _NOISY_MESSAGES:
        warnings.filterwarnings("ignore", message=message)


@contextlib.contextmanager
def native_stderr(lines: list[str]) -> Iterator[None]:
    """Collect into ``lines`` what C++ code writes straight to stderr (file descriptor 2) inside the block,
    where Python's warnings filters and ``sys.stderr`` cannot reach it; the caller decides what to print."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (some notebook front ends): nothing to collect
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines.extend(captured.read().decode("utf-8", errors="replace").splitlines())


@contextlib.contextmanager
def quiet_native_warnings() -> Iterator[None]:
    """Drop PyTorch's C++ deprecation warnings (written straight to stderr) inside the block.

    ``torch.jit.load`` of an int8 model warns from C++ that quantized tensors are
    deprecated, bypassing Python's warnings filters; other stderr lines pass through.
    """
    lines: list[str] = []
    try:
        with native_stderr(lines):
            yield
    finally:
        for line in lines:
            if "deprecated" not in line:
                print(line, file=sys.stderr)
