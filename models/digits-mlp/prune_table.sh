#!/usr/bin/env bash
# Rebuilds the pruning table in docs/pruning.md: accuracy on the digits held-out split
# by method and sparsity, without and with recovery fine-tuning (3 epochs of
# SGD on the training split, masks fixed). Taylor importance is calibrated on
# the training split. Run from anywhere:
#   bash models/digits-mlp/prune_table.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -n "${WGINFER_BIN:-}" ] || cargo build --release -q
bin=${WGINFER_BIN:-target/release/wginfer}
m=models/digits-mlp
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

acc() { awk '/^accuracy/ {print $4}'; }
size() { "$bin" inspect "$tmp/p.safetensors" | awk '/^parameters/ {print $(NF-1), $NF}'; }
run() {
  local label=$1 sparsity=$2; shift 2
  local a b s
  a=$("$bin" prune "$m/model.safetensors" "$@" --eval "$m/digits_test.safetensors" -o "$tmp/p.safetensors" | acc)
  s=$(size)
  b=$("$bin" prune "$m/model.safetensors" "$@" --finetune "$m/digits_train.safetensors" --epochs 3 \
      --eval "$m/digits_test.safetensors" -o "$tmp/p.safetensors" | acc)
  echo "| $label | $sparsity | $a | $b | $s |"
}
base=$("$bin" eval "$m/model.safetensors" --data "$m/digits_test.safetensors" -b 0 | awk '/^accuracy/ {print $2}')
echo "| method | sparsity | accuracy | with recovery | parameters |"
echo "|---|---|---|---|---|"
echo "| none (f32) | 0% | $base | - | 67.3 KiB |"
for s in 0.1 0.3 0.5 0.7 0.9; do
  run "magnitude (global)" "$(awk -v s=$s 'BEGIN {print s*100}')%" --method magnitude --sparsity "$s"
  run "Taylor (global)" "$(awk -v s=$s 'BEGIN {print s*100}')%" --method taylor --sparsity "$s" --calibration "$m/digits_train.safetensors"
done
run "2:4 (magnitude)" "50%" --method nm --pattern 2:4
run "2:4 (magnitude), fc1 dense" "50% of fc2, fc3" --method nm --pattern 2:4 --keep fc1
run "channels (magnitude)" "50% of fc1, fc2 outputs" --method channels --sparsity 0.5
