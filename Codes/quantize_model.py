"""Quantize MobileNetV2 to int8 and save it as a TorchScript file that runs without the kit.

Static (post-training) quantization calibrates activation ranges on a few
photos; dynamic quantization converts only nn.Linear layers. The output loads
with ``torch.jit.load`` alone; a JSON sidecar beside it records how it was made
(``Codes/mobile_net.py --model`` reads the engine from it).

Examples:
    python Codes/quantize_model.py --output mnv2_int8.pt --calib-data imagenet-sample
    python Codes/quantize_model.py --output mnv2_qnnpack.pt --engine qnnpack --calib-data photos/   # for the Pi
    python Codes/quantize_model.py --output mnv2_pt.pt --granularity per_tensor --observer minmax --calib-data photos/
    python Codes/quantize_model.py --output mnv2_dynamic.pt --method dynamic
    python Codes/quantize_model.py --model my_finetuned.pth --output mine_int8.pt --calib-data photos/
    python Codes/mobile_net.py --model mnv2_int8.pt --source samples --frames 50
"""

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from quantlab import data, engines, models, quantize
from quantlab.errors import KitError, run_cli

# ---- settings (command-line flags override them) -----------------------------
method = "static"             # static (post-training) or dynamic (nn.Linear only)
granularity = "per_channel"   # one weight scale per output channel, or per_tensor: one per layer
observer = "histogram"        # how activation ranges are estimated: histogram or minmax
calib_images = 100            # photos used to calibrate activation ranges
size = 224                    # input resolution
# -------------------------------------------------------------------------------

METHOD_ALIASES = {"static": "static", "post_training": "static", "dynamic": "dynamic",
                  "qat": "qat", "quantization_aware": "qat"}
MODEL_NAMES = ("mobilenet_v2",)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v2",
                        help="a torchvision model name (mobilenet_v2) or the path of a fp32 state dict")
    parser.add_argument("--output", type=Path, required=True, help="the TorchScript file to write (FILE.pt)")
    parser.add_argument("--method", default=method, help="static (= post_training), dynamic, or qat (= quantization_aware)")
    parser.add_argument("--granularity", choices=quantize.GRANULARITIES, default=granularity, help="weight scales")
    parser.add_argument("--observer", choices=quantize.OBSERVERS, default=observer, help="activation range estimate")
    parser.add_argument("--engine", choices=engines.ENGINE_CHOICES, default="auto",
                        help="int8 engine to quantize for: qnnpack for the Pi, x86 for PCs")
    parser.add_argument("--calib-data", type=Path, help="a folder of photos (flat, or one folder per class)")
    parser.add_argument("--calib-images", type=int, default=calib_images, help="how many photos to calibrate on")
    parser.add_argument("--seed", type=int, default=0, help="picks the calibration photos and random inputs")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    return parser.parse_args()


