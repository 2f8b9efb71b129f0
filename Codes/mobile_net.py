"""Real-time image classification with MobileNetV2 on a webcam (Raspberry Pi or laptop).

Capture a frame, pre-process it, run MobileNetV2, print the FPS about once a
second with the top-10 ImageNet classes, and a timing summary at the end.
Flip ``quantize`` below to True (or pass --quantize) to run the int8 model.

Examples:
    python Codes/mobile_net.py --source samples --frames 50            # no camera needed
    python Codes/mobile_net.py --source samples --frames 50 --quantize
    python Codes/mobile_net.py                                          # webcam 0, Ctrl-C to stop
    python Codes/mobile_net.py --source picamera2 --quantize            # Pi Camera Module
    python Codes/mobile_net.py --source clip.mp4 --json run.json        # a video file
    python Codes/mobile_net.py --source photos/ --top 5                 # a folder of images
    python Codes/mobile_net.py --model mobilenet_v2_int8.pt             # a model from quantize_model.py
    python Codes/mobile_net.py --quantize --size 160 --skip 2           # deployment tuning
"""

import argparse
import json
import platform
import time
from pathlib import Path

import cv2
import torch

from quantlab import cpu, engines, labels, models, pt2e, sources
from quantlab.errors import KitError, run_cli
from quantlab.preprocess import Preprocessor
from quantlab.timing import FrameTimer, format_summary

