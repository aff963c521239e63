"""Reference forward pass of a Hugging Face llama-family checkpoint in numpy,
and the random-weight qwen2 directory it checks wginfer's HF loader on.

The forward pass reads `config.json` and the safetensors files (single or
sharded through `model.safetensors.index.json`; F32, F16 and BF16 read by
hand) and computes teacher-forced logits in float64 as `transformers`
defines LlamaForCausalLM / Qwen2ForCausalLM: RMSNorm, RoPE on halves
(`rotate_half`), GQA, Q/K/V biases where present, SwiGLU, tied or separate
head. It shares no code with wginfer or with models/smollm2/reference.py.

Usage:
  python hf_reference.py --make-qwen2 DIR [--ref REFDIR]
      writes a random qwen2 checkpoint to DIR (2 shards, BF16/F16/F32
      tensors, Q/K/V biases, untied f16 head, head_dim 32 over hidden 64)
      and, with --ref, the logits of random token sequences
  python hf_reference.py --make-llama3 DIR --ref REFDIR --gguf FILE
      writes a random llama checkpoint with Llama 3 RoPE scaling
      (`rope_scaling.rope_type: llama3`, F32, tied head), the same weights as
      a GGUF `llama` file (Q/K rows permuted to adjacent pairs and the
      `rope_freqs` tensor, as llama.cpp's converter writes them), and the
      logits of random token sequences
  python hf_reference.py --dir DIR --cases CASES.json --out REFDIR
      logits of the token sequences in CASES.json ([{"name", "tokens"}])

Each case is written as REFDIR/<name>.logits.npy (float32 [T, vocab]) and
REFDIR/<name>.json ({"model", "tokens"}).
"""
import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "smollm2"))
from to_hf import tensor_bytes, write_checkpoint, write_json  # noqa: E402

DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2)}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        begin, end = e["data_offsets"]
        raw = np.frombuffer(data[begin:end], dtype=DTYPES[e["dtype"]][0])
        if e["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        out[name] = raw.astype(np.float64).reshape(e["shape"])
    return out


def read_checkpoint(d):
    single = os.path.join(d, "model.safetensors")
    if os.path.exists(single):
        return read_safetensors(single)
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    w = {}
    for name in files:
        w.update(read_safetensors(os.path.join(d, name)))
    return w


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def scaled_inv_freq(cfg, inv):
    """`inv` (the RoPE frequencies) under `rope_scaling`, as transformers'
    `_compute_default_rope_parameters` / `_compute_linear_scaling...` /
    `_compute_llama3_parameters` define them."""
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / rs["factor"]
    if kind != "llama3":
        raise SystemExit(f"rope_scaling {kind} is not implemented here")
    factor, low, high = rs["factor"], rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
    old = rs.get("original_max_position_embeddings", 8192)
    wavelen = 2 * np.pi / inv
    out = np.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return np.where(medium, smoothed, out)


def forward(cfg, w, tokens):
    """Logits [T, vocab] (float64) of every position of `tokens`."""
    d = cfg["hidden_size"]
    nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or d // nh
    eps, theta = cfg.get("rms_norm_eps", 1e-6), cfg.get("rope_theta", 10000.0)
    t = len(tokens)
    inv = scaled_inv_freq(cfg, 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    ang = np.arange(t, dtype=np.float64)[:, None] * inv[None, :]
    emb = np.concatenate([ang, ang], axis=-1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    mask = np.triu(np.full((t, t), -np.inf), 1)
    lin = lambda x, p: x @ w[p + ".weight"].T + w.get(p + ".bias", 0.0)
    x = w["model.embed_tokens.weight"][np.asarray(tokens)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = lin(h, p + "self_attn.q_proj").reshape(t, nh, hd)
        k = lin(h, p + "self_attn.k_proj").reshape(t, nkv, hd)
        v = lin(h, p + "self_attn.v_proj").reshape(t, nkv, hd)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        a = np.einsum("hqk,khd->qhd", s, v).reshape(t, nh * hd)
        x = x + lin(a, p + "self_attn.o_proj")
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        g, u = lin(h, p + "mlp.gate_proj"), lin(h, p + "mlp.up_proj")
        x = x + lin(g / (1.0 + np.exp(-g)) * u, p + "mlp.down_proj")
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return rms_norm(x, w["model.norm.weight"], eps) @ head.T


def write_cases(model_dir, cases, out):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    w = read_checkpoint(model_dir)
    os.makedirs(out, exist_ok=True)
    for case in cases:
        logits = forward(cfg, w, case["tokens"])
        np.save(os.path.join(out, case["name"] + ".logits.npy"), logits.astype(np.float32))
        write_json(os.path.join(out, case["name"] + ".json"), {"model": model_dir, "tokens": case["tokens"]})
        print(f"{case['name']}: {len(case['tokens'])} tokens")


QWEN2 = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64,
    "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 32, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "max_position_embeddings": 128, "vocab_size": 96, "tie_word_embeddings": False,
    "hidden_act": "silu", "use_sliding_window": False, "sliding_window": 128, "torch_dtype": "bfloat16",
}


def make_qwen2(out):
    """Random weights scaled so activations stay O(1); every matrix kind in
    another dtype: embedding BF16, Q/K/V F16, o_proj F32, MLP BF16 (one with
    a value below f16's range, so it cannot be held as f16), head F16."""
    rng = np.random.default_rng(18)
    c = QWEN2
    d, hd, f, v = c["hidden_size"], c["head_dim"], c["intermediate_size"], c["vocab_size"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    mat = lambda r, k: rng.standard_normal((r, k)) / np.sqrt(k)
    vec = lambda n, s: 1.0 + s * rng.standard_normal(n)
    tensors = [("model.embed_tokens.weight", 0.5 * rng.standard_normal((v, d)), "bfloat16"),
               ("model.norm.weight", vec(d, 0.1), "float32"),
               ("lm_head.weight", mat(v, d), "float16")]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        down = mat(d, f)
        down[0, 0] = 1e-30
        tensors += [
            (p + "input_layernorm.weight", vec(d, 0.1), "float32"),
            (p + "post_attention_layernorm.weight", vec(d, 0.1), "bfloat16"),
            (p + "self_attn.q_proj.weight", mat(q, d), "float16"),
            (p + "self_attn.q_proj.bias", 0.3 * rng.standard_normal(q), "bfloat16"),
            (p + "self_attn.k_proj.weight", mat(kv, d), "float16"),
            (p + "self_attn.k_proj.bias", 0.3 * rng.standard_normal(kv), "float32"),
            (p + "self_attn.v_proj.weight", mat(kv, d), "float16"),
            (p + "self_attn.v_proj.bias", 0.3 * rng.standard_normal(kv), "float16"),
            (p + "self_attn.o_proj.weight", mat(d, q), "float32"),
            (p + "mlp.gate_proj.weight", mat(f, d), "bfloat16"),
            (p + "mlp.up_proj.weight", mat(f, d), "bfloat16"),
            (p + "mlp.down_proj.weight", down, "bfloat16"),
        ]
    os.makedirs(out, exist_ok=True)
    st = []
    for name, a, dtype in sorted(tensors, key=lambda t: t[0]):
        st_dtype, data = tensor_bytes(a.astype(np.float32), dtype)
        st.append((name, a.shape, st_dtype, data))
    write_checkpoint(out, st, shards=2)
    write_json(os.path.join(out, "config.json"), c)
    return [{"name": f"random{n}", "tokens": [int(t) for t in rng.integers(0, v, n)]} for n in (20, 45)]


LLAMA3 = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
    "max_position_embeddings": 256, "vocab_size": 512, "tie_word_embeddings": True,
    "hidden_act": "silu", "torch_dtype": "float32",
}


def permute_rows(wt, heads):
    """llama.cpp's converter: each head's rows from halves to adjacent pairs."""
    return wt.reshape(heads, 2, wt.shape[0] // heads // 2, *wt.shape[1:]).swapaxes(1, 2).reshape(wt.shape)


def make_llama3(out, gguf_path):
    """Random F32 llama weights with Llama 3 RoPE scaling (its band edges at
    wavelengths 8 and 32, so the sequences below cross every regime), as an
    HF directory and as GGUF."""
    import gguf
    from make_synthetic import add_tokenizer
    rng = np.random.default_rng(31)
    c = LLAMA3
    d, hd, f, v = c["hidden_size"], c["head_dim"], c["intermediate_size"], c["vocab_size"]
    nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    mat = lambda r, k: rng.standard_normal((r, k)) / np.sqrt(k)
    vec = lambda n: 1.0 + 0.1 * rng.standard_normal(n)
    hf = {"model.embed_tokens.weight": 0.5 * rng.standard_normal((v, d)), "model.norm.weight": vec(d)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        hf.update({
            p + "input_layernorm.weight": vec(d), p + "post_attention_layernorm.weight": vec(d),
            p + "self_attn.q_proj.weight": mat(nh * hd, d), p + "self_attn.k_proj.weight": mat(nkv * hd, d),
            p + "self_attn.v_proj.weight": mat(nkv * hd, d), p + "self_attn.o_proj.weight": mat(d, nh * hd),
            p + "mlp.gate_proj.weight": mat(f, d), p + "mlp.up_proj.weight": mat(f, d),
            p + "mlp.down_proj.weight": mat(d, f),
        })
    os.makedirs(out, exist_ok=True)
    st = []
    for name in sorted(hf):
        st_dtype, data = tensor_bytes(hf[name].astype(np.float32), "float32")
        st.append((name, hf[name].shape, st_dtype, data))
    write_checkpoint(out, st, shards=1)
    write_json(os.path.join(out, "config.json"), c)

    w = gguf.GGUFWriter(gguf_path, "llama")
    w.add_name("synthetic-llama3-rope")
    w.add_block_count(c["num_hidden_layers"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(d)
    w.add_feed_forward_length(f)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_vocab_size(v)
    add_tokenizer(w)
    inv = 1.0 / c["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    w.add_tensor("rope_freqs.weight", (inv / scaled_inv_freq(c, inv)).astype(np.float32))
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
    w.add_tensor("token_embd.weight", f32(hf["model.embed_tokens.weight"]))
    w.add_tensor("output_norm.weight", f32(hf["model.norm.weight"]))
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for i in range(c["num_hidden_layers"]):
        for hname, gname in names.items():
            a = hf[f"model.layers.{i}.{hname}.weight"]
            if gname == "attn_q":
                a = permute_rows(a, nh)
            elif gname == "attn_k":
                a = permute_rows(a, nkv)
            w.add_tensor(f"blk.{i}.{gname}.weight", f32(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return [{"name": f"random{n}", "tokens": [int(t) for t in rng.integers(0, v - 8, n)]} for n in (24, 60)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--make-qwen2", metavar="DIR")
    ap.add_argument("--make-llama3", metavar="DIR")
    ap.add_argument("--gguf", metavar="FILE")
    ap.add_argument("--ref", metavar="REFDIR")
    ap.add_argument("--dir")
    ap.add_argument("--cases")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.make_qwen2:
        cases = make_qwen2(args.make_qwen2)
        if args.ref:
            write_cases(args.make_qwen2, cases, args.ref)
    elif args.make_llama3 and args.gguf and args.ref:
        cases = make_llama3(args.make_llama3, args.gguf)
        write_cases(args.make_llama3, cases, args.ref)
    elif args.dir and args.cases and args.out:
        with open(args.cases) as f:
            write_cases(args.dir, json.load(f), args.out)
    else:
        ap.error("give --make-qwen2 DIR, or --dir, --cases and --out")


if __name__ == "__main__":
    main()
