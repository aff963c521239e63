#!/usr/bin/env bash
# The GGUF export table of docs/export.md: SmolLM2 exported by wginfer
# (keep, q8_0, q4_0), each scored by llama.cpp's llama-perplexity and by
# `wginfer perplexity` (the same protocol) over the same text.
#
#   WGINFER_SMOLLM2_GGUF=... LLAMA_CPP_BIN=.../build/bin [WGINFER_BIN=...] \
#     [WGINFER_SMOLLM2_HF=...] bash models/export/gguf_perplexity.sh [TEXT] [CHUNKS]
#
# With WGINFER_SMOLLM2_HF (the f32 directory of models/smollm2/to_hf.py) it
# also scores that directory's q4_k_m, q5_k_m and q6_k exports.
#
# TEXT defaults to /usr/share/common-licenses/GPL-3 (Debian's copy of the
# GPL, 35 kB of English prose); CHUNKS (of 512 tokens) to 4; threads to 2.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
text=${1:-/usr/share/common-licenses/GPL-3}
chunks=${2:-4}
src=${WGINFER_SMOLLM2_GGUF:?set WGINFER_SMOLLM2_GGUF}
bin=${LLAMA_CPP_BIN:?set LLAMA_CPP_BIN to llama.cpp build/bin}
wg=${WGINFER_BIN:-$here/../../target/release/wginfer}
[ -x "$wg" ] || (cd "$here/../.." && cargo build --release --bin wginfer)
out=$(mktemp -d)
cp "$src" "$out/original.gguf"
for t in keep q8_0 q4_0; do
  "$wg" export "$src" --to gguf --gguf-type "$t" -o "$out/$t.gguf" --force
done
echo "| file | llama.cpp | wginfer perplexity |"
echo "|---|---:|---:|"
for m in original keep q8_0 q4_0; do
  lc=$("$bin/llama-perplexity" -m "$out/$m.gguf" -f "$text" -c 512 --chunks "$chunks" -t 2 2>&1 \
    | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')
  wp=$("$wg" perplexity "$out/$m.gguf" --text "$text" --chunk 512 --chunks "$chunks" \
    | sed -n 's/^perplexity \([0-9.]*\).*/\1/p')
  echo "| $m | $lc | $wp |"
done
if [ -n "${WGINFER_SMOLLM2_HF:-}" ]; then
  for t in q4_k_m q5_k_m q6_k; do
    "$wg" export "$WGINFER_SMOLLM2_HF" --to gguf --gguf-type "$t" -o "$out/hf-$t.gguf" --force
    m="hf-$t"
    lc=$("$bin/llama-perplexity" -m "$out/$m.gguf" -f "$text" -c 512 --chunks "$chunks" -t 2 2>&1 \
      | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')
    wp=$("$wg" perplexity "$out/$m.gguf" --text "$text" --chunk 512 --chunks "$chunks" \
      | sed -n 's/^perplexity \([0-9.]*\).*/\1/p')
    echo "| $m ($(stat -c %s "$out/$m.gguf") bytes) | $lc | $wp |"
  done
fi
rm -rf "$out"