# ---- settings (command-line flags override them) -----------------------------
quantize = False      # the lab: set this to True and compare the FPS
source = "0"          # webcam index, "picamera2", "samples", a video file or a folder
size = 224            # input resolution (the camera is asked for size x size)
camera_fps = 36       # frame rate asked of the camera
top = 10              # how many classes to print
engine = "auto"       # int8 engine: qnnpack on ARM; on x86 the faster of x86 and onednn (measured once)
warmup_runs = 3       # untimed model runs before the first frame
# -------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quantize", action=argparse.BooleanOptionalAction, default=quantize,
                        help=f"run the int8 model (default: {quantize})")
    parser.add_argument("--source", default=source, help="webcam index, picamera2, samples, a video file or a folder")
    parser.add_argument("--frames", type=int, default=None, help="stop after N frames (default: run until the end or Ctrl-C)")
    parser.add_argument("--top", type=int, default=top, help="how many classes to print")
    parser.add_argument("--size", type=int, default=size, help="input resolution in pixels")
    parser.add_argument("--skip", type=int, default=1, help="run the model on every K-th frame, reuse the last prediction")
    parser.add_argument("--engine", choices=engines.ENGINE_CHOICES, default=engine, help="int8 engine")
    parser.add_argument("--weights", type=Path, help="a MobileNetV2 state dict (fp32, or int8 with --quantize)")
    parser.add_argument("--model", type=Path, help="a TorchScript (.pt), ONNX (.onnx) or PT2E (.pt2) model file")
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=True, help="TorchScript the model")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    parser.add_argument("--json", type=Path, help="write the summary to this JSON file")
    args = parser.parse_args()
    for name in ("frames", "top", "skip"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
    if args.size < 32:
        parser.error(f"--size must be at least 32, got {args.size}")
    if args.model and args.weights:
        parser.error("pass --model or --weights, not both")
    return args


def load(args: argparse.Namespace, threads: int):
    """The model to run, a line that describes it, and the model file's sha256 (None for the built-in models)."""
    if args.model and pt2e.is_exported_file(args.model):  # PT2E (your own model): no eager engine to pick
        exported = pt2e.load_exported(args.model, size)  # x86: compiled with inductor (takes a while, once)
        if exported.note:
            print(exported.note)
        print(f"engine: none needed ({'torch.compile, inductor' if exported.compiled else 'exported program, uncompiled'})")
        return exported, f"{args.model} ({models.file_size_mb(args.model):.1f} MB, PT2E)", models.sha256_of(args.model)
    if args.model:
        sidecar = models.read_sidecar(args.model)
        # a saved int8 model must run on the engine it was quantized for
        chosen, why = engines.resolve_engine(sidecar.get("engine", args.engine) if args.engine == "auto" else args.engine)
        if args.engine == "auto" and "engine" in sidecar:
            why = f"from {models.sidecar_path(args.model).name}: the model was quantized for it"
        engines.set_engine(chosen)
        print(f"engine: {chosen} ({why})")
        model = models.load_model_file(args.model, threads)
        return model, f"{args.model} ({models.file_size_mb(args.model):.1f} MB)", models.sha256_of(args.model)
    if args.quantize:
        chosen, why = engines.resolve_engine(args.engine)
        print(f"engine: {chosen} ({why})")
        model = models.mobilenet_v2_int8(chosen, args.weights)
        if chosen != "qnnpack":
            print("note: torchvision's pretrained int8 weights were calibrated for qnnpack; other engines "
                  "round differently, so a few predictions can differ from the Pi's")
        kind = "int8"
    else:
        print("engine: none needed (fp32 model)")
        model = models.mobilenet_v2_fp32(args.weights)
        kind = "fp32"
    size_mb = models.serialized_size_mb(model)
    if args.jit:
        model = models.script(model)
    return model, f"MobileNetV2 {kind}, {size_mb:.1f} MB{', TorchScript' if args.jit else ''}", None


def main() -> int:
    args = parse_args()
    threads = engines.set_threads(args.threads)
    cv2.setNumThreads(1)  # one small frame gains nothing from OpenCV's threads; they would compete with the model's
    # open the source first: a missing camera is reported before any weights download
    frames = sources.open_source(args.source, args.size, camera_fps)
    print(f"source: {frames.description}")
    try:
        model, description, model_sha256 = load(args, threads)
    except BaseException:
        frames.close()
        raise
    print(f"model: {description}; threads: {threads}")
    preprocess = Preprocessor(args.size)
    with torch.inference_mode():  # the first calls allocate memory and pick kernels: keep them out of the timing
        for _ in range(warmup_runs):
            outputs = model(preprocess.buffer.zero_()).shape[-1]
    imagenet = outputs == len(labels.imagenet_classes())
    if not imagenet:  # ImageNet's names would be wrong for another model's classes
        print(f"note: the model has {outputs} outputs, not ImageNet's 1000 classes: showing class numbers, "
              "not ImageNet names")

    def top(logits: torch.Tensor) -> str:
        predictions = labels.top_k(logits[0], args.top)
        if not imagenet:
            predictions = [(index, f"class {index}", probability) for index, _, probability in predictions]
        return labels.format_top_k(predictions)

    timer = FrameTimer()
    logits = None

    try:
        with torch.inference_mode():
            while args.frames is None or timer.frames < args.frames:
                started = time.perf_counter()
                frame = frames.read()
                if frame is None:
                    break
                captured = time.perf_counter()
                inferred = timer.frames % args.skip == 0
                if inferred:
                    batch = preprocess(frame, frames.bgr)
                    prepared = time.perf_counter()
                    logits = model(batch)
                else:
                    prepared = captured  # skipped frame: keep the last prediction
                finished = time.perf_counter()
                timer.add(captured - started, prepared - captured, finished - prepared, inferred)

                fps = timer.fps_due()
                if fps is not None:
                    print(f"FPS {fps:6.1f}  (frame {timer.frames})")
                    print(top(logits))
    except KeyboardInterrupt:
        print("\nstopped (Ctrl-C)")
    finally:
        frames.close()

    if timer.frames == 0:
        raise KitError(f"source {args.source} gave no frames; check it plays or holds readable images")
    print(f"FPS {timer.final_fps():6.1f}  (frame {timer.frames}, last)")
    print(top(logits))
    summary = timer.summary()
    summary.update(skipped_unreadable=frames.skipped, source=args.source, size=args.size, skip=args.skip,
                   quantize=bool(args.quantize), model=description, model_sha256=model_sha256, threads=threads,
                   engine=torch.backends.quantized.engine, torch=torch.__version__,
                   cpu=engines.cpu_name(), arch=platform.machine(),  # graders tell a Pi run from a PC run
                   int8_isa=cpu.int8_isa().name, int8_isa_note=cpu.describe())  # int8 speed and accuracy depend on it
    print(format_summary(summary) + (f"\n  skipped unreadable images: {frames.skipped}" if frames.skipped else "")
          + f"\n  CPU: {summary['cpu']} ({summary['arch']}), int8: {summary['int8_isa_note']}")
    if args.json:
        write_json(args.json, summary)
    return 0


def write_json(path: Path, summary: dict) -> None:
    """Write the summary atomically: a half-written file never appears."""
    text = json.dumps(summary, indent=2) + "\n"
    models.atomic_write(path, lambda partial: partial.write_text(text, encoding="utf-8"), "--json")
    print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
