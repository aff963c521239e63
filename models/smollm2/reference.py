"""Reference forward pass of a llama-family decoder over a GGUF file.

An independent oracle for wginfer's decoder: the weights come from the `gguf`
PyPI package (GGUFReader + gguf.quants.dequantize), the arithmetic is plain
numpy in float32 (``--dtype float64`` for double precision), and the model is
run with teacher forcing: given token ids, it returns the logits at every
position (causal attention over the whole sequence, which is what a KV cache
computes one step at a time).

Architectures: ``llama`` (RoPE on adjacent pairs (2i, 2i+1), because the GGUF
converter permuted the Q/K rows) and ``qwen2`` (RoPE on halves (i, i+d/2), QKV
biases). GQA, RMSNorm (eps from metadata), SwiGLU, tied or separate output
head, rope_freq_base from metadata.

Usage:
  python reference.py --gguf FILE --cases prompts.json --out DIR [--dtype float32|float64]

``prompts.json`` is a list of {"name": ..., "tokens": [...]} objects (other
keys are ignored). For each case it writes ``DIR/<name>.logits.npy`` (float32,
[T, vocab]) and ``DIR/<name>.json`` ({"gguf", "tokens", "architecture",
"dtype", "nll", "ppl", "top1_next"}) and prints the mean negative
log-likelihood of each case's own next tokens.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize

class Model:
    """A GGUF decoder's hyperparameters and dequantized weights."""

    def __init__(self, path, dtype):
        self.path = path
        self.dtype = dtype
        self.keep = False
        self.kept = {}
        self.reader = GGUFReader(path)
        self.tensors = {t.name: t for t in self.reader.tensors}
        arch = self.meta("general.architecture")
        if arch not in ("llama", "qwen2"):
            raise SystemExit(f"unsupported architecture {arch!r}")
        self.arch = arch
        self.n_layer = int(self.meta(f"{arch}.block_count"))
        self.d_model = int(self.meta(f"{arch}.embedding_length"))
        self.n_head = int(self.meta(f"{arch}.attention.head_count"))
        self.n_kv = int(self.meta(f"{arch}.attention.head_count_kv", self.n_head))
        self.d_ff = int(self.meta(f"{arch}.feed_forward_length"))
        self.theta = float(self.meta(f"{arch}.rope.freq_base", 10000.0))
        self.eps = float(self.meta(f"{arch}.attention.layer_norm_rms_epsilon"))
        self.n_ctx = int(self.meta(f"{arch}.context_length"))
        self.head_dim = int(self.meta(f"{arch}.attention.key_length", self.d_model // self.n_head))
        rope_dim = int(self.meta(f"{arch}.rope.dimension_count", self.head_dim))
        if rope_dim != self.head_dim:
            raise SystemExit(f"partial RoPE ({rope_dim} of {self.head_dim}) is not supported")
        self.rope_halves = arch == "qwen2"
        self.embed = self.weight("token_embd.weight")
        self.vocab = self.embed.shape[0]
        self.output = self.weight("output.weight") if "output.weight" in self.tensors else self.embed

    def meta(self, key, default=None):
        field = self.reader.fields.get(key)
        if field is None:
            if default is None:
                raise SystemExit(f"missing metadata {key}")
            return default
        value = field.parts[field.data[0]]
        if field.types[0].name == "STRING":
            return bytes(value).decode("utf-8")
        return value[0]

    def weight(self, name):
        """Dequantized tensor in numpy order ([rows, row length]); kept for
        later calls when self.keep is set."""
        if name in self.kept:
            return self.kept[name]
        t = self.tensors[name]
        shape = tuple(int(d) for d in reversed(t.shape))
        if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            w = np.asarray(t.data, dtype=np.float32)
        else:
            w = dequantize(t.data, t.tensor_type)
        w = np.ascontiguousarray(w.reshape(shape), dtype=self.dtype)
        if self.keep:
            self.kept[name] = w
        return w

    def token_text(self, ids):
        """The vocabulary strings of ids joined, GPT-2 byte symbols shown as
        spaces and newlines (for reading greedy output, not for decoding)."""
        field = self.reader.fields.get("tokenizer.ggml.tokens")
        if field is None:
            return " ".join(str(i) for i in ids)
        text = "".join(bytes(field.parts[field.data[i]]).decode("utf-8") for i in ids)
        return text.replace("\u0120", " ").replace("\u010a", "\n")


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, theta, halves):
    """Rotates x ([T, heads, head_dim]) by position; halves picks the pairing."""
    t, _, d = x.shape
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.arange(t, dtype=np.float64)[:, None] * inv[None, :]
    cos = np.cos(ang).astype(x.dtype)[:, None, :]
    sin = np.sin(ang).astype(x.dtype)[:, None, :]
    if halves:
        a, b = x[..., : d // 2], x[..., d // 2 :]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def layer_weights(m, i):
    """Dequantized weights of block i, keyed by their name without `blk.i.`."""
    p = f"blk.{i}."
    return {n[len(p):]: m.weight(n) for n in m.tensors if n.startswith(p)}


def linear(x, w, name):
    y = x @ w[name + ".weight"].T
    bias = w.get(name + ".bias")
    return y if bias is None else y + bias


def attend(q, k, v, m):
    """Causal attention of one sequence: q [T, heads, hd], k/v [T, kv heads, hd]."""
    t = q.shape[0]
    group = m.n_head // m.n_kv
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(m.head_dim)
    s = s + np.triu(np.full((t, t), -np.inf, dtype=s.dtype), 1)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    s /= s.sum(axis=-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", s, v).reshape(t, m.n_head * m.head_dim)


def attention(h, m, w, lengths):
    """Attention block over the rows of h, one sequence per entry of lengths."""
    q = linear(h, w, "attn_q").reshape(-1, m.n_head, m.head_dim)
    k = linear(h, w, "attn_k").reshape(-1, m.n_kv, m.head_dim)
    v = linear(h, w, "attn_v").reshape(-1, m.n_kv, m.head_dim)
    out, start = [], 0
    for t in lengths:
        sl = slice(start, start + t)
        qs, ks = rope(q[sl], m.theta, m.rope_halves), rope(k[sl], m.theta, m.rope_halves)
        out.append(attend(qs, ks, v[sl], m))
        start += t
    return linear(np.concatenate(out), w, "attn_output")


def ffn(h, w):
    g = linear(h, w, "ffn_gate")
    u = linear(h, w, "ffn_up")
    return linear(g / (1.0 + np.exp(-g)) * u, w, "ffn_down")


def forward(m, sequences):
    """Logits [T, vocab] for every position of each token sequence (teacher
    forcing). The sequences' rows are stacked for the matrix products and kept
    apart in attention; each block's weights are dequantized once."""
    for tokens in sequences:
        if len(tokens) > m.n_ctx:
            raise SystemExit(f"{len(tokens)} tokens exceed the context {m.n_ctx}")
    lengths = [len(tokens) for tokens in sequences]
    x = m.embed[np.concatenate([np.asarray(t, dtype=np.int64) for t in sequences])]
    for i in range(m.n_layer):
        w = layer_weights(m, i)
        x = x + attention(rms_norm(x, w["attn_norm.weight"], m.eps), m, w, lengths)
        x = x + ffn(rms_norm(x, w["ffn_norm.weight"], m.eps), w)
    logits = rms_norm(x, m.weight("output_norm.weight"), m.eps) @ m.output.T
    return np.split(logits, np.cumsum(lengths)[:-1])


def score(logits, tokens):
    """Mean NLL of tokens[1:] and the fraction the argmax predicts."""
    lg = logits[:-1].astype(np.float64)
    lse = np.log(np.exp(lg - lg.max(axis=1, keepdims=True)).sum(axis=1)) + lg.max(axis=1)
    nxt = np.asarray(tokens[1:])
    nll = float(np.mean(lse - lg[np.arange(len(nxt)), nxt]))
    top1 = float(np.mean(lg.argmax(axis=1) == nxt))
    return nll, top1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--cases", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--generate", type=int, default=0, metavar="N",
                    help="also print N greedy tokens after each case (a sanity check)")
    args = ap.parse_args()
    start = time.time()
    model = Model(args.gguf, np.dtype(args.dtype))
    with open(args.cases) as f:
        cases = json.load(f)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    sequences = [[int(t) for t in case["tokens"]] for case in cases]
    all_logits = forward(model, sequences)
    print(f"forward {time.time() - t0:.2f} s (load {t0 - start:.2f} s)", file=sys.stderr)
    for case, tokens, logits in zip(cases, sequences, all_logits):
        nll, top1 = score(logits, tokens)
        np.save(os.path.join(args.out, case["name"] + ".logits.npy"), logits.astype(np.float32))
        info = {
            "gguf": args.gguf,
            "tokens": tokens,
            "architecture": model.arch,
            "dtype": args.dtype,
            "nll": nll,
            "ppl": float(np.exp(nll)),
            "top1_next": top1,
            "greedy": [int(t) for t in logits.argmax(axis=1)],
        }
        with open(os.path.join(args.out, case["name"] + ".json"), "w") as f:
            json.dump(info, f)
            f.write("\n")
        print(
            f"{case['name']}: {len(tokens)} tokens, nll {nll:.3f}, ppl {np.exp(nll):.2f}, "
            f"top-1 = next {top1:.1%}"
        )
    print(f"total {time.time() - start:.2f} s", file=sys.stderr)
    if args.generate:
        greedy(model, sequences, args.generate)


def greedy(model, sequences, n):
    """Extends each sequence by n argmax tokens and prints the continuation."""
    model.keep = True
    seqs = [list(s) for s in sequences]
    for _ in range(n):
        for s, logits in zip(seqs, forward(model, seqs)):
            s.append(int(logits[-1].argmax()))
    for s, orig in zip(seqs, sequences):
        print(f"greedy after {len(orig)} tokens: {model.token_text(s[len(orig):])!r}")


if __name__ == "__main__":
    main()
