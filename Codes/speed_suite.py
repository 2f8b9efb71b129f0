"""The fastest honest way to run MobileNetV2 on this CPU: every path the kit knows, timed side by side.

One process, one machine, batch 1, 224x224, the same settings for every path:
  fp32 eager, fp32 channels-last, fp32 TorchScript,
  int8 on every quantized engine this PyTorch has (x86, onednn, fbgemm, qnnpack), eager and TorchScript,
  int8 PT2E (torch.export + torchao's X86InductorQuantizer, compiled by inductor; its compile time is shown),
  int8 PT2E lowered to ExecuTorch (the XNNPACK quantizer, a .pte file run by XNNPACK; its lowering time is
  shown), where executorch is installed (without it one line says so),
  ONNX Runtime fp32 and ONNX Runtime static int8 (QDQ),
  LiteRT fp32 and int8 (.tflite files run by LiteRT's interpreter with the XNNPACK delegate, the same threads),
  where LiteRT's converter litert-torch is installed (it is optional and heavy: without it one line says so).
Each int8 model is calibrated for the engine it runs on (a few photos), and every
path's top-1 prediction is compared with fp32 eager's on those photos: the
fastest int8 path counts only if it agrees with fp32 on all of them (int8 sums
that saturate on CPUs without VNNI show up here). The table gives median and
p90 milliseconds, each path's latency as a multiple of fp32 eager's and of ONNX
Runtime fp32's (0.20x = five times faster), and the int8 instruction level each
int8 path runs with (quantlab.cpu).

Examples:
    python Codes/speed_suite.py --json speed.json --plot speed.png
    python Codes/speed_suite.py --runs 200 --warmup 20 --threads 1
    python Codes/speed_suite.py --calib-data photos/ --calib-images 32
"""

import argparse
import copy
import datetime
import importlib.util
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from quantlab import (
    arguments,
    bench,
    cpu,
    data,
    engines,
    executorch_runtime,
    files,
    litert,
    loading,
    memory,
    models,
    onnx_tools,
    pt2e,
    quantize,
)
from quantlab.assets import IMAGENET_SAMPLE, asset_path
from quantlab.errors import KitError, first_line, run_cli

# ---- settings (command-line flags override them) -----------------------------
runs = 50  # timed batch-1 runs per path: the table leads with their median
warmup = 10  # untimed runs first: the first calls allocate memory and pick kernels
calib_images = 16  # photos that calibrate each int8 model and check its top-1 against fp32
min_agreement = 1.0  # an int8 path counts as correct when its top-1 matches fp32's on this share of the photos (all)
size = 224  # input resolution
seed = 0  # picks the calibration photos
# -------------------------------------------------------------------------------

SCHEMA = "quantlab.speed_suite/1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags (None: the command line), checked before minutes of measuring."""
    parser = arguments.Parser(description=__doc__)
    count = arguments.int_at_least(1)
    parser.add_argument("--runs", type=count, default=runs, help="timed batch-1 runs per path")
    parser.add_argument("--warmup", type=arguments.int_at_least(0), default=warmup, help="untimed runs before timing")
    parser.add_argument("--threads", type=count, default=None, help="CPU threads (default: physical cores)")
    parser.add_argument(
        "--calib-data",
        type=Path,
        help="calibration photos (default: the offline ImageNet sample "
        "when $QUANTLAB_ASSETS has it, else random noise)",
    )
    parser.add_argument("--calib-images", type=count, default=calib_images, help="how many photos to calibrate on")
    parser.add_argument("--weights", type=Path, help="a fp32 MobileNetV2 state dict (default: torchvision's)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--plot", type=arguments.file_ending(".png"), help="write a PNG bar chart of the latencies here"
    )
    args = parser.parse_args(argv)
    files.check_writable(args.json, "--json", "speed.json")  # fail now, not after minutes of measuring
    files.check_writable(args.plot, "--plot", "speed.png")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise KitError("--plot needs matplotlib, which is not installed: pip install matplotlib (or drop --plot)")
    return args