def check_args(args: argparse.Namespace) -> str:
    """The canonical method name; a KitError for what argparse cannot check."""
    chosen = METHOD_ALIASES.get(args.method)
    if chosen is None:
        raise KitError(f"unknown --method '{args.method}'; use one of {', '.join(METHOD_ALIASES)}")
    if chosen == "qat":
        raise KitError("--method qat (quantization-aware training) is not in the kit yet: it needs a fine-tuning "
                       "loop (prepare_qat, labelled training data, epochs) that quantlab.quantize lacks; "
                       "use --method static")
    if args.calib_images < 1:
        raise KitError(f"--calib-images must be at least 1, got {args.calib_images}")
    if args.output.suffix.lower() == ".json":
        raise KitError(f"--output {args.output} ends in .json, the sidecar's suffix; name the model FILE.pt")
    existing = next((p for p in args.output.absolute().parents if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK):  # fail now, not after calibrating
        raise KitError(f"cannot write into {existing}; pick a writable --output")
    if args.output.is_dir():
        raise KitError(f"--output {args.output} is a folder; name the model file, e.g. {args.output / 'model.pt'}")
    return chosen


def load_fp32(name_or_path: str) -> torch.nn.Module:
    """The float model: a torchvision name (pretrained weights) or a state dict file."""
    if name_or_path in MODEL_NAMES:
        return models.mobilenet_v2_fp32()
    path = Path(name_or_path)
    if not path.exists() and path.suffix == "":
        raise KitError(f"--model '{name_or_path}' is neither a model the kit knows ({', '.join(MODEL_NAMES)}) "
                       "nor an existing file; pass mobilenet_v2 or the path of a fp32 state dict")
    return models.mobilenet_v2_fp32(path)


def calibration_batches(args: argparse.Namespace) -> tuple[list | torch.utils.data.DataLoader, str, object]:
    """Batches to calibrate on, a description of their source, and the data set (to count skipped files)."""
    if args.calib_data is None:
        print("WARNING: no --calib-data: calibrating on random noise. The file size and speed are real, "
              "but the accuracy of this model is meaningless; pass --calib-data FOLDER of photos",
              file=sys.stderr)
        generator = torch.Generator().manual_seed(args.seed)
        noise = torch.randn(args.calib_images, 3, size, size, generator=generator)
        return list(noise.split(16)), "random noise", None
    dataset = data.image_dataset(args.calib_data, size)
    calibration, _ = data.split(dataset, first_n=args.calib_images, seed=args.seed)
    return data.loader(calibration, batch_size=16), str(args.calib_data), calibration


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(model: torch.nn.Module, output: Path, sidecar: dict) -> dict:
    """Write the TorchScript file and its sidecar atomically: partial files never stay behind."""
    json_path = models.sidecar_path(output)
    partial_model = output.with_name(output.name + ".partial")
    partial_json = json_path.with_name(json_path.name + ".partial")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(models.script(model), str(partial_model))
        sidecar.update(sha256=sha256_of(partial_model), size_bytes=partial_model.stat().st_size)
        partial_json.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
        os.replace(partial_model, output)
        os.replace(partial_json, json_path)
    except (OSError, RuntimeError) as error:  # torch.jit.save raises RuntimeError when it cannot write
        output.unlink(missing_ok=True)  # a model without its sidecar would load on the wrong engine
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise KitError(f"could not write {output} ({reason}); pick a writable --output") from None
    finally:
        partial_model.unlink(missing_ok=True)
        partial_json.unlink(missing_ok=True)
    return sidecar


def main() -> int:
    args = parse_args()
    chosen_method = check_args(args)
    threads = engines.set_threads(args.threads)
    torch.manual_seed(args.seed)
    engine, why = engines.resolve_engine(args.engine)
    print(f"engine: {engine} ({why}); threads: {threads}")
    fp32 = load_fp32(args.model)
    fp32_mb = models.serialized_size_mb(fp32)

    sidecar = {"method": chosen_method, "engine": engine, "model": args.model, "seed": args.seed,
               "input_size": [1, 3, size, size], "torch": torch.__version__}
    if chosen_method == "dynamic":
        engines.set_engine(engine)
        int8 = quantize.quantize_dynamic(fp32)
        sidecar.update(granularity=None, observer=None, calibration=None)
        print("dynamic quantization: nn.Linear layers only (int8 weights, activations quantized at run time)")
    else:
        batches, source, calibration = calibration_batches(args)
        int8 = quantize.quantize_static(fp32, batches, engine, args.granularity, args.observer)
        skipped = data.skipped_count(calibration) if calibration is not None else 0
        used = (len(calibration) if calibration is not None else args.calib_images) - skipped
        sidecar.update(granularity=args.granularity, observer=args.observer,
                       calibration={"source": source, "images": used, "skipped_unreadable": skipped})
        print(f"static quantization: {args.granularity} weights, {args.observer} observer, "
              f"calibrated on {used} images from {source}" + (f" ({skipped} unreadable skipped)" if skipped else ""))
    int8_mb = models.serialized_size_mb(int8)

    sidecar = save(int8, args.output, sidecar)
    print(f"size: fp32 state dict {fp32_mb:.2f} MB -> int8 state dict {int8_mb:.2f} MB "
          f"({fp32_mb / int8_mb:.1f}x smaller)")
    if chosen_method == "dynamic":
        linear = sum(p.numel() for m in fp32.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters())
        total = sum(p.numel() for p in fp32.parameters())
        print(f"note: only the classifier's Linear layer is quantized ({100 * linear / total:.0f}% of the "
              "parameters); the convolutions stay fp32, so the model shrinks little and runs at fp32 speed; "
              "--method static quantizes them too")
    print(f"wrote {args.output} (TorchScript, {sidecar['size_bytes'] / 1e6:.2f} MB) and "
          f"{models.sidecar_path(args.output)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
