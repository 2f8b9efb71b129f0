"""Benchmark models side by side: size on disk, parameters, batch-1 latency, FPS, top-1/top-5.

Every model runs on this machine under the same settings; the first model is
the baseline that the others are compared with (x faster, x smaller, top-1
points lost). ``--json`` writes the report students hand in (schema:
docs/benchmark_schema.md), with the machine recorded so that results from
different machines are never mixed up.

Examples:
    python Codes/benchmark.py --model mobilenet_v2 --model mnv2_int8.pt
    python Codes/benchmark.py --model mobilenet_v2 --model mnv2_int8.pt --data photos/ --holdout 100
    python Codes/benchmark.py --model mobilenet_v2 --model mnv2.onnx --data photos/ --json report.json --csv report.csv --plot report.png
    python Codes/benchmark.py --model my_finetuned.pth --arch resnet18 --runs 100 --threads 4
    python Codes/benchmark.py --model mnv2_qnnpack.pt --engine x86   # force another engine (prints a note)
    python Codes/benchmark.py --model my_net.py:build@my_net.pth --model my_net_int8.pt2   # your own model, PT2E
    python Codes/benchmark.py --model mnv2_int8.pt --model mnv2_int8.pte   # TorchScript against PT2E on ExecuTorch

A model is a torchvision name (mobilenet_v2, mobilenet_v2_int8), a state dict
(.pth, --arch tells the architecture), a TorchScript file (.pt; it runs on the
engine named in its JSON sidecar), an ONNX file (.onnx, run with ONNX Runtime), a PT2E
exported program (.pt2, compiled with inductor on x86), an ExecuTorch program (.pte,
PT2E lowered to XNNPACK: a flatbuffer, no code), a LiteRT file (.tflite) or your own
float model, FILE.py:FUNCTION[@WEIGHTS.pth] (importing FILE.py runs its code).
TorchScript, .pt2 and FILE.py models run code when they load: benchmark.py runs
those the kit wrote on this account (quantize_model.py, the notebooks) and
refuses others unless you pass --trust; grade handed-in files with grade.py,
which runs them in a sandbox.
--holdout N evaluates on the images left after the first N that
``quantize_model.py --calib-images N --seed S`` calibrated on (same --seed).
"""

import argparse
from pathlib import Path

from quantlab import arguments, bench, coverage, data, engines, files, loading, provenance, report, vocab
from quantlab.errors import KitError, run_cli
from quantlab.preprocess import IMAGENET, Preprocessing

# ---- settings (command-line flags override them) -----------------------------
runs = 50  # timed batch-1 runs per model: the median is what the table leads with
warmup = 10  # untimed runs first: the first calls allocate memory and pick kernels
size = 224  # input resolution
eval_batch = 16  # images per batch while measuring accuracy (latency is always batch 1)
# -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags (None: the command line), checked before any model loads: a KitError names the flag and the fix."""
    parser = arguments.Parser(description=__doc__)
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="repeatable: a torchvision name, a state dict, a TorchScript, ONNX, PT2E (.pt2), LiteRT (.tflite) "
        "or ExecuTorch (.pte) file, or your own model FILE.py:FUNCTION[@WEIGHTS.pth]",
    )
    parser.add_argument("--arch", default="mobilenet_v2", help="torchvision architecture of state dict files")
    parser.add_argument(
        "--data",
        type=Path,
        help="photos to measure accuracy on (ImageNet-sample or ImageFolder), "
        "or imagenette (torchvision downloads it to ./data on first use; for Colab)",
    )
    count = arguments.int_at_least(1)
    parser.add_argument("--holdout", type=count, help="skip the first N images of the seeded shuffle (calibration)")
    parser.add_argument("--images", type=count, help="evaluate on at most N images")
    parser.add_argument("--seed", type=int, default=0, help="the shuffle that --holdout and --images pick from")
    parser.add_argument("--runs", type=count, default=runs, help="timed batch-1 runs per model")
    parser.add_argument("--warmup", type=arguments.int_at_least(0), default=warmup, help="untimed runs before timing")
    parser.add_argument("--threads", type=count, default=None, help="CPU threads (default: physical cores)")
    parser.add_argument(
        "--engine",
        choices=vocab.ENGINE_CHOICES,
        default="auto",
        help="int8 engine; auto: a TorchScript file's sidecar engine, else the CPU's fast one",
    )
    parser.add_argument("--size", type=arguments.int_at_least(32), default=size, help="input resolution")
    parser.add_argument("--json", type=Path, help="write the report (schema quantlab.benchmark/1) here")
    parser.add_argument("--csv", type=Path, help="write one row per model here")
    parser.add_argument(
        "--plot", type=arguments.file_ending(".png"), help="write a PNG of top-1 against latency here (needs --data)"
    )
    parser.add_argument(
        "--trust",
        action="store_true",
        help="run TorchScript, .pt2 and FILE.py models the kit did not write on this account (they run code)",
    )
    args = parser.parse_args(argv)
    if args.data is None:
        for flag in ("holdout", "images", "plot"):
            if getattr(args, flag) is not None:
                raise KitError(f"--{flag} needs --data FOLDER (it is about accuracy)")
    outputs = [path for path in (args.json, args.csv, args.plot) if path is not None]
    if len({p.resolve() for p in outputs}) < len(outputs):
        raise KitError("--json, --csv and --plot must name different files")
    for flag, path in (("json", args.json), ("csv", args.csv), ("plot", args.plot)):
        files.check_writable(path, f"--{flag}", f"report.{flag}")  # fail now, not after measuring
    return args