def calibration_photos(folder: Path | None, count: int) -> tuple[torch.Tensor, str, bool]:
    """count photos as one Nx3xSxS tensor, where they came from, and whether they are real photos."""
    folder = folder if folder is not None else asset_path(IMAGENET_SAMPLE)
    if folder is None:
        print(
            "WARNING: no --calib-data and no offline ImageNet sample: calibrating on random noise. The "
            "latencies are real, but the int8 models' ranges (and the top-1 check) mean nothing."
        )
        noise = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))
        return noise, "random noise", False
    chosen, _ = data.split(data.image_dataset(folder, size, need_labels=False), first_n=count, seed=seed)
    batches = [batch[0] for batch in data.loader(chosen, batch_size=count) if batch is not None]
    if not batches:
        raise KitError(f"none of the {len(chosen)} photos picked from {folder} could be read; pass readable photos")
    return torch.cat(batches), f"{sum(len(b) for b in batches)} photos from {folder}", True


def top1(model, photos: torch.Tensor) -> torch.Tensor:
    """Each photo's top-1 class, one photo at a time (some ONNX exports take batch 1 only)."""
    with torch.inference_mode():
        return torch.stack([model(photo.unsqueeze(0)).argmax(1)[0] for photo in photos])


def channels_last(model: torch.nn.Module):
    """A copy of the model with its weights, and each input, in channels-last memory order (NHWC)."""
    model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    return lambda image: model(image.contiguous(memory_format=torch.channels_last))


def int8_builder(fp32: torch.nn.Module, calibration: list, engine: str, jit: bool, made: dict):
    def build():
        if engine not in made:  # calibrated for this engine: it decides how weights are packed and activations rounded
            made[engine] = quantize.quantize_static(fp32, calibration, engine, progress=False)
        return models.script(made[engine]) if jit else made[engine]

    return build


def pt2e_builder(fp32: torch.nn.Module, calibration: list, folder: Path):
    """PT2E int8 for inductor: export, X86InductorQuantizer, calibrate, convert, save, load compiled (as benchmark.py runs a .pt2)."""

    def build():
        if not pt2e.inductor_int8_available():
            raise KitError("PT2E int8 runs fast through inductor on x86 only (on ARM it needs ExecuTorch)")
        program, facts = pt2e.quantize(copy.deepcopy(fp32), calibration, target="x86", input_size=size)
        path = folder / "mobilenet_v2_pt2e_int8.pt2"
        pt2e.save(program, path, {"method": "static", **facts})
        loaded = loading.load_any(path, input_size=size, check=False)
        if not loaded.model.compiled:  # an uncompiled exported program is correct but says nothing about PT2E's speed
            raise KitError(loaded.notes[0] if loaded.notes else "inductor did not compile the PT2E model")
        return loaded.model

    return build


def onnx_builder(fp32: torch.nn.Module, calibration: list | None, folder: Path, threads: int, facts: dict):
    def build():
        fp32_file = folder / "mobilenet_v2_fp32.onnx"
        if not fp32_file.exists():
            onnx_tools.export_onnx(fp32, fp32_file, size)
        if calibration is None:
            return loading.load_any(fp32_file, threads=threads, input_size=size, check=False).model
        int8_file = onnx_tools.quantize_onnx_static(
            fp32_file, folder / "mobilenet_v2_int8.onnx", calibration, progress=False
        )
        facts.update(onnx_tools.read_metadata(int8_file))  # the number format it picked for this CPU, and why
        return loading.load_any(int8_file, threads=threads, input_size=size, check=False).model

    return build


def litert_missing() -> str | None:
    """Why this machine cannot make the LiteRT rows (None: it can): the converter is optional, the runtime too."""
    try:
        litert.require_runtime()
        litert.check_converter()
    except KitError as error:
        return str(error)
    return None


