"""Converts a llama-family GGUF decoder (SmolLM2-135M-Instruct.Q4_1.gguf) into
a Hugging Face model directory, the layout `transformers` saves:

  config.json               LlamaForCausalLM / Qwen2ForCausalLM hyperparameters
  model.safetensors         every tensor dequantized by the `gguf` package
                            (gguf.quants.dequantize) to --dtype, HF names;
                            with --shards N, model-0000i-of-0000N.safetensors
                            and model.safetensors.index.json instead
  tokenizer.json            byte-level BPE from tokenizer.ggml.tokens/merges,
                            control tokens as special added tokens, the
                            pre-tokenizer of `tokenizer.ggml.pre`
  tokenizer_config.json     chat_template, bos/eos/unk/pad tokens, add_bos_token
  generation_config.json    bos/eos token ids

llama.cpp's converter permutes the rows of each `llama` Q and K head so RoPE
rotates adjacent pairs; this script undoes that permutation, so the checkpoint
rotates halves as Hugging Face checkpoints do (`qwen2` files are not permuted).
With --dtype float32 the weights are exactly the dequantized GGUF weights.

The safetensors files are written by hand (an 8-byte little-endian header
length, a JSON header, the raw little-endian data), so only `gguf` and
`numpy` are needed.

Run: python to_hf.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out DIR
         [--dtype float32|float16|bfloat16] [--shards N]
"""
import argparse
import json
import os

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize

# GGUF tensor name suffix -> Hugging Face name (after `model.layers.N.`).
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# `tokenizer.ggml.pre` -> the pre-tokenizer Hugging Face writes for it.
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
PRE_TOKENIZERS = {
    "smollm": {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL],
    },
    "gpt2": BYTE_LEVEL,
    "default": BYTE_LEVEL,
}
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4


