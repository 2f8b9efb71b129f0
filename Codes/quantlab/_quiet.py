"""Keep PyTorch's deprecation noise out of student output."""

import warnings

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
)


def silence_deprecations() -> None:
    """Hide the known deprecation warnings of torch.ao.quantization and TorchScript."""
    for message in _NOISY_MESSAGES:
        warnings.filterwarnings("ignore", message=message)
