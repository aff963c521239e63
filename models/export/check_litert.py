"""Checks wginfer's TFLite exports with LiteRT, an independent runtime.

For every NAME.tflite in DIR (written by tests/export_tflite.rs) with its
NAME.io.safetensors beside it (tensors `input:<name>`, `output:<name>` as
wginfer computed them, `tolerance` for LiteRT's builtin kernels,
`xnnpack_tolerance` for its default XNNPACK delegate (inf: reported, not
asserted), and `int8_weights`: how many constant int8 weight tensors with
per-channel scales the file must hold):
- the file parses with LiteRT's own schema (`schema_py_generated`): identifier
  TFL3, schema version 3, every int8 constant quantized per output channel
  (one scale per row, quantized_dimension 0),
- LiteRT's interpreter runs it on the inputs (batch resized) twice, with
  its builtin CPU kernels and with its default XNNPACK delegate, and every
  output is within the tolerance of wginfer's (max absolute difference).

Usage: python check_litert.py DIR   (pip install 'ai-edge-litert==2.3.0' 'numpy<3')
"""

import json
import pathlib
import struct
import sys

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType

DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
          "I8": np.int8, "U8": np.uint8, "F64": np.float64, "BOOL": np.bool_}
OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


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


def inspect(model_path):
    """(op names, number of per-channel int8 constants); asserts the schema facts."""
    buf = model_path.read_bytes()
    assert schema.Model.ModelBufferHasIdentifier(buf, 0), "file identifier is not TFL3"
    model = schema.Model.GetRootAs(buf, 0)
    assert model.Version() == 3, f"schema version {model.Version()}"
    assert model.Buffers(0).DataLength() == 0, "buffer 0 must be empty"
    sg = model.Subgraphs(0)
    codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(model.OperatorCodesLength())]
    ops = [OP_NAMES[codes[sg.Operators(i).OpcodeIndex()]] for i in range(sg.OperatorsLength())]
    per_channel = 0
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        if t.Type() != schema.TensorType.INT8 or model.Buffers(t.Buffer()).DataLength() == 0:
            continue
        q = t.Quantization()
        rows = t.Shape(0)
        assert q is not None and q.ScaleLength() == rows and q.QuantizedDimension() == 0, \
            f"int8 tensor {t.Name().decode()}: one scale per output channel on axis 0"
        per_channel += 1
    return ops, per_channel


def run(model_path, io, resolver):
    """Max |LiteRT - wginfer| over the outputs, with the given kernels."""
    it = Interpreter(model_path=str(model_path), experimental_op_resolver_type=resolver)
    inputs = {d["name"]: d["index"] for d in it.get_input_details()}
    feeds = {k[len("input:"):]: v for k, v in io.items() if k.startswith("input:")}
    for name, value in feeds.items():
        it.resize_tensor_input(inputs[name], value.shape)
    it.allocate_tensors()
    for name, value in feeds.items():
        it.set_tensor(inputs[name], np.ascontiguousarray(value))
    it.invoke()
    got = {d["name"]: it.get_tensor(d["index"]) for d in it.get_output_details()}
    worst = 0.0
    for key, want in io.items():
        if not key.startswith("output:"):
            continue
        name = key[len("output:"):]
        assert got[name].shape == want.shape, f"{name}: shape {got[name].shape} != {want.shape}"
        diff = float(np.max(np.abs(got[name].astype(np.float64) - want.astype(np.float64))))
        worst = max(worst, diff)
    return worst


def check(model_path):
    io = read_safetensors(model_path.with_suffix(".io.safetensors"))
    tol, xnn_tol = float(io["tolerance"][0]), float(io["xnnpack_tolerance"][0])
    ops, per_channel = inspect(model_path)
    want_int8 = int(io["int8_weights"][0])
    builtin = run(model_path, io, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    xnnpack = run(model_path, io, OpResolverType.AUTO)
    ok = builtin <= tol and xnnpack <= xnn_tol and per_channel == want_int8
    xnn_note = f"tolerance {xnn_tol:.0e}" if np.isfinite(xnn_tol) else "reported only"
    print(f"{model_path.stem:20} {len(ops):3} ops ({', '.join(sorted(set(ops)))}); "
          f"{per_channel} per-channel int8 weights (want {want_int8}); max |LiteRT - wginfer|: "
          f"builtin kernels {builtin:.3e} (tolerance {tol:.0e}), XNNPACK {xnnpack:.3e} ({xnn_note}) "
          f"{'ok' if ok else 'FAIL'}")
    return ok


def main():
    directory = pathlib.Path(sys.argv[1])
    from importlib.metadata import version
    print(f"ai-edge-litert {version('ai-edge-litert')}, numpy {np.__version__}")
    results = [check(p) for p in sorted(directory.glob("*.tflite"))]
    if not results:
        sys.exit(f"no .tflite files in {directory}")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