def litert_builder(fp32: torch.nn.Module, calibration: list | None, folder: Path, threads: int):
    """A .tflite file converted by litert-torch (int8: LiteRT's PT2E quantizer, calibrated on ``calibration``),
    loaded as benchmark.py loads one: LiteRT's interpreter, XNNPACK, ``threads`` threads."""

    def build():
        if calibration is None:
            path = folder / "mobilenet_v2_fp32.tflite"
            litert.convert_fp32(copy.deepcopy(fp32), path, size)
        else:
            path = folder / "mobilenet_v2_int8.tflite"
            litert.convert_int8(copy.deepcopy(fp32), calibration, path, size)
        return loading.load_any(path, threads=threads, input_size=size, check=False).model

    return build


def executorch_builder(fp32: torch.nn.Module, calibration: list, folder: Path, threads: int):
    """PT2E int8 with the XNNPACK quantizer lowered to a .pte file, loaded as benchmark.py loads one: ExecuTorch,
    XNNPACK, ``threads`` threads. Its ``compile_s`` is the lowering (paid once, when the file is written)."""

    def build():
        buffer, facts = executorch_runtime.quantize_to_pte(copy.deepcopy(fp32), calibration, size)
        path = folder / "mobilenet_v2_int8.pte"
        executorch_runtime.save_pte(buffer, path, {"method": "static", **facts})
        return loading.load_any(path, threads=threads, input_size=size, check=False).model

    return build


def path_runtime(name: str) -> str:
    """What runs a path, from its name: ONNX Runtime, LiteRT, ExecuTorch, inductor (PT2E) or PyTorch's
    eager/TorchScript."""
    if name.startswith("ONNX"):
        return "onnxruntime"
    if name.startswith("LiteRT"):
        return "litert"
    if "ExecuTorch" in name:
        return "executorch"
    return "inductor" if "PT2E" in name else "pytorch"


XNNPACK_RUNTIMES = ("litert", "executorch")  # XNNPACK picks its own int8 kernels for the CPU (and does not saturate)


def isa_shown(result: dict) -> str:
    if result["runtime"] in XNNPACK_RUNTIMES and result["precision"] == "int8":
        return "XNNPACK"
    return result["int8_isa"] or ""


def ratio(value: float | None, baseline: float | None) -> float | None:
    return round(value / baseline, 3) if value is not None and baseline else None