def evaluation_batches(args: argparse.Namespace, preprocessing: Preprocessing = IMAGENET):
    """Batches of (images, labels) to measure accuracy on, prepared as the model declares, or None without --data."""
    if args.data is None:
        return None
    try:
        dataset = bench.evaluation_dataset(args.data, args.size, args.holdout, args.images, args.seed, preprocessing)
    except KitError as error:
        if "cannot tell the labels" in str(error):
            raise KitError(f"{error}; or leave out --data to measure timing only") from None
        raise
    return data.loader(dataset, batch_size=eval_batch)


def load_models(args: argparse.Namespace, threads: int) -> list[loading.LoadedModel]:
    """Every model, loaded and run once before any is measured: a bad file stops the run at once."""
    for spec in args.model:  # a model file from elsewhere can run code when it loads: refuse before loading any
        provenance.require_trusted(spec, args.trust)
    loaded = [loading.load_any(spec, args.engine, threads, args.arch, args.size) for spec in args.model]
    names = [model.name for model in loaded]
    for model in loaded:
        if names.count(model.name) > 1:  # two files called int8.pt in different folders
            model.name = model.path or model.name
        for note in model.notes:
            print(note)
        if model.size_mb <= 0:  # sizes are kept to 0.001 MB: "x smaller" would divide by zero
            raise KitError(
                f"{model.name} is under 1 kB, which rounds to 0.000 MB: too small to compare sizes "
                "with; benchmark a real classifier (MobileNetV2's int8 file is about 4 MB)"
            )
    return loaded


def measure(loaded: list[loading.LoadedModel], batches, args: argparse.Namespace) -> list[dict]:
    """Each model's size, latency and accuracy, one after the other on the same settings and photos (each model's
    photos prepared as it declares: quantlab.preprocess)."""
    results, prepared = [], {IMAGENET: batches}
    for model in loaded:
        if model.preprocessing not in prepared:
            print(f"{model.name} declares its preprocessing: {model.preprocessing.describe()}")
            prepared[model.preprocessing] = evaluation_batches(args, model.preprocessing)
        batches = prepared[model.preprocessing]
        print(
            f"measuring {model.name} ({model.format}, {model.method}"
            + (f", engine {model.engine}" if model.engine else "")
            + f"): {args.warmup} warm-up + {args.runs} runs"
        )
        results.append(bench.benchmark_model(model, batches, args.runs, args.warmup, args.size))
        if results[-1]["coverage"] is not None:  # which layers run in int8, and the MB of weights left in float
            print(coverage.format_coverage(results[-1]["coverage"]))
    return results


def write_outputs(document: dict, args: argparse.Namespace) -> None:
    """The files asked for: --plot, --csv, --json (each written whole, or not at all)."""
    if args.plot:
        report.write_plot(args.plot, document)
        print(f"wrote {args.plot}")
    if args.csv:
        report.write_csv(args.csv, document)
        print(f"wrote {args.csv}")
    if args.json:
        files.write_json(args.json, document, "--json")
        print(f"wrote {args.json}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = engines.set_threads(args.threads)
    engine, why = engines.resolve_engine(args.engine)
    print(f"threads: {threads}; int8 engine: {engine} ({why})")
    batches = evaluation_batches(args)
    loaded = load_models(args, threads)
    results = measure(loaded, batches, args)
    settings = report.make_settings(
        args.runs, args.warmup, args.size, args.data, args.holdout, args.seed, threads, engine
    )
    document = report.make_report(results, settings, bench.machine_info(threads, engine))
    print(report.format_table(document))
    write_outputs(document, args)
    return 0


if __name__ == "__main__":
    run_cli(main)
