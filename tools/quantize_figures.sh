#!/usr/bin/env bash
# The quantization toolkit's headline figures, reproducibly (docs/figures.md, written from docs/runs/quantize_methods.json):
# the offline float MobileNetV2, calibrated on 200 of the 1000 sample photos, evaluated on the other 800.
#   make figures-quantize            (or: bash tools/quantize_figures.sh [OUTPUT_DIR])
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ASSETS=${QUANTLAB_ASSETS:-../shared/assets}
OUT=${1:-runs/figures}
FLOAT=$ASSETS/weights/mobilenet_v2_float_from_int8.pth
PHOTOS=$ASSETS/imagenet-sample
mkdir -p "$OUT"

quantize() {  # quantize OUTPUT [flags]: 200 calibration photos, seed 0
    local output=$1; shift
    $PY Codes/quantize_model.py --model "$FLOAT" --calib-data "$PHOTOS" --calib-images 200 --seed 0 \
        --output "$OUT/$output" "$@"
}
# engine auto: the faster of x86 and onednn on this CPU (measured once, cached)
quantize static_per_channel.pt                                   # histogram observer (default)
quantize static_per_channel_again.pt                             # same seed: must give the same numbers
quantize static_per_tensor_minmax.pt --granularity per_tensor --observer minmax
# the x86 engine keeps activations to 7 bits (its kernels could overflow with 8): coarser steps,
# so the activation observer matters more there
quantize static_per_channel_x86.pt --engine x86
quantize static_per_tensor_minmax_x86.pt --engine x86 --granularity per_tensor --observer minmax
# QAT where PTQ loses (per tensor on x86), notebook 4's recipe: 8 epochs on the 200 calibration photos, distilled
# from the float model, BatchNorm frozen from the start, the int8 ranges from epoch 4
quantize qat_per_tensor_x86.pt --engine x86 --method qat --granularity per_tensor --epochs 8 --lr 1e-4 \
    --qat-loss distill --freeze-observers-epoch 4
quantize dynamic.pt --method dynamic
quantize pt2e.pt2                                                # PT2E: torch.export + X86InductorQuantizer (torchao)
quantize static_qdq.onnx                                         # ONNX Runtime static QDQ, U8S8 as this CPU allows

models=()
for name in static_per_channel static_per_channel_again static_per_tensor_minmax static_per_channel_x86 \
            static_per_tensor_minmax_x86 qat_per_tensor_x86 dynamic; do
    models+=(--model "$OUT/$name.pt")
done
models+=(--model "$OUT/pt2e.pt2" --model "$OUT/static_qdq.onnx")
$PY Codes/benchmark.py --model "$FLOAT" "${models[@]}" \
    --data "$PHOTOS" --holdout 200 --seed 0 --runs 100 --warmup 20 \
    --json docs/runs/quantize_methods.json --csv "$OUT/quantize_figures.csv" --plot "$OUT/quantize_figures.png"
$PY tools/figures.py                                             # docs/runs/*.json -> docs/figures.md
