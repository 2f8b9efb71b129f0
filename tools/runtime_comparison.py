#!/usr/bin/env python3
"""Three runtimes side by side, from one run: size, batch-1 latency (median, p90) and top-1 with its interval.

Every model is loaded with the kit's loader and measured with ``bench.benchmark_model`` on the same held-out
photos (the ones left after ``quantize_model.py --calib-images HOLDOUT`` calibrated on the first HOLDOUT of the
seeded shuffle), in one process, one after the other. Top-1 comes with a 95 % bootstrap interval over the
photos, and each model's difference from the first one with the paired interval of ``quantlab.stats``.

Example (the figures of labs/01's LiteRT section; .tflite files need ai-edge-litert to run):
    python Codes/quantize_model.py --output m/mnv2_int8.tflite --calib-data photos/ --calib-images 200
    python Codes/quantize_model.py --output m/mnv2_pytorch_int8.pt --calib-data photos/ --calib-images 200
    python Codes/quantize_model.py --output m/mnv2_ort_int8.onnx --calib-data photos/ --calib-images 200
    python tools/runtime_comparison.py --data photos/ --holdout 200 --json comparison.json \\
        m/mnv2_pytorch_int8.pt m/mnv2_ort_int8.onnx m/mnv2_int8_fp32.tflite m/mnv2_int8.tflite
"""

from __future__ import annotations

import torch

from quantlab import arguments, bench, data, engines, files, loading, stats
from quantlab.errors import KitError, run_cli

RESAMPLES = 10_000  # bootstrap resamples of the photos for each top-1 interval


def top1_interval(hits: torch.Tensor, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The ``confidence`` bootstrap interval of top-1 (percent) over the photos."""
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, hits.numel(), (RESAMPLES, hits.numel()), generator=generator)
    means = 100 * hits.float()[picks].mean(1)
    low, high = torch.quantile(means, torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2])).tolist()
    return round(low, 2), round(high, 2)


def main(argv: list[str] | None = None) -> int:
    parser = arguments.Parser(description=__doc__)
    parser.add_argument("models", nargs="+", help="model files (the first is the baseline of the differences)")
    parser.add_argument("--data", type=arguments.existing_folder, required=True, help="labelled photos")
    parser.add_argument(
        "--holdout", type=arguments.int_at_least(0), default=200, help="skip the first N photos (the calibration ones)"
    )
    parser.add_argument("--runs", type=arguments.int_at_least(1), default=50, help="timed batch-1 runs per model")
    parser.add_argument("--warmup", type=arguments.int_at_least(0), default=10, help="untimed runs first")
    parser.add_argument("--threads", type=arguments.int_at_least(1), help="CPU threads (default: physical cores)")
    parser.add_argument("--json", type=arguments.file_ending(".json"), help="write every figure here")
    args = parser.parse_args(argv)
    files.check_writable(args.json, "--json", "comparison.json")  # now, not after the measuring
    threads = engines.set_threads(args.threads)
    evaluation = bench.evaluation_dataset(args.data, holdout=args.holdout)
    batches = data.loader(evaluation, batch_size=16)
    loaded = [loading.load_any(spec, "auto", threads) for spec in args.models]  # a bad file stops before measuring
    rows, hits = [], {}
    for model in loaded:
        print(f"measuring {model.name} ({model.runtime}, {model.method}): {args.warmup} warm-up + {args.runs} runs")
        result = bench.benchmark_model(model, batches, args.runs, args.warmup, progress=False, keep_hits=True)
        hits[model.name] = result.pop("hits")
        result["top1_interval"] = top1_interval(hits[model.name])
        rows.append(result)
    if len({h.numel() for h in hits.values()}) != 1:
        raise KitError("the models were scored on different numbers of photos (unreadable ones?); compare again")
    header = f"{'model':<26}{'runtime':<13}{'MB':>7}{'median ms':>11}{'p90 ms':>9}  top-1 % [95% interval]"
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        low, high = row["top1_interval"]
        unstable = "  (unstable)" if row["unstable"] else ""
        print(
            f"{row['name'][:25]:<26}{row['runtime']:<13}{row['size_mb']:>7.2f}{row['latency_ms']['median']:>11.2f}"
            f"{row['latency_ms']['p90']:>9.2f}  {100 * hits[row['name']].float().mean().item():.2f} "
            f"[{low:.2f}, {high:.2f}]{unstable}"
        )
    print(f"\n{stats.difference_table(hits, baseline=rows[0]['name'])}")
    machine = bench.machine_info(threads, None)
    print(f"\n{machine['cpu']} ({machine['arch']}), {threads} threads; {rows[0]['images']} photos")
    if args.json:
        document = {"machine": machine, "holdout": args.holdout, "runs": args.runs, "results": rows}
        files.write_json(args.json, document, "--json")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    run_cli(main)
