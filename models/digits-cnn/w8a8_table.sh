#!/usr/bin/env bash
# Rebuilds the digits CNN rows of the W8A8 accuracy table in docs/quantization.md:
# top-1 accuracy on the 450 held-out digits (`wginfer eval`, CPU) of the f32
# CNN, of `quantize --format w8a8` (both Conv layers as QConv, the Gemm as
# QLinear) and of w8a8 with the convolutions kept f32. Run from anywhere:
#   bash models/digits-cnn/w8a8_table.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -n "${WGINFER_BIN:-}" ] || cargo build --release -q
bin=${WGINFER_BIN:-target/release/wginfer}
model=models/digits-cnn/model.onnx
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The CNN reads [N, 1, 8, 8]: the test split's samples as images.
python3 - models/digits-mlp/digits_test.safetensors "$tmp/images.safetensors" <<'PY'
import json, struct, sys
data = open(sys.argv[1], "rb").read()
(n,) = struct.unpack("<Q", data[:8])
header = json.loads(data[8:8 + n])
header["input"]["shape"] = [header["input"]["shape"][0], 1, 8, 8]
head = json.dumps(header).encode()
head += b" " * (-len(head) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(head)) + head + data[8 + n:])
PY
data=$tmp/images.safetensors

acc() { "$bin" eval "$1" --data "$data" -b "$2" | awk '/^accuracy/ {print $2}'; }
right() { "$bin" eval "$1" --data "$data" -b 0 | awk '/^accuracy/ {gsub(/[()]/, "", $3); split($3, c, "/"); print c[1]}'; }
base=$(acc "$model" 0)
base_right=$(right "$model")
echo "| model | layers in int8 | accuracy (batch 450) | accuracy (batch 1) | change (points) | parameter bytes |"
echo "|---|---|---|---|---|---|"
echo "| f32 | none | $base | $(acc "$model" 1) | 0.00 | $("$bin" inspect "$model" | awk '/^parameters/ {print $(NF-1), $NF}') |"
row() {
  local label=$1 layers=$2; shift 2
  "$bin" quantize "$model" --format w8a8 "$@" -o "$tmp/q.safetensors" >/dev/null
  local a
  a=$(acc "$tmp/q.safetensors" 0)
  echo "| $label | $layers | $a | $(acc "$tmp/q.safetensors" 1) | $(awk -v a="$(right "$tmp/q.safetensors")" -v b="$base_right" 'BEGIN {printf "%+.2f", (a - b) / 450 * 100}') | $("$bin" inspect "$tmp/q.safetensors" | awk '/^parameters/ {print $(NF-1), $NF}') |"
}
row w8a8 "conv1, conv2 (QConv), fc (QLinear)"
row w8a8 "fc only (--keep conv1 --keep conv2)" --keep conv1 --keep conv2
