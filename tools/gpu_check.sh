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
echo "gpu_check: logs and runs in $OUT" >&2
trap 'echo "gpu_check: a step failed; its log is in $OUT" >&2' ERR
export WANDB_MODE=${WANDB_MODE:-disabled}
row() { printf '| %s | %s |\n' "$1" "$2" >> "$OUT/table.md"; }
: > "$OUT/table.md"
summary() { $PY -c 'import json, sys; print(sys.argv[2].format(**json.load(open(sys.argv[1]))))' "$1" "$2"; }

device=$($PY -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU: CPU")')
row "device" "$device, torch $($PY -c 'import torch; print(torch.__version__)')"

# The process group a data-parallel run makes here, and one collective on each kind of tensor
# (in one process: with one GPU, NCCL's half is checked for its routing, not its transport).
row "process group" "$($PY - <<'PY'
import os, torch, torch.distributed as dist
from seq2seq.train.distributed import backend
import socket
with socket.socket() as s:  # a free port, not a fixed one another job may hold
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
groups = backend("auto")
dist.init_process_group(groups, rank=0, world_size=1)
tensors = [torch.ones(2)] + ([torch.ones(2, device="cuda")] if torch.cuda.is_available() else [])
for t in tensors:
    dist.all_reduce(t)
print(groups + ": all_reduce on " + ", ".join(str(t.device) for t in tensors))
dist.destroy_process_group()
PY
)"

echo "benchmark" >&2
$PY tools/benchmark.py --steps 30 --test-sentences 200 > "$OUT/benchmark.txt" 2> "$OUT/benchmark.log"
while IFS= read -r line; do row "benchmark" "$line"; done < <(grep -E "^(device|precision|train_tokens_per_second|train_gflops|matmul_compute|train_utilisation|greedy_sent|beam5_sent)" "$OUT/benchmark.txt")

train() {  # NAME SCRIPT STEPS FORMAT: a short training run and its results.json in one row
    echo "training $1: $3 steps" >&2
    $PY "experiments/$2" --run-dir "$OUT/$1" train.time_budget=null "train.max_steps=$3" "train.valid_every=$3" \
        tracking.enabled=false > "$OUT/$1.log" 2>&1
    row "$1 training" "$(summary "$OUT/$1/results.json" "$4")"
}
timed() {  # NAME COMMAND...: the command's output lines, wall time and first line in one row
    local start out
    start=$(date +%s%N)
    out=$("${@:2}" 2> "$OUT/$1.log")
    row "$1" "$(echo "$out" | wc -l) lines in $(( ($(date +%s%N) - start) / 1000000 )) ms: $(echo "$out" | head -1 | cut -c1-100)"
}

train translate translate.py "$STEPS" \
    '{train_steps} steps, {train_tokens_per_second:,.0f} tokens/s, {precision}, test BLEU {test_bleu_beam:.2f}, {device}'
printf 'I am cold.\nWhere is the station?\n' > "$OUT/sentences.txt"
timed seq2seq-translate sh -c "$PY tools/translate.py '$OUT/translate' < '$OUT/sentences.txt'"
train caption caption.py "$(( STEPS * 2 / 3 ))" \
    '{train_steps} steps, {images_per_second:,.0f} images/s, {precision}, test BLEU-4 {test_bleu4:.2f}, {device}'

mkdir -p "$OUT/images"
$PY - "$OUT/images" <<'EOF'
import sys
from PIL import Image, ImageDraw
for i, colour in enumerate(["red", "gold", "green", "blue"]):
    image = Image.new("RGB", (96, 96), "white")
    ImageDraw.Draw(image).ellipse((16, 16, 80, 80), fill=colour)
    image.save(f"{sys.argv[1]}/circle-{i}.png")
EOF
timed seq2seq-caption $PY tools/caption.py "$OUT/caption" "$OUT/images"
echo
echo "| check | result |"
echo "|---|---|"
cat "$OUT/table.md"
echo
echo "logs and runs: $OUT"
