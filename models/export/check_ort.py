"""Checks wginfer's ONNX exports with onnxruntime, an independent runtime.

For every NAME.onnx in DIR (written by tests/export_onnx.rs) with its
NAME.io.safetensors beside it (tensors `input:<name>`, `output:<name>` as
wginfer computed them, `tolerance`, and optionally `min_cosine`):
- onnx.checker.check_model(full_check=True) passes and the opset is named,
- onnxruntime (CPU) runs it on the inputs, and every output is within the
  tolerance of wginfer's (max absolute difference),
- with `min_cosine`, every row (last axis) of every output has at least that
  cosine similarity to wginfer's row.

Usage: python check_ort.py DIR   (pip install 'onnxruntime==1.22.*' 'onnx==1.22.0' 'numpy<3')
"""

import json
import pathlib
import struct
import sys

import numpy as np
import onnx
import onnxruntime as ort

DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
          "I8": np.int8, "U8": np.uint8, "F64": np.float64, "BOOL": np.bool_}


def read_safetensors(path):
    """Tensors of a .safetensors file (its header is JSON; data little-endian)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        arr = np.frombuffer(body[start:end], dtype=DTYPES[info["dtype"]])
        out[name] = arr.reshape(info["shape"])
    return out


def check(model_path):
    io = read_safetensors(model_path.with_suffix(".io.safetensors"))
    tol = float(io["tolerance"][0])
    model = onnx.load(str(model_path))
    onnx.checker.check_model(model, full_check=True)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    options = ort.SessionOptions()
    # onnxruntime fuses DequantizeLinear(int4, block_size) + MatMul into
    # MatMulNBits, by default at accuracy level 4 (int8 activations), which
    # moves MiniLM's embeddings by 5e-3; level 0 computes in f32 as the file says.
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    sess = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    feeds = {k[len("input:"):]: v for k, v in io.items() if k.startswith("input:")}
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(names, feeds)))
    min_cos = float(io["min_cosine"][0]) if "min_cosine" in io else None
    worst, lowest = 0.0, 1.0
    for key, want in io.items():
        if not key.startswith("output:"):
            continue
        name = key[len("output:"):]
        a, b = got[name].astype(np.float64), want.astype(np.float64)
        worst = max(worst, float(np.max(np.abs(a - b))))
        if min_cos is not None:
            a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
            norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            cos = np.sum(a * b, axis=1) / np.maximum(norms, 1e-300)
            lowest = min(lowest, float(np.min(cos)))
    ok = worst <= tol and (min_cos is None or lowest >= min_cos)
    cosine = "" if min_cos is None else f"  lowest cosine {lowest:.6f} (at least {min_cos})"
    print(f"{model_path.stem:24} opsets {opsets}  max |onnxruntime - wginfer| {worst:.3e}"
          f"  (tolerance {tol:.0e}){cosine} {'ok' if ok else 'FAIL'}")
    return ok


def main():
    directory = pathlib.Path(sys.argv[1])
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}")
    results = [check(p) for p in sorted(directory.glob("*.onnx"))]
    if not results:
        sys.exit(f"no .onnx files in {directory}")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
