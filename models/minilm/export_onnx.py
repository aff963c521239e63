"""An independent ONNX export of all-MiniLM-L6-v2, built node by node with
onnx.helper from the package's model.safetensors (no torch needed to build it).

Standard ops only (opset 17): Gather, Add, LayerNormalization, Cast, Sub, Mul,
Unsqueeze, MatMul, Reshape, Transpose, Softmax, Div, Erf, Squeeze,
LpNormalization. Inputs: `input_ids` i64 [batch, seq], `attention_mask` i64
[batch, seq], `position_ids` i64 [seq] (0..seq, as the HF model derives them);
token type 0 throughout (its embedding row is folded into the position table).
Output: `sentence_embedding` f32 [batch, 384], mean-pooled over the mask and
L2-normalised, i.e. what sentence-transformers' encode() returns.

Mean pooling is written with MatMul (mask row · hidden states, mask · mask for
the count), so every op is one wginfer's ONNX importer maps.

Usage:
  python models/minilm/export_onnx.py MODEL_DIR OUT.onnx [--check]
--check runs the export with onnxruntime on models/minilm/reference.safetensors
and compares with the sentence-transformers embeddings stored there (numpy,
onnxruntime and safetensors needed; building needs only numpy and onnx).
"""

import json
import os
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))


def read_safetensors(path):
    """A minimal safetensors reader (numpy only), so CI needs no extra package."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[base + a : base + b], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


def build(model_dir):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    w = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    w = {k[len("bert.") :] if k.startswith("bert.") else k: v for k, v in w.items()}
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = hidden // heads
    eps = float(cfg["layer_norm_eps"])
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op, ins, name, **attrs):
        nodes.append(helper.make_node(op, ins, [name], name=name, **attrs))
        return name

    def linear(x, prefix, name):
        wt = const(prefix + ".weight.T", w[prefix + ".weight"].T.astype(np.float32))
        b = const(prefix + ".bias", w[prefix + ".bias"].astype(np.float32))
        return node("Add", [node("MatMul", [x, wt], name + "/matmul"), b], name)

    def layernorm(x, prefix, name):
        g = const(prefix + ".weight", w[prefix + ".weight"])
        b = const(prefix + ".bias", w[prefix + ".bias"])
        return node("LayerNormalization", [x, g, b], name, axis=-1, epsilon=eps)

    pos = w["embeddings.position_embeddings.weight"] + w["embeddings.token_type_embeddings.weight"][0]
    we = node("Gather", [const("embeddings.word_embeddings.weight", w["embeddings.word_embeddings.weight"]), "input_ids"], "embeddings/word", axis=0)
    pe = node("Gather", [const("embeddings.position_plus_type0", pos.astype(np.float32)), "position_ids"], "embeddings/position", axis=0)
    x = layernorm(node("Add", [we, pe], "embeddings/sum"), "embeddings.LayerNorm", "embeddings/ln")

    maskf = node("Cast", ["attention_mask"], "mask/float", to=TensorProto.FLOAT)
    one = const("one", np.array(1.0, dtype=np.float32))
    big = const("neg_big", np.array(-1e9, dtype=np.float32))
    bias = node("Mul", [node("Sub", [one, maskf], "mask/inv"), big], "mask/bias")  # [B, S]
    ax12 = const("axes_1_2", np.array([1, 2], dtype=np.int64))
    bias4 = node("Unsqueeze", [bias, ax12], "mask/bias4")  # [B, 1, 1, S]
    split = const("shape_split", np.array([0, 0, heads, head_dim], dtype=np.int64))
    merge = const("shape_merge", np.array([0, 0, hidden], dtype=np.int64))
    scale = const("scale", np.array(1.0 / np.sqrt(head_dim), dtype=np.float32))
    sqrt2 = const("sqrt2", np.array(np.sqrt(2.0), dtype=np.float32))
    half = const("half", np.array(0.5, dtype=np.float32))

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        n = f"/encoder/layer.{i}"
        q = node("Transpose", [node("Reshape", [linear(x, p + ".attention.self.query", n + "/q"), split], n + "/q4")], n + "/qt", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [linear(x, p + ".attention.self.key", n + "/k"), split], n + "/k4")], n + "/kt", perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [linear(x, p + ".attention.self.value", n + "/v"), split], n + "/v4")], n + "/vt", perm=[0, 2, 1, 3])
        s = node("Add", [node("Mul", [node("MatMul", [q, k], n + "/qk"), scale], n + "/scaled"), bias4], n + "/masked")
        pr = node("Softmax", [s], n + "/probs", axis=-1)
        ctx = node("Reshape", [node("Transpose", [node("MatMul", [pr, v], n + "/ctx4")], n + "/ctxt", perm=[0, 2, 1, 3]), merge], n + "/ctx")
        a = linear(ctx, p + ".attention.output.dense", n + "/attn_out")
        x = layernorm(node("Add", [a, x], n + "/attn_res"), p + ".attention.output.LayerNorm", n + "/attn_ln")
        h = linear(x, p + ".intermediate.dense", n + "/ffn_in")
        e = node("Erf", [node("Div", [h, sqrt2], n + "/gelu_div")], n + "/gelu_erf")
        g = node("Mul", [node("Mul", [h, node("Add", [e, one], n + "/gelu_add")], n + "/gelu_mul"), half], n + "/gelu")
        o = linear(g, p + ".output.dense", n + "/ffn_out")
        x = layernorm(node("Add", [o, x], n + "/ffn_res"), p + ".output.LayerNorm", n + "/ffn_ln")

    ax1 = const("axes_1", np.array([1], dtype=np.int64))
    ax2 = const("axes_2", np.array([2], dtype=np.int64))
    mrow = node("Unsqueeze", [maskf, ax1], "pool/mask_row")  # [B, 1, S]
    mcol = node("Unsqueeze", [maskf, ax2], "pool/mask_col")  # [B, S, 1]
    summed = node("MatMul", [mrow, x], "pool/sum")  # [B, 1, H]
    count = node("MatMul", [mrow, mcol], "pool/count")  # [B, 1, 1]
    mean = node("Squeeze", [node("Div", [summed, count], "pool/mean3"), ax1], "pool/mean")
    out = node("LpNormalization", [mean], "sentence_embedding", axis=-1, p=2)

    graph = helper.make_graph(
        nodes,
        "all-MiniLM-L6-v2",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["seq"]),
        ],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", hidden])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="wginfer export_onnx.py")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def check(path):
    import onnxruntime as ort

    ref = read_safetensors(os.path.join(HERE, "reference.safetensors"))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ids, mask = ref["input_ids"], ref["attention_mask"]
    got = sess.run(None, {"input_ids": ids, "attention_mask": mask, "position_ids": np.arange(ids.shape[1], dtype=np.int64)})[0]
    cos = (got * ref["embeddings"]).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref["embeddings"], axis=1)
    print(f"onnxruntime vs sentence-transformers: min cosine {cos.min():.8f}, max |diff| {np.abs(got - ref['embeddings']).max():.2e}")
    assert cos.min() > 0.99999, cos


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    m = build(sys.argv[1])
    onnx.save(m, sys.argv[2])
    print(f"wrote {sys.argv[2]} ({os.path.getsize(sys.argv[2]) / 1e6:.1f} MB, {len(m.graph.node)} nodes)")
    if "--check" in sys.argv[3:]:
        check(sys.argv[2])


if __name__ == "__main__":
    main()
