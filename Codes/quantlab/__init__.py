"""quantlab: the plumbing shared by the kit's scripts and notebooks.

Scripts in ``Codes/`` and the notebooks import from here so that they can
stay short and read top to bottom: model loading, engines, frame sources,
pre-processing, ImageNet labels, timing and data sets live in this package.
"""

from quantlab._quiet import quiet_native_warnings, silence_deprecations

__version__ = "0.1.0"
__all__ = ["quiet_native_warnings", "silence_deprecations"]

# torch.ao.quantization and TorchScript print deprecation warnings on every
# call in recent PyTorch releases. The labs explain the deprecation once
# (labs/02_quantization.md); students should not see it on every run.
silence_deprecations()
