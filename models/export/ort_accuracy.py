"""Top-1 accuracy of an exported ONNX classifier in onnxruntime (CPU).

Usage: python ort_accuracy.py MODEL.onnx DATA.safetensors
DATA holds `input` (samples first; reshaped to the model's input rank, e.g.
the digits' [N, 64] to the CNN's [N, 1, 8, 8]) and `label`. Prints
`accuracy <fraction>`. Scores are the output named `probabilities`, else the first.
"""

import sys

import numpy as np
import onnxruntime as ort

from check_ort import read_safetensors


def main():
    model, data = sys.argv[1], sys.argv[2]
    t = read_safetensors(__import__("pathlib").Path(data))
    x, labels = t["input"].astype(np.float32), t["label"].astype(np.int64)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    sess = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dims = [d if isinstance(d, int) else -1 for d in inp.shape]
    if len(dims) != x.ndim:
        x = x.reshape([x.shape[0]] + dims[1:])
    outs = [o.name for o in sess.get_outputs()]
    name = "probabilities" if "probabilities" in outs else outs[0]
    scores = sess.run([name], {inp.name: x})[0]
    print(f"accuracy {float(np.mean(scores.argmax(axis=1) == labels)):.4f}")


if __name__ == "__main__":
    main()
