"""Int4 ONNX models written by onnxruntime's own quantizer, for wginfer's
MatMulNBits importer (tests/import_nbits.rs).

The shipped digits MLP (models/digits-cnn/digits_mlp.onnx, three Gemm
layers) is rewritten as MatMul + Add + Relu, which is what
`MatMulNBitsQuantizer` quantizes, then quantized in several ways; for each
variant NAME this writes NAME.onnx and NAME.out.npy, onnxruntime's output on
the first ROWS rows of tensor `input` of DIGITS (the shipped
models/digits-mlp/digits_test.safetensors).

Variants: block 32 and 128 (128 > K = 64: a padded block), symmetric (no
zero points) and asymmetric (packed uint4 zero points), block 16, and two
with the scales rounded to values float16 holds exactly (the quantizer
writes float32 scales; exact float16 scales are what wginfer keeps packed).

  python ort_nbits.py MLP.onnx DIGITS.safetensors ROWS OUTDIR
"""

import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from check_ort import read_safetensors  # noqa: E402


def as_matmul(gemm_model):
    """The Gemm MLP as MatMul(x, Wᵀ) + b, Relu between, Softmax last."""
    inits = {t.name: numpy_helper.to_array(t) for t in gemm_model.graph.initializer}
    nodes, tensors, x = [], [], "input"
    gemms = [n for n in gemm_model.graph.node if n.op_type == "Gemm"]
    for i, g in enumerate(gemms):
        w = inits[g.input[1]]
        trans_b = next((a.i for a in g.attribute if a.name == "transB"), 0)
        wt = (w.T if trans_b else w).astype(np.float32)
        tensors += [numpy_helper.from_array(np.ascontiguousarray(wt), f"w{i}"),
                    numpy_helper.from_array(inits[g.input[2]].astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"], name=f"matmul{i}"),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"add{i}"], name=f"add{i}")]
        x = f"add{i}"
        if i + 1 < len(gemms):
            nodes.append(helper.make_node("Relu", [x], [f"relu{i}"], name=f"relu{i}"))
            x = f"relu{i}"
    nodes.append(helper.make_node("Softmax", [x], ["probabilities"], name="softmax", axis=-1))
    graph = helper.make_graph(
        nodes, "digits_mlp_matmul",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["batch", 10])],
        tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def round_scales_to_f16(model):
    """Every MatMulNBits scale rounded to the nearest float16 value."""
    scales = {n.input[2] for n in model.graph.node if n.op_type == "MatMulNBits"}
    for t in model.graph.initializer:
        if t.name in scales:
            a = numpy_helper.to_array(t).astype(np.float16).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    return model


def main():
    mlp, digits, rows, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), pathlib.Path(sys.argv[4])
    inputs = read_safetensors(pathlib.Path(digits))["input"][:rows]
    base = as_matmul(onnx.load(mlp))
    variants = [
        ("sym-b32", 32, True, False),
        ("asym-b32", 32, False, False),
        ("asym-b128", 128, False, False),
        ("sym-b16", 16, True, False),
        ("sym-b32-f16scales", 32, True, True),
        ("asym-b32-f16scales", 32, False, True),
    ]
    for name, block, symmetric, f16 in variants:
        q = MatMulNBitsQuantizer(onnx.ModelProto.FromString(base.SerializeToString()),
                                 block_size=block, is_symmetric=symmetric)
        q.process()
        model = q.model.model
        ops = [n.op_type for n in model.graph.node]
        assert ops.count("MatMulNBits") == 3, ops
        if f16:
            model = round_scales_to_f16(model)
        onnx.save(model, out / f"{name}.onnx")
        sess = ort.InferenceSession(str(out / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {"input": inputs.astype(np.float32)})
        np.save(out / f"{name}.out.npy", y.astype(np.float32))
        print(name, "zero points" if any(len(n.input) > 3 and n.input[3]
                                         for n in model.graph.node if n.op_type == "MatMulNBits") else "")


if __name__ == "__main__":
    main()
