"""W8A8 ONNX models written by onnxruntime's own dynamic quantizer
(`quantize_dynamic`: DynamicQuantizeLinear + MatMulInteger + Cast + Mul),
for wginfer's importer (tests/import_dynamic.rs).

The shipped digits MLP (models/digits-cnn/digits_mlp.onnx, three Gemm
layers) is rewritten as MatMul + Add + Relu (`ort_nbits.as_matmul`: the
dynamic quantizer quantizes MatMul, not Gemm), then quantized in several
ways; for each variant NAME this writes NAME.onnx and NAME.out.npy,
onnxruntime's output on the first ROWS rows of tensor `input` of DIGITS
(the shipped models/digits-mlp/digits_test.safetensors).

Variants: uint8 weights per tensor and per output channel (asymmetric, with
zero points), and int8 weights per channel with `reduce_range` (7-bit
weights: onnxruntime's u8·s8 kernel on x86 without VNNI sums pairs of
products in saturating int16, which full-range int8 weights overflow).

With --minilm it quantizes wginfer's independent ONNX build of
all-MiniLM-L6-v2 (models/minilm/export_onnx.py, from the package's
model.safetensors) with uint8 weights per channel and writes only
minilm-u8-channel.onnx; the test runs wginfer on it and
models/export/check_ort.py compares onnxruntime's outputs with wginfer's.

  python ort_dynamic.py MLP.onnx DIGITS.safetensors ROWS OUTDIR
  python ort_dynamic.py --minilm MODEL_DIR OUTDIR
"""

import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from check_ort import read_safetensors  # noqa: E402
from ort_nbits import as_matmul  # noqa: E402

VARIANTS = [
    # (name, weight type, per channel, reduce range)
    ("u8-tensor", QuantType.QUInt8, False, False),
    ("u8-channel", QuantType.QUInt8, True, False),
    ("s8-channel-reduced", QuantType.QInt8, True, True),
]


def minilm(model_dir, out):
    """MiniLM quantized by quantize_dynamic (uint8 weights per channel)."""
    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "minilm"))
    from export_onnx import build  # noqa: E402

    base = out / "minilm.onnx"
    onnx.save(build(model_dir), base)
    path = out / "minilm-u8-channel.onnx"
    quantize_dynamic(base, path, weight_type=QuantType.QUInt8, per_channel=True)
    base.unlink()
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops.count("MatMulInteger") == 36, ops
    print("minilm-u8-channel", sorted(set(ops)))


def main():
    if sys.argv[1] == "--minilm":
        minilm(sys.argv[2], pathlib.Path(sys.argv[3]))
        return
    mlp, digits, rows, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), pathlib.Path(sys.argv[4])
    inputs = read_safetensors(pathlib.Path(digits))["input"][:rows].astype(np.float32)
    base = out / "mlp_matmul.onnx"
    onnx.save(as_matmul(onnx.load(mlp)), base)
    for name, weight_type, per_channel, reduce_range in VARIANTS:
        path = out / f"{name}.onnx"
        quantize_dynamic(base, path, weight_type=weight_type, per_channel=per_channel,
                         reduce_range=reduce_range)
        ops = [n.op_type for n in onnx.load(path).graph.node]
        assert ops.count("MatMulInteger") == 3 and ops.count("DynamicQuantizeLinear") == 3, ops
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {"input": inputs})
        np.save(out / f"{name}.out.npy", y.astype(np.float32))
        print(name, sorted(set(ops)))


if __name__ == "__main__":
    main()
