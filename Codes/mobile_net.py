"""Real-time image classification with MobileNetV2 on a webcam (Raspberry Pi or laptop).

Capture a frame, pre-process it, run MobileNetV2; about once a second print the FPS and the top-10 ImageNet classes,
then a timing summary. Set ``quantize`` to True (or pass --quantize) for int8, which ``build_model`` sets up below.

Examples:
    python Codes/mobile_net.py --source samples --frames 50 --quantize  # no camera needed; drop --quantize: fp32
    python Codes/mobile_net.py                                          # webcam 0, Ctrl-C to stop
    python Codes/mobile_net.py --source picamera2 --quantize --json pi_run.json   # Pi Camera Module, summary saved
    python Codes/mobile_net.py --source clip.mp4 --top 5                # a video file, or a folder of images
    python Codes/mobile_net.py --model mobilenet_v2_int8.pt             # a model from quantize_model.py
    python Codes/mobile_net.py --model mnv2_int8.tflite --source samples   # LiteRT (pip install ai-edge-litert)
"""

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import torch
import torchvision

from quantlab import arguments, bench, engines, files, labels, loading, models, sources, timing, vocab
from quantlab.errors import KitError, run_cli
from quantlab.preprocess import IMAGENET, Preprocessing, Preprocessor

# ---- settings: each is the default of the command-line flag of the same name ------
quantize = False  # the lab: set this to True and compare the FPS
source = "0"  # webcam index, "picamera2", "samples", a video file or a folder
size = 224  # input resolution (the camera is asked for size x size)
top = 10  # how many classes to print
skip = 1  # run the model on every K-th frame, reuse the last prediction in between
engine = "auto"  # int8 engine: qnnpack on ARM; on x86 the faster of x86 and onednn (measured once)
jit = True  # TorchScript the model
camera_fps = 36  # frame rate asked of the camera
warmup_runs = 3  # untimed model runs before the first frame


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags (None: the command line); each default is the setting of the same name above."""
    parser = arguments.Parser(description=__doc__)
    count = arguments.int_at_least(1)
    parser.add_argument("--quantize", action=argparse.BooleanOptionalAction, default=quantize, help="int8 model")
    parser.add_argument("--source", default=source, help="webcam index, picamera2, samples, a video file or a folder")
    parser.add_argument("--frames", type=count, help="stop after N frames (default: run until the end or Ctrl-C)")
    parser.add_argument("--top", type=count, default=top, help="how many classes to print")
    parser.add_argument("--size", type=arguments.int_at_least(32), default=size, help="input resolution in pixels")
    parser.add_argument("--skip", type=count, default=skip, help="run the model on every K-th frame")
    parser.add_argument("--engine", choices=vocab.ENGINE_CHOICES, default=engine, help="int8 engine")
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=jit, help="TorchScript the model")
    model_or_weights = parser.add_mutually_exclusive_group()
    model_or_weights.add_argument("--weights", type=Path, help="a MobileNetV2 state dict (int8 with --quantize)")
    model_or_weights.add_argument(
        "--model",
        type=Path,
        help="a model file: TorchScript (.pt), ONNX (.onnx), PT2E (.pt2), LiteRT (.tflite), ExecuTorch (.pte) "
        "or a state dict",
    )
    parser.add_argument("--threads", type=count, help="CPU threads (default: physical cores)")
    parser.add_argument("--json", type=Path, help="write the summary to this JSON file")
    args = parser.parse_args(argv)
    files.check_writable(args.json, "--json", "run.json")  # now, not after the run
    return args


def load_model_file(
    args: argparse.Namespace, threads: int
) -> tuple[Callable[[torch.Tensor], torch.Tensor], str, str, Preprocessing]:
    """--model FILE, loaded as benchmark.py loads it: the model, its engine (and why), a line that describes it,
    and the input it declares (its sidecar's preprocessing; ImageNet's when it declares none)."""
    loaded = loading.load_any(args.model, args.engine, threads, input_size=args.size, check=False)
    for note in loaded.notes:
        print(note)
    description = f"{args.model} ({loaded.size_mb:.1f} MB, {loaded.format}, {loaded.method})"
    if loaded.preprocessing != IMAGENET:
        description += f", input: {loaded.preprocessing.describe()}"
    return loaded.model, loaded.runs_on, description, loaded.preprocessing


def build_model(
    args: argparse.Namespace, threads: int
) -> tuple[Callable[[torch.Tensor], torch.Tensor], str, str, Preprocessing]:
    """The model to run, its engine (and why), a line that describes it, and the input it wants."""
    if args.model:  # a file from quantize_model.py, or any model file the kit loads
        return load_model_file(args, threads)
    if args.quantize:
        chosen, why = engines.resolve_engine(args.engine)
        # int8 happens here: torchvision's MobileNetV2 with int8 layers (quantize=True builds it with qnnpack)
        net = torchvision.models.quantization.mobilenet_v2(weights=None, quantize=True)
        # the int8 kernels: qnnpack on ARM, x86 or onednn on a PC; loading packs the weights for this engine
        torch.backends.quantized.engine = chosen
        if chosen != "qnnpack":  # other engines round differently
            print("note: torchvision's int8 weights were made for qnnpack: a few predictions can differ from the Pi's")
    else:
        chosen, why = "none needed", "fp32 model"
        net = torchvision.models.mobilenet_v2(weights=None)
    net.load_state_dict(models.mobilenet_v2_weights(net, args.weights))  # pretrained (or offline copy), or --weights
    description = f"MobileNetV2 {'int8' if args.quantize else 'fp32'}, {models.serialized_size_mb(net.eval()):.1f} MB"
    if args.jit:  # TorchScript: one compiled graph, no Python between layers; freezing folds the weights in
        net = torch.jit.freeze(torch.jit.script(net))
        description += ", TorchScript"
    return net, f"{chosen} ({why})", description, IMAGENET


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = engines.set_threads(args.threads)
    cv2.setNumThreads(1)  # one small frame gains nothing from OpenCV's threads; they would compete with the model's
    with sources.open_source(args.source, args.size, camera_fps) as frames:  # before any download: no camera fails fast
        print(f"source: {frames.description}")
        model, engine_used, description, preprocessing = build_model(args, threads)
        print(f"engine: {engine_used}\nmodel: {description}; threads: {threads}")
        preprocess, logits = Preprocessor(args.size, preprocessing=preprocessing), None
        with torch.inference_mode():
            for _ in range(warmup_runs):  # the first calls allocate memory and pick kernels: not timed
                classes = model(preprocess.buffer.zero_()).shape[-1]
            if classes != len(labels.imagenet_classes()):  # ImageNet's names would be wrong for other classes
                print(f"note: the model has {classes} outputs, not ImageNet's 1000 classes: showing class numbers")
            timer = timing.FrameTimer()
            try:
                while args.frames is None or timer.frames < args.frames:
                    started = time.perf_counter()
                    if (frame := frames.read()) is None:
                        break
                    captured = prepared = time.perf_counter()
                    if inferred := timer.frames % args.skip == 0:  # a skipped frame keeps the last prediction
                        batch = preprocess(frame, frames.bgr)
                        prepared = time.perf_counter()
                        logits = model(batch)
                    timer.add(captured - started, prepared - captured, time.perf_counter() - prepared, inferred)
                    if (fps := timer.fps_due()) is not None:
                        print(f"FPS {fps:6.1f}  (frame {timer.frames})\n{labels.describe_top(logits, args.top)}")
            except KeyboardInterrupt:
                print("\nstopped (Ctrl-C)")
    if timer.frames == 0:
        raise KitError(f"source {args.source} gave no frames; check it plays or holds readable images")
    print(f"FPS {timer.final_fps():6.1f}  (frame {timer.frames}, last)\n{labels.describe_top(logits, args.top)}")
    summary = timer.summary() | bench.machine_info(threads, torch.backends.quantized.engine)  # graders: a Pi or a PC?
    summary.update(source=args.source, size=args.size, skip=args.skip, skipped_unreadable=frames.skipped)
    summary.update(quantize=args.quantize, model=description, model_sha256=args.model and files.sha256_of(args.model))
    print(timing.format_summary(summary))
    if args.json:
        files.write_json(args.json, summary, "--json")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    run_cli(main)
