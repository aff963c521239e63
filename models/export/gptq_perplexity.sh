#!/usr/bin/env bash
# The calibrated decoder quantization table of docs/quantization.md:
# SmolLM2's f32 directory (models/smollm2/to_hf.py) quantized by `wginfer
# quantize` with ggml's round-to-nearest quantizers and with calibration
# (GPTQ; SmoothQuant for w8a8), each file scored by llama.cpp's
# llama-perplexity and by `wginfer perplexity` (the same protocol).
#
#   WGINFER_SMOLLM2_HF=... LLAMA_CPP_BIN=.../build/bin [WGINFER_BIN=...] \
#     bash models/export/gptq_perplexity.sh [TOKENS] [CHUNKS]
#
# Calibration text: Debian's GFDL-1.3, Apache-2.0 and MPL-2.0 licence texts
# (51 kB); evaluation text: its GPL-3 (35 kB), a different document.
# TOKENS (calibration tokens) defaults to 4096; CHUNKS (of 512 tokens) to 8;
# threads to 2.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tokens=${1:-4096}
chunks=${2:-8}
src=${WGINFER_SMOLLM2_HF:?set WGINFER_SMOLLM2_HF to the f32 directory of models/smollm2/to_hf.py}
bin=${LLAMA_CPP_BIN:?set LLAMA_CPP_BIN to llama.cpp build/bin}
wg=${WGINFER_BIN:-$here/../../target/release/wginfer}
[ -x "$wg" ] || (cd "$here/../.." && cargo build --release --bin wginfer)
licenses=/usr/share/common-licenses
text=$licenses/GPL-3
out=$(mktemp -d)
cat "$licenses/GFDL-1.3" "$licenses/Apache-2.0" "$licenses/MPL-2.0" > "$out/calibration.txt"
score() {
  local lc wp
  lc=$("$bin/llama-perplexity" -m "$1" -f "$text" -c 512 --chunks "$chunks" -t 2 2>&1 \
    | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')
  wp=$("$wg" perplexity "$1" --text "$text" --chunk 512 --chunks "$chunks" 2>/dev/null \
    | sed -n 's/^perplexity \([0-9.]*\).*/\1/p')
  echo "| $2 | $lc | $wp |"
}
echo "| file | llama.cpp | wginfer perplexity |"
echo "|---|---:|---:|"
"$wg" export "$src" --to gguf --gguf-type keep -o "$out/f32.gguf" --force >/dev/null
score "$out/f32.gguf" "f32"
for t in q4_0 q4_1 q4_k q8_0; do
  "$wg" quantize "$src" --format "$t" -o "$out/rtn-$t.gguf" >/dev/null
  score "$out/rtn-$t.gguf" "$t round-to-nearest"
  [ "$t" = q8_0 ] && break
  "$wg" quantize "$src" --format "$t" --calibration "$out/calibration.txt" \
    --calibration-tokens "$tokens" -o "$out/gptq-$t.gguf" >/dev/null
  score "$out/gptq-$t.gguf" "$t GPTQ ($tokens tokens)"
done
"$wg" quantize "$src" --format w8a8 --calibration "$out/calibration.txt" \
  --calibration-tokens "$tokens" -o "$out/w8a8.gguf" >/dev/null
score "$out/w8a8.gguf" "w8a8 (SmoothQuant α 0.5, then Q8_0)"
rm -rf "$out"
