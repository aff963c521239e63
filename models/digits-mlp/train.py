#!/usr/bin/env python3
"""Train the shipped digits MLP and export it as a wginfer model.

Data: scikit-learn's bundled `load_digits` (1,797 8x8 images, no download).
Split: a fixed, seeded 75/25 stratified split; inputs scaled to [0, 1].
Model: MLPClassifier 64 -> 128 -> 64 -> 10, ReLU, softmax output.

Writes, next to this script:
  model.safetensors           the model (weights + graph JSON in __metadata__)
  digits_test.safetensors     the held-out split: `input` f32 [N,64], `label` i64 [N]
  digits_train.safetensors    the training split, same layout (calibration and fine-tuning data)
  reference.safetensors       the trainer's own predict_proba on that split, `probabilities` f32 [N,10]

The trained weights are rounded to f32 (what the model file stores) and put back
into the classifier before `predict_proba`, so the reference is the trainer's own
forward pass over exactly the shipped weights (computed in float64).

Run: python3 models/digits-mlp/train.py   (needs numpy, scikit-learn, safetensors)
"""
import json
import os

import numpy as np
from safetensors.numpy import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 0


def main():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float64)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=SEED
    )
    clf = MLPClassifier(
        hidden_layer_sizes=(128, 64),
        activation="relu",
        solver="adam",
        alpha=1e-4,
        batch_size=64,
        learning_rate_init=1e-3,
        max_iter=400,
        random_state=SEED,
    )
    clf.fit(x_train, y_train)

    # Round to what we ship, and let the trainer compute the reference with it.
    clf.coefs_ = [w.astype(np.float32).astype(np.float64) for w in clf.coefs_]
    clf.intercepts_ = [b.astype(np.float32).astype(np.float64) for b in clf.intercepts_]
    x_test32 = x_test.astype(np.float32)
    probs = clf.predict_proba(x_test32.astype(np.float64))
    acc = float((probs.argmax(axis=1) == y_test).mean())
    print(f"train samples {len(y_train)}, test samples {len(y_test)}, test accuracy {acc:.4f}")

    tensors = {}
    params = []
    nodes = []
    prev = "input"
    names = ["fc1", "fc2", "fc3"]
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        name = names[i]
        # sklearn stores [in, out]; our Linear takes weight [out, in] (PyTorch layout).
        wt = np.ascontiguousarray(w.T.astype(np.float32))
        bt = b.astype(np.float32)
        tensors[f"{name}.weight"] = wt
        tensors[f"{name}.bias"] = bt
        params.append({"name": f"{name}.weight", "dtype": "f32", "shape": list(wt.shape)})
        params.append({"name": f"{name}.bias", "dtype": "f32", "shape": list(bt.shape)})
        out = "logits" if i == len(names) - 1 else f"{name}.out"
        nodes.append({"name": name, "op": "Linear", "inputs": [prev, f"{name}.weight", f"{name}.bias"], "outputs": [out]})
        prev = out
        if i < len(names) - 1:
            act = f"relu{i + 1}"
            nodes.append({"name": act, "op": "Relu", "inputs": [prev], "outputs": [f"{act}.out"]})
            prev = f"{act}.out"
    nodes.append({"name": "softmax", "op": "Softmax", "inputs": ["logits"], "outputs": ["probabilities"], "attrs": {"axis": -1}})

    graph = {
        "format": "wginfer.graph",
        "version": 1,
        "name": "digits-mlp",
        "inputs": [{"name": "input", "dtype": "f32", "shape": ["batch", 64]}],
        "outputs": [
            {"name": "logits", "dtype": "f32", "shape": ["batch", 10]},
            {"name": "probabilities", "dtype": "f32", "shape": ["batch", 10]},
        ],
        "params": params,
        "nodes": nodes,
    }
    save_file(tensors, os.path.join(HERE, "model.safetensors"), metadata={"wginfer.graph": json.dumps(graph)})
    save_file(
        {"input": x_test32, "label": y_test.astype(np.int64)},
        os.path.join(HERE, "digits_test.safetensors"),
        metadata={"source": "sklearn.datasets.load_digits, 25% stratified split, random_state=0, scaled /16"},
    )
    save_file(
        {"input": x_train.astype(np.float32), "label": y_train.astype(np.int64)},
        os.path.join(HERE, "digits_train.safetensors"),
        metadata={"source": "sklearn.datasets.load_digits, 75% stratified split, random_state=0, scaled /16"},
    )
    save_file(
        {"probabilities": probs.astype(np.float32)},
        os.path.join(HERE, "reference.safetensors"),
        metadata={"source": "MLPClassifier.predict_proba (float64) over the shipped f32 weights", "accuracy": f"{acc:.6f}"},
    )


if __name__ == "__main__":
    main()
