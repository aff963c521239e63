#!/usr/bin/env python3
"""Build the digits CNN and export it, and the shipped digits MLP, to ONNX.

Data: models/digits-mlp/digits_{train,test}.safetensors (scikit-learn's
`load_digits`, 8x8 images scaled to [0, 1], the MLP's seeded 75/25 split).

CNN (NCHW, input [batch, 1, 8, 8]):
  Conv 1->8 3x3 pad 1 -> BatchNormalization -> Relu -> MaxPool 2x2
  -> Conv 8->16 3x3 pad 1 -> Relu -> Flatten -> Gemm 256->10 (transB=1) -> Softmax
The two convolutions are fixed random filters (seeded); the BatchNormalization
statistics are the training set's per-channel mean and variance; the final
Gemm is trained (multinomial logistic regression, scikit-learn) on the conv
features of the training split. So the model is real and trained, though only
its last layer learns.

Writes, next to this script:
  model.onnx               the CNN (opset 17, dynamic batch `batch`)
  reference.safetensors    onnxruntime's outputs on the test split: `probabilities` [N,10]
  accuracy.json            test accuracy of the exported model under onnxruntime
  digits_mlp.onnx          the shipped MLP (models/digits-mlp/model.safetensors; Gemm transB=1
                           from its [out, in] weights)
  digits_mlp_reference.safetensors  onnxruntime's `probabilities` for the MLP on the test split

Run: python3 models/digits-cnn/train.py  (needs numpy, scikit-learn, safetensors, onnx==1.22.0, onnxruntime)
"""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file, save_file
from sklearn.linear_model import LogisticRegression

HERE = os.path.dirname(os.path.abspath(__file__))
MLP = os.path.join(HERE, "..", "digits-mlp")
SEED = 0


def conv2d(x, w, b, pad):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1
    cols = np.stack([xp[:, :, i:i + oh, j:j + ow] for i in range(kh) for j in range(kw)], axis=2)
    cols = cols.reshape(n, c * kh * kw, oh * ow)
    y = np.einsum("mk,nkp->nmp", w.reshape(m, -1), cols) + b[None, :, None]
    return y.reshape(n, m, oh, ow)


def features(x, p):
    y = conv2d(x, p["w1"], p["b1"], 1)
    y = (y - p["mean"][None, :, None, None]) / np.sqrt(p["var"][None, :, None, None] + 1e-5)
    y = np.maximum(y, 0)
    n, c, h, w = y.shape
    y = y.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
    y = np.maximum(conv2d(y, p["w2"], p["b2"], 1), 0)
    return y.reshape(n, -1)


def init(name, a):
    return numpy_helper.from_array(np.ascontiguousarray(a, dtype=np.float32), name)


def export_cnn(p, w3, b3):
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn1.scale", "bn1.bias", "bn1.mean", "bn1.var"], ["b1"],
                         name="bn1", epsilon=1e-5),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=-1),
    ]
    c = p["w1"].shape[0]
    inits = [
        init("conv1.weight", p["w1"]), init("conv1.bias", p["b1"]),
        init("bn1.scale", np.ones(c)), init("bn1.bias", np.zeros(c)),
        init("bn1.mean", p["mean"]), init("bn1.var", p["var"]),
        init("conv2.weight", p["w2"]), init("conv2.bias", p["b2"]),
        init("fc.weight", w3), init("fc.bias", b3),
    ]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="wginfer-digits-cnn")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def export_mlp():
    w = load_file(os.path.join(MLP, "model.safetensors"))
    nodes, x = [], "input"
    for i in (1, 2, 3):
        out = "logits" if i == 3 else f"fc{i}.out"
        nodes.append(helper.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [out], name=f"fc{i}", transB=1))
        if i < 3:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}.out"], name=f"relu{i}"))
            x = f"relu{i}.out"
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=-1))
    inits = [init(k, v) for k, v in sorted(w.items())]
    graph = helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="wginfer-digits-mlp")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(["probabilities"], {"input": x})[0]


def main():
    tr = load_file(os.path.join(MLP, "digits_train.safetensors"))
    te = load_file(os.path.join(MLP, "digits_test.safetensors"))
    xtr = tr["input"].reshape(-1, 1, 8, 8).astype(np.float64)
    xte = te["input"].reshape(-1, 1, 8, 8).astype(np.float32)
    rng = np.random.default_rng(SEED)
    p = {
        "w1": rng.normal(0, 1 / 3, (8, 1, 3, 3)).astype(np.float32),
        "b1": rng.normal(0, 0.1, 8).astype(np.float32),
        "w2": rng.normal(0, 1 / np.sqrt(72), (16, 8, 3, 3)).astype(np.float32),
        "b2": rng.normal(0, 0.1, 16).astype(np.float32),
    }
    c1 = conv2d(xtr, p["w1"].astype(np.float64), p["b1"].astype(np.float64), 1)
    p["mean"] = c1.mean(axis=(0, 2, 3)).astype(np.float32)
    p["var"] = c1.var(axis=(0, 2, 3)).astype(np.float32)
    ftr = features(xtr, {k: v.astype(np.float64) for k, v in p.items()})
    clf = LogisticRegression(C=1.0, max_iter=3000)
    clf.fit(ftr, tr["label"])
    model = export_cnn(p, clf.coef_, clf.intercept_)
    onnx.save(model, os.path.join(HERE, "model.onnx"))
    probs = run(model, xte)
    acc = float((probs.argmax(1) == te["label"]).mean())
    save_file({"probabilities": probs.astype(np.float32)}, os.path.join(HERE, "reference.safetensors"))
    with open(os.path.join(HERE, "accuracy.json"), "w") as f:
        json.dump({"test_accuracy_onnxruntime": acc, "test_samples": int(len(xte))}, f, indent=1)
    print(f"CNN test accuracy (onnxruntime): {acc:.4f}")

    mlp = export_mlp()
    onnx.save(mlp, os.path.join(HERE, "digits_mlp.onnx"))
    mp = run(mlp, te["input"].astype(np.float32))
    save_file({"probabilities": mp.astype(np.float32)}, os.path.join(HERE, "digits_mlp_reference.safetensors"))
    print(f"MLP test accuracy (onnxruntime): {float((mp.argmax(1) == te['label']).mean()):.4f}")


if __name__ == "__main__":
    main()