def bf16_bytes(a):
    """float32 array -> bfloat16 bytes (round to nearest even)."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def tensor_bytes(a, dtype):
    """(safetensors dtype name, little-endian bytes) of an array in dtype."""
    if dtype == "bfloat16":
        return "BF16", bf16_bytes(a)
    if dtype == "float16":
        return "F16", np.ascontiguousarray(a, dtype="<f2").tobytes()
    return "F32", np.ascontiguousarray(a, dtype="<f4").tobytes()


def write_safetensors(path, tensors):
    """tensors: list of (name, shape, dtype name, bytes). The header is padded
    with spaces to a multiple of 8 bytes, as the safetensors library does."""
    header, offset = {}, 0
    for name, shape, dtype, data in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for _, _, _, data in tensors:
            f.write(data)


def write_checkpoint(out, tensors, shards=1):
    """Writes model.safetensors, or `shards` files and their index."""
    if shards <= 1:
        write_safetensors(os.path.join(out, "model.safetensors"), tensors)
        return
    per = -(-len(tensors) // shards)
    weight_map, total = {}, 0
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = tensors[i * per:(i + 1) * per]
        write_safetensors(os.path.join(out, name), part)
        for t in part:
            weight_map[t[0]] = name
            total += len(t[3])
    write_json(os.path.join(out, "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": weight_map})


def write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")


class Gguf:
    def __init__(self, path):
        self.reader = GGUFReader(path)
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.arch = self.meta("general.architecture")
        if self.arch not in ("llama", "qwen2"):
            raise SystemExit(f"unsupported architecture {self.arch!r}")

    def meta(self, key, default=None):
        field = self.reader.fields.get(key)
        if field is None:
            if default is None:
                raise SystemExit(f"missing metadata {key}")
            return default
        return field.contents()

    def weight(self, name):
        """Dequantized f32 tensor in numpy order ([rows, row length])."""
        t = self.tensors[name]
        shape = tuple(int(d) for d in reversed(t.shape))
        if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            w = np.asarray(t.data, dtype=np.float32)
        else:
            w = dequantize(t.data, t.tensor_type)
        return np.ascontiguousarray(w.reshape(shape), dtype=np.float32)


def unpermute(w, heads):
    """Inverse of llama.cpp's `permute`: rows (2i, 2i+1) of each head back to (i, i + d/2)."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def config(g):
    a = g.arch
    d_model = int(g.meta(f"{a}.embedding_length"))
    n_head = int(g.meta(f"{a}.attention.head_count"))
    cfg = {
        "architectures": ["LlamaForCausalLM" if a == "llama" else "Qwen2ForCausalLM"],
        "model_type": a,
        "hidden_size": d_model,
        "intermediate_size": int(g.meta(f"{a}.feed_forward_length")),
        "num_hidden_layers": int(g.meta(f"{a}.block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(g.meta(f"{a}.attention.head_count_kv", n_head)),
        "rms_norm_eps": float(np.float32(g.meta(f"{a}.attention.layer_norm_rms_epsilon"))),
        "rope_theta": float(g.meta(f"{a}.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "max_position_embeddings": int(g.meta(f"{a}.context_length")),
        "vocab_size": int(g.tensors["token_embd.weight"].shape[1]),
        "tie_word_embeddings": "output.weight" not in g.tensors,
        "hidden_act": "silu",
        "attention_bias": False,
        "bos_token_id": int(g.meta("tokenizer.ggml.bos_token_id", -1)),
        "eos_token_id": int(g.meta("tokenizer.ggml.eos_token_id", -1)),
        "torch_dtype": "float32",
    }
    key_length = g.meta(f"{a}.attention.key_length", 0)
    if key_length:
        cfg["head_dim"] = int(key_length)
    return cfg


def checkpoint(g, cfg, dtype):
    """(HF name, shape, dtype name, bytes) of every tensor."""
    out = []
    for name in g.tensors:
        if name in TOP_NAMES:
            hf = TOP_NAMES[name]
        else:
            blk, layer, suffix = name.split(".", 2)
            if blk != "blk" or suffix not in LAYER_NAMES:
                raise SystemExit(f"unexpected tensor {name}")
            hf = f"model.layers.{layer}.{LAYER_NAMES[suffix]}"
        w = g.weight(name)
        if g.arch == "llama" and name.endswith(("attn_q.weight", "attn_q.bias")):
            w = unpermute(w, cfg["num_attention_heads"])
        if g.arch == "llama" and name.endswith(("attn_k.weight", "attn_k.bias")):
            w = unpermute(w, cfg["num_key_value_heads"])
        # Norm weights stay f32 (they are vectors; HF keeps them in the checkpoint's dtype).
        st_dtype, data = tensor_bytes(w, dtype if w.ndim == 2 else "float32")
        out.append((hf, w.shape, st_dtype, data))
    out.sort(key=lambda t: t[0])
    return out


def tokenizer(g):
    """tokenizer.json, tokenizer_config.json and generation_config.json contents."""
    if g.meta("tokenizer.ggml.model") != "gpt2":
        raise SystemExit("only byte-level BPE (tokenizer.ggml.model = gpt2) is converted")
    pre = g.meta("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise SystemExit(f"tokenizer.ggml.pre = {pre!r} has no Hugging Face pre-tokenizer here")
    tokens = g.meta("tokenizer.ggml.tokens")
    types = g.meta("tokenizer.ggml.token_type")
    merges = [m.split(" ", 1) for m in g.meta("tokenizer.ggml.merges")]
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": ty == TOKEN_TYPE_CONTROL}
        for i, (t, ty) in enumerate(zip(tokens, types))
        if ty in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)
    ]
    bos_id = int(g.meta("tokenizer.ggml.bos_token_id", -1))
    eos_id = int(g.meta("tokenizer.ggml.eos_token_id", -1))
    add_bos = bool(g.meta("tokenizer.ggml.add_bos_token", False))
    if add_bos:
        bos = tokens[bos_id]
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    else:
        post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZERS[pre],
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }
    name = lambda key: tokens[int(g.meta(key))] if key in g.reader.fields else None
    tok_config = {
        "add_bos_token": add_bos,
        "add_prefix_space": False,
        "bos_token": name("tokenizer.ggml.bos_token_id"),
        "eos_token": name("tokenizer.ggml.eos_token_id"),
        "unk_token": name("tokenizer.ggml.unknown_token_id"),
        "pad_token": name("tokenizer.ggml.padding_token_id"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(g.meta(f"{g.arch}.context_length")),
        "tokenizer_class": "GPT2Tokenizer",
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
    }
    if "tokenizer.chat_template" in g.reader.fields:
        tok_config["chat_template"] = g.meta("tokenizer.chat_template")
    generation = {"bos_token_id": bos_id, "eos_token_id": eos_id}
    return tok, tok_config, generation


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--shards", type=int, default=1)
    args = ap.parse_args()
    g = Gguf(args.gguf)
    os.makedirs(args.out, exist_ok=True)
    cfg = config(g)
    cfg["torch_dtype"] = args.dtype
    tok, tok_config, generation = tokenizer(g)
    write_checkpoint(args.out, checkpoint(g, cfg, args.dtype), args.shards)
    write_json(os.path.join(args.out, "config.json"), cfg)
    write_json(os.path.join(args.out, "tokenizer.json"), tok)
    write_json(os.path.join(args.out, "tokenizer_config.json"), tok_config)
    write_json(os.path.join(args.out, "generation_config.json"), generation)
    print(f"wrote {args.out}: {cfg['num_hidden_layers']} layers, {len(g.tensors)} tensors in {args.dtype}")


if __name__ == "__main__":
    main()