def shown(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(results: list[dict], photos_note: str) -> str:
    header = (
        f"{'path':<28}{'median ms':>10}{'p90 ms':>9}{'x fp32 eager':>14}{'x ORT fp32':>12}{'top-1 = fp32':>14}"
        f"  {'int8 ISA':<12}{'peak MB':>8}{'compile s':>10}"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        if result["error"]:
            lines.append(f"{result['name']:<28}  failed: {result['error']}")
            continue
        agreement = result["top1_agreement"]
        median = ("!" if result.get("unstable") else "") + f"{result['median_ms']:.2f}"
        lines.append(
            f"{result['name']:<28}{median:>10}{result['p90_ms']:>9.2f}"
            f"{shown(result['vs_fp32_eager'], '.2f'):>13}x{shown(result['vs_onnxruntime_fp32'], '.2f'):>11}x"
            f"{shown(agreement and 100 * agreement, '.0f'):>13}%  {isa_shown(result):<12}"
            f"{shown(result.get('peak_rss_mb'), '.0f'):>8}{shown(result.get('compile_s'), '.1f'):>10}"
        )
    lines.append(
        f"x fp32 eager / x ORT fp32: this path's median latency over theirs (0.20x = 5 times faster); "
        f"top-1 = fp32: photos whose top-1 class matches fp32 eager's ({photos_note}); int8 ISA: the "
        f"instruction level the int8 path runs with (avx2, avx512: no VNNI, sums can saturate; XNNPACK: LiteRT's "
        f"or ExecuTorch's kernels, chosen by XNNPACK for this CPU); peak MB: the process's peak resident memory "
        f"during that path's timed runs; compile s: the wait for inductor's first compile (PT2E inductor, once per "
        f"process and input shape) or for ExecuTorch's lowering to XNNPACK (once, when the .pte file is written)"
    )
    for result in results:
        if not result["error"] and result.get("unstable"):
            lines.append(f"! UNSTABLE latency of {result['name']}: {result['unstable']}")
    return "\n".join(lines)


def write_latency_chart(path: Path, report: dict) -> None:
    """Horizontal bars of median latency (p90 as a whisker), int8 and fp32 in two colours; atomic PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed (CI, ssh on a Pi)
    import matplotlib.pyplot as plt

    results = [r for r in report["results"] if not r["error"]]
    figure, axes = plt.subplots(figsize=(9, 0.35 * len(results) + 1.5))
    names = [r["name"] for r in results]
    medians = [r["median_ms"] for r in results]
    whiskers = [[0] * len(results), [r["p90_ms"] - r["median_ms"] for r in results]]
    colours = ["tab:orange" if r["precision"] == "int8" else "tab:blue" for r in results]
    left = min(medians) / 2  # a log axis has no zero: bars start below the fastest path
    axes.barh(names, [m - left for m in medians], left=left, xerr=whiskers, color=colours, capsize=3)
    for index, result in enumerate(results):
        axes.text(
            result["p90_ms"] * 1.05,
            index,
            f"{result['median_ms']:.2f} ms = {shown(result['vs_fp32_eager'], '.2f')}x fp32 eager",
            va="center",
            fontsize=8,
        )
    axes.set_xscale("log")  # equal distances are equal ratios
    axes.invert_yaxis()  # the first path on top, as in the table
    machine, settings = report["machine"], report["settings"]
    axes.set_xlabel("median batch-1 latency, ms, log scale (whisker: p90; lower is better). orange: int8, blue: fp32")
    axes.set_title(
        f"MobileNetV2 {settings['input_size']}x{settings['input_size']} on {machine['cpu']}, "
        f"{settings['threads']} threads, torch {machine['torch']}",
        fontsize=9,
    )
    axes.set_xlim(left, max(r["p90_ms"] for r in results) * 6)  # room for the labels
    axes.grid(axis="x", which="both", alpha=0.3)
    figure.tight_layout()
    try:
        files.atomic_write(path, lambda partial: figure.savefig(partial, format="png", dpi=120), "--plot")
    finally:
        plt.close(figure)


def paths_to_time(
    fp32: torch.nn.Module,
    calibration: list,
    folder: Path,
    threads: int,
    onnx_facts: dict,
    with_litert: bool,
    with_executorch: bool,
) -> list:
    """Every path this PyTorch can take: (name, precision, engine, build), build() making the runnable model."""
    paths = [
        ("fp32 eager", "fp32", None, lambda: fp32),
        ("fp32 channels-last", "fp32", None, lambda: channels_last(fp32)),
        ("fp32 TorchScript", "fp32", None, lambda: models.script(copy.deepcopy(fp32))),
    ]
    quantized: dict[str, torch.nn.Module] = {}  # one int8 model per engine, eager and TorchScript share it
    for engine in (e for e in torch.backends.quantized.supported_engines if e != "none"):
        for jit, how in ((False, "eager"), (True, "TorchScript")):
            paths.append(
                (f"int8 {engine} {how}", "int8", engine, int8_builder(fp32, calibration, engine, jit, quantized))
            )
    paths.append(("int8 PT2E inductor", "int8", None, pt2e_builder(fp32, calibration, folder)))
    if with_executorch:
        paths.append(("int8 PT2E ExecuTorch", "int8", None, executorch_builder(fp32, calibration, folder, threads)))
    paths.append(("ONNX Runtime fp32", "fp32", None, onnx_builder(fp32, None, folder, threads, {})))
    paths.append(
        ("ONNX Runtime int8 static", "int8", None, onnx_builder(fp32, calibration, folder, threads, onnx_facts))
    )
    if with_litert:
        paths.append(("LiteRT fp32", "fp32", None, litert_builder(fp32, None, folder, threads)))
        paths.append(("LiteRT int8", "int8", None, litert_builder(fp32, calibration, folder, threads)))
    return paths


def time_paths(paths: list, photos: torch.Tensor, args: argparse.Namespace) -> list[dict]:
    """Build each path, check its top-1 against fp32 eager's (the first path), time it; a path that cannot be
    built here is recorded with its error."""
    results, reference = [], None
    for name, precision, engine, build in tqdm(paths, desc="paths", unit="path"):
        runtime = path_runtime(name)
        kernels = "onednn" if runtime == "inductor" else engine  # inductor lowers PT2E int8 to oneDNN's kernels
        # XNNPACK picks its own int8 kernels (and does not saturate): the ISA column is for PyTorch's and ORT's
        isa = (
            None
            if precision == "fp32" or runtime in XNNPACK_RUNTIMES
            else cpu.engine_isa(kernels)
            if kernels
            else cpu.int8_isa()
        )
        result = {
            "name": name,
            "precision": precision,
            "engine": engine,
            "runtime": runtime,
            "int8_isa": isa and isa.name,
            "error": None,
        }
        try:
            model = build()
        except Exception as error:  # a path this machine cannot take: say why, measure the others
            results.append({**result, "error": first_line(error, with_type=True, limit=150)})
            continue
        if engine is not None:
            engines.set_engine(engine)  # quantized ops dispatch on the active engine too
        predictions = top1(model, photos)
        reference = predictions if reference is None else reference  # fp32 eager comes first
        memory.reset_peak()  # the peak of this path's timed runs (the process, every path built so far)
        latency = bench.measure_latency(model, size, args.runs, args.warmup)
        results.append(
            {
                **result,
                "median_ms": latency["median_ms"],
                "p90_ms": latency["p90_ms"],
                "mean_ms": latency["mean_ms"],
                "fps": latency["fps"],
                "unstable": latency["unstable"],
                "peak_rss_mb": memory.peak_rss_mb(),
                "compile_s": getattr(model, "compile_s", None),  # PT2E: inductor's first compile / the lowering, s
                "top1_agreement": round(float((predictions == reference).float().mean()), 4),
            }
        )
    measured = [r for r in results if not r["error"]]
    eager = next(r["median_ms"] for r in measured if r["name"] == "fp32 eager")
    onnx_fp32 = next((r["median_ms"] for r in measured if r["name"] == "ONNX Runtime fp32"), None)
    for result in measured:
        result.update(
            vs_fp32_eager=ratio(result["median_ms"], eager), vs_onnxruntime_fp32=ratio(result["median_ms"], onnx_fp32)
        )
    return results


def print_verdict(results: list[dict], photos_count: int, auto_engine: str) -> dict | None:
    """The fastest int8 path that agrees with fp32 (returned), the faster ones that do not, and auto's pick."""
    measured = [r for r in results if not r["error"]]
    correct_int8 = [r for r in measured if r["precision"] == "int8" and r["top1_agreement"] >= min_agreement]
    best = min(correct_int8, key=lambda r: r["median_ms"], default=None)
    which = "all" if min_agreement >= 1 else f"{100 * min_agreement:.0f}% of the"
    if best is None:
        print(f"no int8 path agrees with fp32's top-1 on {which} {photos_count} check photos")
    else:
        print(
            f"fastest int8 path that agrees with fp32 on {which} {photos_count} check photos: {best['name']}, "
            f"{best['median_ms']:.2f} ms = {shown(best['vs_onnxruntime_fp32'], '.2f')}x ONNX Runtime fp32, "
            f"{best['vs_fp32_eager']:.2f}x fp32 eager (int8 ISA {isa_shown(best)})"
        )
    faster_but_wrong = [
        r
        for r in measured
        if r["precision"] == "int8" and r not in correct_int8 and (best is None or r["median_ms"] < best["median_ms"])
    ]
    for result in sorted(faster_but_wrong, key=lambda r: r["median_ms"]):
        print(
            f"  faster but disagrees with fp32: {result['name']}, {result['median_ms']:.2f} ms, top-1 = fp32 on "
            f"{100 * result['top1_agreement']:.0f}% (int8 ISA {isa_shown(result)})"
        )
    # auto chooses among x86 and onednn (qnnpack on ARM) for TorchScript models, the demo's default
    choices = [
        r for r in correct_int8 if r["engine"] in (*engines.X86_CANDIDATES, "qnnpack") and "TorchScript" in r["name"]
    ]
    fastest_engine = min(choices, key=lambda r: r["median_ms"], default=None)
    if fastest_engine is not None:
        verdict = "agrees" if fastest_engine["engine"] == auto_engine else "differs: the machine may have been busy"
        print(f"engine auto picks {auto_engine}; fastest engine in this run: {fastest_engine['engine']} ({verdict})")
    return best


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = engines.set_threads(args.threads)
    photos, photos_note, real_photos = calibration_photos(args.calib_data, args.calib_images)
    fp32 = models.mobilenet_v2_fp32(args.weights)
    auto_engine, auto_reason = engines.resolve_engine("auto")
    print(f"int8: {cpu.describe()}")
    print(
        f"threads: {threads} (of {engines.physical_cores()} physical cores); engine auto: {auto_engine} ({auto_reason})"
    )
    without_litert = litert_missing()
    if without_litert:
        print(f"no LiteRT rows: {without_litert}")
    without_executorch = executorch_runtime.missing()
    if without_executorch:
        print(f"no ExecuTorch row: {without_executorch}")
    onnx_facts: dict = {}  # the number format ONNX Runtime's static quantization picked for this CPU, and why
    with tempfile.TemporaryDirectory(prefix="quantlab-speed-") as folder:
        calibration = list(photos.split(8))
        paths = paths_to_time(
            fp32, calibration, Path(folder), threads, onnx_facts, not without_litert, not without_executorch
        )
        results = time_paths(paths, photos, args)
    print(format_table(results, photos_note))
    if onnx_facts.get("format_reason"):
        print(
            f"ONNX Runtime int8 format: {onnx_facts['activation_type']} activations, {onnx_facts['weight_type']} "
            f"weights ({onnx_facts['format_reason']})"
        )
    best = print_verdict(results, len(photos), auto_engine)
    if not real_photos:
        print("WARNING: calibrated on random noise: the top-1 column means nothing; pass --calib-data PHOTOS")

    report = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": bench.machine_info(threads, auto_engine),
        "onnxruntime_int8_format": onnx_facts or None,
        "litert": {
            "runtime": litert.runtime_version(),
            "converter": litert.converter_version(),
            "missing": without_litert,
        },
        "executorch": {"version": executorch_runtime.runtime_version(), "missing": without_executorch},
        "settings": {
            "runs": args.runs,
            "warmup": args.warmup,
            "batch_size": 1,
            "input_size": size,
            "threads": threads,
            "calibration": photos_note,
            "calibration_is_photos": real_photos,
            "min_agreement": min_agreement,
            "auto_engine": auto_engine,
            "auto_engine_reason": auto_reason,
        },
        "results": results,
        "best_int8": best and best["name"],
    }
    if args.json:
        files.write_json(args.json, report, "--json")
        print(f"wrote {args.json}")
    if args.plot:
        write_latency_chart(args.plot, report)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    run_cli(main)
