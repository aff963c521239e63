#!/usr/bin/env bash
# Rebuilds the quantization table in docs/quantization.md: accuracy and size per weight
# format on the digits held-out split. Run from anywhere:
#   bash models/digits-mlp/quant_table.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -n "${WGINFER_BIN:-}" ] || cargo build --release -q
bin=${WGINFER_BIN:-target/release/wginfer}

model=models/digits-mlp/model.safetensors
data=models/digits-mlp/digits_test.safetensors
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

base=$("$bin" eval "$model" --data "$data" -b 0 | awk '/^accuracy/ {print $2}')
echo "| format | layers | accuracy | change (points) | parameter bytes | file bytes |"
echo "|---|---|---|---|---|---|"
echo "| f32 | all | $base | 0.00 | $("$bin" inspect "$model" | awk '/^parameters/ {print $(NF-1), $NF}') | $(stat -c %s "$model") |"
row() {
  local label=$1 layers=$2; shift 2
  local out
  out=$("$bin" quantize "$model" "$@" --eval "$data" -o "$tmp/q.safetensors")
  local acc delta params
  acc=$(awk '/^accuracy/ {print $4}' <<<"$out")
  delta=$(awk '/^accuracy/ {gsub(/[()]/, "", $5); print $5}' <<<"$out")
  params=$("$bin" inspect "$tmp/q.safetensors" | awk '/^parameters/ {print $(NF-1), $NF}')
  echo "| $label | $layers | $acc | $delta | $params | $(stat -c %s "$tmp/q.safetensors") |"
}
for f in f16 int8 int8-affine pow2 pow2-tensor int4 int4-min int4/64 int4/128 w8a8 binary binary-xnor; do
  row "$f" all --format "$f"
done
row binary "fc2 only (fc1, fc3 f16)" --format binary --layer fc1=f16 --layer fc3=f16
row binary-xnor "fc2 only (fc1, fc3 f16)" --format binary-xnor --layer fc1=f16 --layer fc3=f16
