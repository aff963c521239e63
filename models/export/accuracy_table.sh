#!/usr/bin/env bash
# Rebuilds the accuracy table in docs/export.md: the digits MLP and CNN in
# each weight format, quantized by wginfer, run by wginfer (CPU) and, after
# `wginfer export --to onnx`, by onnxruntime (CPU), and after
# `wginfer export --to tflite`, by LiteRT (CPU), on the 450 held-out digits.
#   ORT_PYTHON=/path/to/python LITERT_PYTHON=/path/to/python bash models/export/accuracy_table.sh
# (ORT_PYTHON: a python with onnxruntime==1.22.* and numpy; LITERT_PYTHON: one
# with ai-edge-litert==2.3.0 and numpy.)
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -n "${WGINFER_BIN:-}" ] || cargo build --release -q
bin=${WGINFER_BIN:-target/release/wginfer}
py=${ORT_PYTHON:?set ORT_PYTHON to a python with onnxruntime}
litert=${LITERT_PYTHON:?set LITERT_PYTHON to a python with ai-edge-litert}
data=models/digits-mlp/digits_test.safetensors
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The CNN reads [N, 1, 8, 8]: the same samples as images.
"$py" - "$data" "$tmp/images.safetensors" <<'PY'
import json, struct, sys
data = open(sys.argv[1], "rb").read()
(n,) = struct.unpack("<Q", data[:8])
header = json.loads(data[8:8 + n])
header["input"]["shape"] = [header["input"]["shape"][0], 1, 8, 8]
head = json.dumps(header).encode()
head += b" " * (-len(head) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(head)) + head + data[8 + n:])
PY

echo "| model | format | ONNX form | wginfer | onnxruntime | .onnx bytes | LiteRT | .tflite bytes |"
echo "|---|---|---|---|---|---|---|---|"
row() {
  local name=$1 model=$2 format=$3 form=$4 data=$data; shift 4
  [ "$name" = CNN ] && data=$tmp/images.safetensors
  local q="$tmp/q.safetensors"
  if [ "$format" = f32 ]; then
    "$bin" convert "$model" -o "$q" >/dev/null
  else
    "$bin" quantize "$model" --format "$format" ${QARGS:-} -o "$q" >/dev/null
  fi
  local ours theirs
  ours=$("$bin" eval "$q" --data "$data" -b 0 | awk '/^accuracy/ {print $2}')
  "$bin" export "$q" --to onnx -o "$tmp/q.onnx" --force "$@" >/dev/null
  theirs=$("$py" models/export/ort_accuracy.py "$tmp/q.onnx" "$data" | awk '{print $2}')
  # TFLite has no form for int4 blocks (the export says so).
  local lite="—" lite_bytes="—"
  if "$bin" export "$q" --to tflite -o "$tmp/q.tflite" --force >/dev/null 2>&1; then
    lite=$("$litert" models/export/litert_accuracy.py "$tmp/q.tflite" "$data" 2>/dev/null | awk '{print $2}')
    lite_bytes=$(stat -c %s "$tmp/q.tflite")
  fi
  echo "| $name | $format | $form | $ours | $theirs | $(stat -c %s "$tmp/q.onnx") | $lite | $lite_bytes |"
}
for m in "MLP models/digits-mlp/model.safetensors" "CNN models/digits-cnn/model.onnx"; do
  set -- $m
  row "$1" "$2" f32 "Gemm"
  row "$1" "$2" f16 "f16 initializer + Cast"
  row "$1" "$2" int8 "DequantizeLinear (axis) + Gemm"
  row "$1" "$2" int8-affine "DequantizeLinear (zero point) + Gemm"
  row "$1" "$2" pow2 "DequantizeLinear (2^-p) + Gemm"
  row "$1" "$2" binary "DequantizeLinear (±1, α) + Gemm"
  row "$1" "$2" int4 "MatMulNBits" --int4 matmulnbits
  row "$1" "$2" int4 "DequantizeLinear (block_size) + Gemm" --int4 dq
  row "$1" "$2" int4-min "MatMulNBits (float zero points)" --int4 matmulnbits
  # W8A8 quantizes the CNN's convolutions too (QConv → ConvInteger).
  if [ "$1" = CNN ]; then
    row "$1" "$2" w8a8 "ReduceMin/Max per image + ConvInteger; per row + MatMulInteger"
  else
    row "$1" "$2" w8a8 "ReduceMin/Max per row + MatMulInteger"
  fi
  row "$1" "$2" 2:4 "dense Gemm"
done
