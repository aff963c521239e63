#!/usr/bin/env python3
"""Export the shipped digits MLP with int8 weights in ONNX's QDQ form
(weight-only: DequantizeLinear on constant int8/uint8 weights feeding Gemm or
MatMul), the form quantization tools write, and onnxruntime's outputs for it.

The three layers cover the importer's cases:
  fc1  Gemm transB=1 over DequantizeLinear(int8 [out, in], per-channel scales on axis 0, zero points 0)
  fc2  MatMul over DequantizeLinear(uint8 [in, out], per-channel scales and zero points on axis 1), then Add bias
  fc3  Gemm transB=0 over DequantizeLinear(int8 [in, out], one scale, zero point 3) with bias C

Writes, next to this script:
  digits_mlp_qdq.onnx                   the model (opset 21, dynamic batch)
  digits_mlp_qdq_reference.safetensors  onnxruntime's `probabilities` on the test split

Run: python3 models/digits-cnn/qdq.py  (needs numpy, safetensors, onnx==1.22.0, onnxruntime)
"""
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
MLP = os.path.join(HERE, "..", "digits-mlp")


def init(name, a):
    return numpy_helper.from_array(np.ascontiguousarray(a), name)


def main():
    w = load_file(os.path.join(MLP, "model.safetensors"))
    te = load_file(os.path.join(MLP, "digits_test.safetensors"))
    inits, nodes = [], []

    # fc1: [out, in] int8, symmetric per output channel (axis 0).
    w1 = w["fc1.weight"].astype(np.float64)
    s1 = np.abs(w1).max(axis=1) / 127.0
    q1 = np.clip(np.round(w1 / s1[:, None]), -127, 127).astype(np.int8)
    inits += [init("fc1.q", q1), init("fc1.scale", s1.astype(np.float32)),
              init("fc1.zero", np.zeros(len(s1), np.int8)), init("fc1.bias", w["fc1.bias"])]
    nodes.append(helper.make_node("DequantizeLinear", ["fc1.q", "fc1.scale", "fc1.zero"], ["fc1.w"], name="dq1", axis=0))
    nodes.append(helper.make_node("Gemm", ["input", "fc1.w", "fc1.bias"], ["fc1.out"], name="fc1", transB=1))
    nodes.append(helper.make_node("Relu", ["fc1.out"], ["relu1.out"], name="relu1"))

    # fc2: [in, out] uint8, affine per output channel (axis 1).
    w2 = w["fc2.weight"].astype(np.float64).T
    lo, hi = np.minimum(w2.min(axis=0), 0), np.maximum(w2.max(axis=0), 0)
    s2 = (hi - lo) / 255.0
    z2 = np.clip(np.round(-lo / s2), 0, 255)
    q2 = np.clip(np.round(w2 / s2) + z2, 0, 255).astype(np.uint8)
    inits += [init("fc2.q", q2), init("fc2.scale", s2.astype(np.float32)),
              init("fc2.zero", z2.astype(np.uint8)), init("fc2.bias", w["fc2.bias"])]
    nodes.append(helper.make_node("DequantizeLinear", ["fc2.q", "fc2.scale", "fc2.zero"], ["fc2.w"], name="dq2", axis=1))
    nodes.append(helper.make_node("MatMul", ["relu1.out", "fc2.w"], ["fc2.mm"], name="fc2"))
    nodes.append(helper.make_node("Add", ["fc2.mm", "fc2.bias"], ["fc2.out"], name="fc2_bias"))
    nodes.append(helper.make_node("Relu", ["fc2.out"], ["relu2.out"], name="relu2"))

    # fc3: [in, out] int8, one scale for the tensor and zero point 3.
    w3 = w["fc3.weight"].astype(np.float64).T
    s3 = np.abs(w3).max() / 120.0
    q3 = np.clip(np.round(w3 / s3) + 3, -128, 127).astype(np.int8)
    inits += [init("fc3.q", q3), init("fc3.scale", np.array(s3, np.float32)),
              init("fc3.zero", np.array(3, np.int8)), init("fc3.bias", w["fc3.bias"])]
    nodes.append(helper.make_node("DequantizeLinear", ["fc3.q", "fc3.scale", "fc3.zero"], ["fc3.w"], name="dq3"))
    nodes.append(helper.make_node("Gemm", ["relu2.out", "fc3.w", "fc3.bias"], ["logits"], name="fc3"))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=-1))

    graph = helper.make_graph(
        nodes, "digits_mlp_qdq",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], producer_name="wginfer-digits-mlp-qdq")
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(HERE, "digits_mlp_qdq.onnx"))
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    probs = s.run(["probabilities"], {"input": te["input"].astype(np.float32)})[0]
    save_file({"probabilities": probs.astype(np.float32)}, os.path.join(HERE, "digits_mlp_qdq_reference.safetensors"))
    print(f"QDQ MLP test accuracy (onnxruntime): {float((probs.argmax(1) == te['label']).mean()):.4f}")


if __name__ == "__main__":
    main()
