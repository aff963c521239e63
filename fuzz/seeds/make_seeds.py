"""Writes the seed inputs of the decoder-loading fuzz targets:

  decoder_gguf/llama.gguf   1-layer llama, d=32, 2 heads / 1 KV head, F16
                            matrices, Q8_0 attn_q, separate output head
  decoder_gguf/qwen2.gguf   1-layer qwen2 with Q/K/V biases, tied head
  decoder_hf/qwen2.bin      2-byte config length, config.json, then a
                            safetensors file (BF16/F16/F32, Q/K/V biases)

Run: python fuzz/seeds/make_seeds.py   (needs gguf and numpy)
"""
import json
import os
import sys

import numpy as np
import gguf

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "models", "smollm2"))
from to_hf import tensor_bytes  # noqa: E402

D, HEADS, KV, FFN, VOCAB = 32, 2, 1, 32, 4
HD = D // HEADS


def write_gguf(path, arch, rng):
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(1)
    w.add_embedding_length(D)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_feed_forward_length(FFN)
    w.add_context_length(64)
    w.add_layer_norm_rms_eps(1e-5)
    m = lambda r, c: (rng.standard_normal((r, c)) / np.sqrt(c)).astype(np.float16)
    v = lambda n: (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    w.add_tensor("token_embd.weight", m(VOCAB, D))
    w.add_tensor("output_norm.weight", v(D))
    if arch == "llama":
        w.add_tensor("output.weight", m(VOCAB, D))
        q = gguf.quants.quantize(m(HEADS * HD, D).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor("blk.0.attn_q.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        w.add_tensor("blk.0.attn_q.weight", m(HEADS * HD, D))
        for n, rows in (("q", HEADS * HD), ("k", KV * HD), ("v", KV * HD)):
            w.add_tensor(f"blk.0.attn_{n}.bias", v(rows))
    w.add_tensor("blk.0.attn_norm.weight", v(D))
    w.add_tensor("blk.0.attn_k.weight", m(KV * HD, D))
    w.add_tensor("blk.0.attn_v.weight", m(KV * HD, D))
    w.add_tensor("blk.0.attn_output.weight", m(D, HEADS * HD))
    w.add_tensor("blk.0.ffn_norm.weight", v(D))
    w.add_tensor("blk.0.ffn_gate.weight", m(FFN, D))
    w.add_tensor("blk.0.ffn_up.weight", m(FFN, D))
    w.add_tensor("blk.0.ffn_down.weight", m(D, FFN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def hf_seed(path, rng):
    d, heads, kv, ffn, vocab = 8, 2, 1, 12, 5
    hd = d // heads
    config = {"model_type": "qwen2", "hidden_size": d, "num_hidden_layers": 1, "num_attention_heads": heads,
              "num_key_value_heads": kv, "intermediate_size": ffn, "vocab_size": vocab,
              "rms_norm_eps": 1e-6, "rope_theta": 1e6, "tie_word_embeddings": True,
              "max_position_embeddings": 32}
    p = "model.layers.0."
    shapes = [("model.embed_tokens.weight", (vocab, d), "bfloat16"), ("model.norm.weight", (d,), "float32"),
              (p + "input_layernorm.weight", (d,), "float32"), (p + "post_attention_layernorm.weight", (d,), "float16"),
              (p + "self_attn.q_proj.weight", (heads * hd, d), "float16"),
              (p + "self_attn.q_proj.bias", (heads * hd,), "float32"),
              (p + "self_attn.k_proj.weight", (kv * hd, d), "bfloat16"),
              (p + "self_attn.k_proj.bias", (kv * hd,), "bfloat16"),
              (p + "self_attn.v_proj.weight", (kv * hd, d), "float32"),
              (p + "self_attn.v_proj.bias", (kv * hd,), "float16"),
              (p + "self_attn.o_proj.weight", (d, heads * hd), "float16"),
              (p + "mlp.gate_proj.weight", (ffn, d), "float16"), (p + "mlp.up_proj.weight", (ffn, d), "float16"),
              (p + "mlp.down_proj.weight", (d, ffn), "float16")]
    header, data = {}, b""
    for name, shape, dtype in shapes:
        st, raw = tensor_bytes(rng.standard_normal(shape).astype(np.float32), dtype)
        header[name] = {"dtype": st, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    cfg = json.dumps(config, separators=(",", ":")).encode()
    with open(path, "wb") as f:
        f.write(len(cfg).to_bytes(2, "little") + cfg + len(h).to_bytes(8, "little") + h + data)


def main():
    rng = np.random.default_rng(4)
    for target in ("decoder_gguf", "decoder_hf"):
        os.makedirs(os.path.join(HERE, target), exist_ok=True)
    write_gguf(os.path.join(HERE, "decoder_gguf", "llama.gguf"), "llama", rng)
    write_gguf(os.path.join(HERE, "decoder_gguf", "qwen2.gguf"), "qwen2", rng)
    hf_seed(os.path.join(HERE, "decoder_hf", "qwen2.bin"), rng)


if __name__ == "__main__":
    main()
