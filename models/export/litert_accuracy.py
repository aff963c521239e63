"""Top-1 accuracy of an exported TFLite classifier in LiteRT (CPU).

Usage: python litert_accuracy.py MODEL.tflite DATA.safetensors
DATA holds `input` (samples first; reshaped to the model's input rank, e.g.
the digits' [N, 64] to the CNN's [N, 1, 8, 8]) and `label`. Prints
`accuracy <fraction>`. Scores are the output named `probabilities`, else the first.
"""

import pathlib
import sys

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from check_litert import read_safetensors


def main():
    model, data = sys.argv[1], sys.argv[2]
    t = read_safetensors(pathlib.Path(data))
    x, labels = t["input"].astype(np.float32), t["label"].astype(np.int64)
    it = Interpreter(model_path=model)
    inp = it.get_input_details()[0]
    dims = list(inp["shape"])
    if len(dims) != x.ndim:
        x = x.reshape([x.shape[0]] + dims[1:])
    it.resize_tensor_input(inp["index"], x.shape)
    it.allocate_tensors()
    it.set_tensor(inp["index"], np.ascontiguousarray(x))
    it.invoke()
    outs = {d["name"]: d["index"] for d in it.get_output_details()}
    name = "probabilities" if "probabilities" in outs else next(iter(outs))
    scores = it.get_tensor(outs[name])
    print(f"accuracy {float(np.mean(scores.argmax(axis=1) == labels)):.4f}")


if __name__ == "__main__":
    main()
