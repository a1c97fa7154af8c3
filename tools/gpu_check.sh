#!/usr/bin/env bash
# The GPU path end to end, in one short run: the benchmark (training tokens/s, utilisation of
# the GPU's measured matmul rate), a short translation training, the translate tool on its
# checkpoint, a short captioning training and the caption tool on a small folder; one table.
#
#   tools/gpu_check.sh                 # .venv/bin/python, 300 translation and 200 captioning steps
#   PYTHON=python STEPS=50 OUT=/tmp/g tools/gpu_check.sh
#
# It runs on a CPU too (train.device=auto), where it checks the same path more slowly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
STEPS=${STEPS:-300}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export WANDB_MODE=${WANDB_MODE:-disabled}
row() { printf '| %s | %s |\n' "$1" "$2" >> "$OUT/table.md"; }
: > "$OUT/table.md"
summary() { $PY -c 'import json, sys; print(sys.argv[2].format(**json.load(open(sys.argv[1]))))' "$1" "$2"; }

device=$($PY -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU: CPU")')
row "device" "$device, torch $($PY -c 'import torch; print(torch.__version__)')"

echo "[1/5] benchmark" >&2
$PY tools/benchmark.py --steps 30 --test-sentences 200 > "$OUT/benchmark.txt" 2> "$OUT/benchmark.log"
while IFS= read -r line; do row "benchmark" "$line"; done < <(grep -E "^(device|precision|train_tokens_per_second|train_gflops|matmul_compute|train_utilisation|greedy_sent|beam5_sent)" "$OUT/benchmark.txt")

echo "[2/5] translation: $STEPS steps" >&2
$PY experiments/translate.py --run-dir "$OUT/translate" train.time_budget=null "train.max_steps=$STEPS" \
    "train.valid_every=$STEPS" tracking.enabled=false > "$OUT/translate.log" 2>&1
row "translation training" "$(summary "$OUT/translate/results.json" \
    '{train_steps} steps, {train_tokens_per_second:,.0f} tokens/s, {precision}, test BLEU {test_bleu_beam:.2f}, {device}')"

echo "[3/5] the translate tool" >&2
start=$(date +%s.%N)
out=$(printf 'I am cold.\nWhere is the station?\n' | $PY tools/translate.py "$OUT/translate" 2> "$OUT/translate_tool.log")
row "seq2seq-translate" "$(echo "$out" | wc -l) lines in $(echo "$(date +%s.%N) - $start" | bc | cut -c1-5) s: $(echo "$out" | head -1 | cut -c1-80)"

echo "[4/5] captioning: $(( STEPS * 2 / 3 )) steps" >&2
$PY experiments/caption.py --run-dir "$OUT/caption" train.time_budget=null "train.max_steps=$(( STEPS * 2 / 3 ))" \
    "train.valid_every=$(( STEPS * 2 / 3 ))" tracking.enabled=false > "$OUT/caption.log" 2>&1
row "captioning training" "$(summary "$OUT/caption/results.json" \
    '{train_steps} steps, {images_per_second:,.0f} images/s, {precision}, test BLEU-4 {test_bleu4:.2f}, {device}')"

echo "[5/5] the caption tool" >&2
mkdir -p "$OUT/images"
$PY - "$OUT/images" <<'EOF'
import sys
from PIL import Image, ImageDraw
for i, colour in enumerate(["red", "gold", "green", "blue"]):
    image = Image.new("RGB", (96, 96), "white")
    ImageDraw.Draw(image).ellipse((16, 16, 80, 80), fill=colour)
    image.save(f"{sys.argv[1]}/circle-{i}.png")
EOF
start=$(date +%s.%N)
caps=$($PY tools/caption.py "$OUT/caption" "$OUT/images" 2> "$OUT/caption_tool.log")
row "seq2seq-caption" "$(echo "$caps" | wc -l) images in $(echo "$(date +%s.%N) - $start" | bc | cut -c1-5) s: $(echo "$caps" | head -1 | cut -c1-100)"

echo
echo "| check | result |"
echo "|---|---|"
cat "$OUT/table.md"
echo
echo "logs and runs: $OUT"
