#!/usr/bin/env bash
# The quantization toolkit's headline figures, reproducibly (README "Measured figures"):
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
quantize static_per_channel.pt                                   # histogram observer (default)
quantize static_per_channel_again.pt                             # same seed: must give the same numbers
quantize static_per_tensor_minmax.pt --granularity per_tensor --observer minmax
quantize dynamic.pt --method dynamic

$PY Codes/benchmark.py --model "$FLOAT" --model "$OUT/static_per_channel.pt" \
    --model "$OUT/static_per_channel_again.pt" --model "$OUT/static_per_tensor_minmax.pt" --model "$OUT/dynamic.pt" \
    --data "$PHOTOS" --holdout 200 --seed 0 --runs 100 --warmup 20 \
    --json "$OUT/quantize_figures.json" --csv "$OUT/quantize_figures.csv" --plot "$OUT/quantize_figures.png"
