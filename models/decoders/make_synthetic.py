"""Writes small random-weight GGUF decoders for the formats and architectures
SmolLM2 does not cover, and the token sequences they are checked on:

  llama-q.gguf   arch `llama`, separate output head, matrices in Q4_0, Q5_0,
                 Q5_1 and Q8_0 (gguf.quants.quantize), F32 norms
  qwen2-k.gguf   arch `qwen2`, QKV biases, tied embeddings, matrices in Q4_K,
                 Q5_K and Q6_K, attn_norm in F16, other norms F32
  cases.json     random token sequences [{"name", "tokens"}]

Shapes: d=256, 2 layers, 4 heads, 2 KV heads (head dim 64), ffn 512, vocab
512, context 256. The `gguf` package has no k-quant quantizer, so k-quant
matrices are random block bytes (6-bit scales and mins, quant bits) with f16
d/dmin chosen so each matrix has mean ~0 and the intended spread; the weights
are whatever those bytes dequantize to. Weights are scaled (std 1/sqrt(fan-in),
embeddings 0.15) so activations stay O(1) and the logits are not degenerate.
A minimal GPT-2 style tokenizer (256 byte symbols, a few merges, ChatML
control tokens) is included so the files load in llama.cpp and tokenizer-
aware loaders; the tests feed token ids.

Run: python make_synthetic.py [OUTDIR]   (default: this directory)
  --f32-norms  writes every norm in F32 (for engines without F16 norms)
Then: python ../smollm2/reference.py --gguf OUTDIR/llama-q.gguf \
        --cases OUTDIR/cases.json --out OUTDIR/ref-llama-q   (same for qwen2-k)
"""
import argparse
import json
import os

import numpy as np
from gguf import GGUFWriter, GGMLQuantizationType as Q, TokenType
from gguf.quants import dequantize, quantize

D, LAYERS, HEADS, KV, FFN, VOCAB, CTX = 256, 2, 4, 2, 512, 512, 256
HEAD_DIM = D // HEADS
# Matrix name -> (rows, row length).
SHAPES = {
    "attn_q": (D, D),
    "attn_k": (KV * HEAD_DIM, D),
    "attn_v": (KV * HEAD_DIM, D),
    "attn_output": (D, D),
    "ffn_gate": (FFN, D),
    "ffn_up": (FFN, D),
    "ffn_down": (D, FFN),
}
LLAMA_FORMATS = [Q.Q4_0, Q.Q5_0, Q.Q5_1, Q.Q8_0]
QWEN2_FORMATS = [Q.Q4_K, Q.Q5_K, Q.Q6_K]
# Byte offsets of the f16 d (and dmin) fields in each k-quant block.
K_BLOCK = {Q.Q4_K: (144, 0, 2), Q.Q5_K: (176, 0, 2), Q.Q6_K: (210, 208, None)}


def pick(formats, layer, j):
    """Format of matrix j of a layer: every format on every layer, rotated."""
    return formats[(layer + j) % len(formats)]


def legacy_quant(rng, rows, cols, qtype, std):
    w = (rng.standard_normal((rows, cols)) * std).astype(np.float32)
    return quantize(w, qtype)


def kquant_bytes(rng, rows, cols, qtype, std):
    """Random k-quant blocks scaled to mean ~0 and the given std."""
    size, d_at, dmin_at = K_BLOCK[qtype]
    blocks = rng.integers(0, 256, size=(rows * cols // 256, size), dtype=np.uint8)
    d = (rng.uniform(0.5, 1.5, size=len(blocks)) * 1e-3).astype(np.float16)

    def with_scales(dv, dminv):
        blocks[:, d_at : d_at + 2] = dv.astype(np.float16).view(np.uint8).reshape(-1, 2)
        if dmin_at is not None:
            blocks[:, dmin_at : dmin_at + 2] = dminv.astype(np.float16).view(np.uint8).reshape(-1, 2)
        return dequantize(blocks.reshape(rows, -1), qtype)

    ratio = 0.0
    if dmin_at is not None:
        w0 = with_scales(d, np.zeros_like(d))
        mins = w0 - with_scales(d, d)
        ratio = float(w0.mean() / mins.mean())
    w = with_scales(d, d * ratio)
    scale = std / float(w.std())
    with_scales(d.astype(np.float32) * scale, d.astype(np.float32) * ratio * scale)
    return blocks.reshape(rows, -1)


def add_tokenizer(w):
    """256 byte symbols (GPT-2 byte-to-unicode), merges, ChatML control tokens."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    symbols = [chr(c) for _, c in sorted(zip(bs, cs))]
    letters = "etaoinshrdlucmfw"
    pairs = [(a, b) for a in letters for b in letters][: VOCAB - 256 - 3]
    tokens = symbols + [a + b for a, b in pairs] + ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [TokenType.NORMAL] * (VOCAB - 3) + [TokenType.CONTROL] * 3
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in pairs])
    w.add_bos_token_id(VOCAB - 2)
    w.add_eos_token_id(VOCAB - 1)


def write_model(path, arch, rng, f32_norms):
    llama = arch == "llama"
    w = GGUFWriter(path, arch)
    w.add_name(f"synthetic-{arch}")
    w.add_block_count(LAYERS)
    w.add_context_length(CTX)
    w.add_embedding_length(D)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(10000.0 if llama else 1000000.0)
    w.add_layer_norm_rms_eps(1e-5 if llama else 1e-6)
    w.add_vocab_size(VOCAB)
    add_tokenizer(w)
    formats = LLAMA_FORMATS if llama else QWEN2_FORMATS

    def matrix(name, rows, cols, qtype, std):
        if qtype in K_BLOCK:
            data = kquant_bytes(rng, rows, cols, qtype, std)
        else:
            data = legacy_quant(rng, rows, cols, qtype, std)
        w.add_tensor(name, data, raw_dtype=qtype)

    def norm(name, dtype=np.float32):
        v = (1.0 + 0.1 * rng.standard_normal(D)).astype(dtype)
        w.add_tensor(name, v)

    matrix("token_embd.weight", VOCAB, D, formats[0] if llama else Q.Q6_K, 0.15)
    for i in range(LAYERS):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight", np.float32 if llama or f32_norms else np.float16)
        for j, (name, (rows, cols)) in enumerate(SHAPES.items()):
            matrix(p + name + ".weight", rows, cols, pick(formats, i, j), cols**-0.5)
            if not llama and name in ("attn_q", "attn_k", "attn_v"):
                w.add_tensor(p + name + ".bias", (0.1 * rng.standard_normal(rows)).astype(np.float32))
        norm(p + "ffn_norm.weight")
    norm("output_norm.weight")
    if llama:
        matrix("output.weight", VOCAB, D, Q.Q8_0, 0.15)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--f32-norms", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    write_model(os.path.join(args.out, "llama-q.gguf"), "llama", np.random.default_rng(1), args.f32_norms)
    write_model(os.path.join(args.out, "qwen2-k.gguf"), "qwen2", np.random.default_rng(2), args.f32_norms)
    rng = np.random.default_rng(3)
    cases = [
        {"name": f"random{n}", "tokens": [int(t) for t in rng.integers(0, VOCAB, size=n)]}
        for n in (7, 24, 48)
    ]
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump(cases, f)
        f.write("\n")


if __name__ == "__main__":
    main()
