"""The kit's vocabularies: the words its scripts, sidecars, reports and grader share. No torch here.

Every list of methods, granularities, observers, engines and file suffixes is
declared once, here, so that ``quantize_model.py``'s choices, the sidecars it
writes and what the grader accepts cannot drift apart. Importing this module
costs nothing: a JSON checker can use it without loading torch.
"""

from __future__ import annotations

import re

# ---- how a model was quantized -----------------------------------------------------
METHODS = ("static", "dynamic", "qat")  # quantize_model.py --method
METHOD_ALIASES = {"post_training": "static", "quantization_aware": "qat"}  # STM32 model zoo's words (--config)
# what a sidecar or a report row may say: fp32, one of METHODS, or int8 (quantized, how unknown)
RECORDED_METHODS = ("fp32", *METHODS, "int8")
GRANULARITIES = ("per_channel", "per_tensor")  # one weight scale per output channel, or one per layer
OBSERVERS = ("histogram", "minmax")  # how calibration estimates activation ranges
ENGINE_CHOICES = ("auto", "qnnpack", "x86", "fbgemm", "onednn")  # PyTorch's int8 engines (quantlab.engines)
FORMATS = (
    "torchscript",
    "onnx",
    "pt2",
    "tflite",
    "pte",
)  # quantize_model.py --format; pt2: PT2E's exported program; tflite: LiteRT; pte: PT2E lowered to ExecuTorch

# task 5's model (labs/homework.md): quantize_model.py's defaults with --engine qnnpack, run on the Pi;
# the grader measures the open target against it (tests check quantize_model.py's defaults are these)
DEFAULT_RECIPE = ("static", "qnnpack", "per_channel", "histogram")  # method, engine, granularity, observer

# ---- files -------------------------------------------------------------------------
TORCH_SUFFIXES = (".pt", ".pth", ".ptl")  # TorchScript archives and torch.save files
ONNX_SUFFIXES = (".onnx", ".ort")
PT2_SUFFIX = ".pt2"  # torch.export's program (PT2E, your own model)
TFLITE_SUFFIX = ".tflite"  # LiteRT (TensorFlow Lite) flatbuffers, run by ai-edge-litert (quantlab.litert)
PTE_SUFFIX = ".pte"  # ExecuTorch programs (PT2E lowered to XNNPACK), run by executorch (quantlab.executorch_runtime)
# your own float model: FILE.py:FUNCTION[@WEIGHTS.pth] (quantlab.user_model imports FILE.py and calls FUNCTION)
USER_MODEL_SPEC = re.compile(r"^(?P<file>.+\.py):(?P<function>[A-Za-z_][A-Za-z0-9_]*)(?:@(?P<weights>.+))?$")
MODEL_SUFFIXES = (*TORCH_SUFFIXES, PT2_SUFFIX, *ONNX_SUFFIXES, TFLITE_SUFFIX, PTE_SUFFIX)
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")  # what OpenCV and PIL read here
