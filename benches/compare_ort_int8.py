#!/usr/bin/env python3
"""int8 CNNs: wginfer's W8A8 beside onnxruntime's int8, with both f32 runs, in one run.

For one ONNX CNN (default: the shipped digits CNN) this makes
  - wginfer w8a8:  `wginfer quantize MODEL --format w8a8` (Conv -> QConv and
                   Gemm -> QLinear: int8 weights per output channel, uint8
                   activations quantized per row at run time);
  - ort static:    onnxruntime.quantization.quantize_static (QDQ, int8
                   weights per channel, uint8 activations, MinMax calibration
                   on --calibration samples);
  - ort dynamic:   onnxruntime.quantization.quantize_dynamic (ConvInteger /
                   MatMulInteger, activations quantized per tensor at run time);
and prints the median latency of each, and of the f32 model in both
runtimes, per batch size, with the ratios w8a8 / f32 and w8a8 / onnxruntime
int8. With --data (labelled samples; default for the digits CNN: the 450
held-out digits) it also prints each variant's top-1 accuracy.

Both runtimes use --threads threads (onnxruntime's intra-op pool; wginfer's
RAYON_NUM_THREADS). Timing helpers are compare_ort.py's.

Usage (from the repository root):
    cargo build --release
    python3 -m venv /tmp/ortenv && /tmp/ortenv/bin/pip install onnx==1.22.0 onnxruntime numpy
    /tmp/ortenv/bin/python benches/compare_ort_int8.py --threads 2 --batch 1,64
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_ort import ROOT, ort_p50_ms, ort_session, wginfer_bench  # noqa: E402

DIGITS = os.path.join(ROOT, "models", "digits-mlp")


def load_safetensors(path):
    """The tensors of a .safetensors file (F32 / I64 / I32 only) as numpy arrays."""
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    types = {"F32": np.float32, "I64": np.int64, "I32": np.int32}
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + a:8 + n + b], dtype=types[v["dtype"]]).reshape(v["shape"])
    return out


def input_shape(path):
    inp = ort_session(path, 1).get_inputs()[0]
    return inp.name, [d if isinstance(d, int) else 1 for d in inp.shape[1:]]


class Reader(CalibrationDataReader):
    """Calibration samples, one per run."""

    def __init__(self, name, samples):
        self.items = iter([{name: s[None]} for s in samples])

    def get_next(self):
        return next(self.items, None)


def ort_int8(model, out_dir, calibration):
    """onnxruntime's static (QDQ) and dynamic int8 forms of `model`, after
    its pre-processing (shape inference, graph optimization: BatchNormalization
    folded into Conv)."""
    name, shape = input_shape(model)
    pre = os.path.join(out_dir, "pre.onnx")
    quant_pre_process(model, pre, skip_symbolic_shape=True)
    model = pre
    static, dynamic = os.path.join(out_dir, "ort_static.onnx"), os.path.join(out_dir, "ort_dynamic.onnx")
    samples = calibration.reshape([-1] + shape).astype(np.float32)
    quantize_static(model, static, Reader(name, samples), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    # (ConvInteger and MatMulInteger; their outputs rescaled in f32.)
    quantize_dynamic(model, dynamic, per_channel=True, weight_type=QuantType.QInt8)
    return static, dynamic


def ort_accuracy(path, x, labels, threads):
    sess = ort_session(path, threads)
    name, shape = input_shape(path)
    probs = sess.run(None, {name: x.reshape([-1] + shape).astype(np.float32)})[0]
    return float((probs.argmax(1) == labels).mean())


def wginfer_accuracy(exe, model, x, labels, shape, env):
    with tempfile.TemporaryDirectory() as d:
        xin, yout = os.path.join(d, "x.npy"), os.path.join(d, "y.npy")
        np.save(xin, x.reshape([-1] + shape).astype(np.float32))
        name = input_shape_name(exe, model, env)
        subprocess.run([exe, "run", model, "--device", "cpu", "-i", f"{name}={xin}", "-o", yout], check=True,
                       env=env, stdout=subprocess.DEVNULL)
        return float((np.load(yout).argmax(1) == labels).mean())


def input_shape_name(exe, model, env):
    """The first input's name as `wginfer inspect` prints it."""
    out = subprocess.run([exe, "inspect", model], check=True, env=env, capture_output=True, text=True).stdout
    lines = out.splitlines()
    return lines[lines.index("inputs") + 1].split()[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wginfer", default=os.path.join(ROOT, "target", "release", "wginfer"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "digits-cnn", "model.onnx"))
    ap.add_argument("--calibration", default=os.path.join(DIGITS, "digits_train.safetensors"),
                    help="a .safetensors file whose `input` holds calibration samples (first 200 used)")
    ap.add_argument("--data", default=os.path.join(DIGITS, "digits_test.safetensors"),
                    help="labelled samples (`input`, `label`) for accuracy; `none` to skip")
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--time", type=float, default=1.0, help="seconds of measurement per configuration")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if not os.path.exists(args.wginfer):
        sys.exit(f"no wginfer binary at {args.wginfer}: run `cargo build --release` first (or pass --wginfer)")
    batches = [int(b) for b in args.batch.split(",")]
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    env.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    tmp = tempfile.mkdtemp()
    w8a8 = os.path.join(tmp, "w8a8.safetensors")
    subprocess.run([args.wginfer, "quantize", args.model, "--format", "w8a8", "-o", w8a8], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    static, dynamic = ort_int8(args.model, tmp, load_safetensors(args.calibration)["input"][:200])

    ort_ms = {}
    for label, path in [("ort f32", args.model), ("ort static int8", static), ("ort dynamic int8", dynamic)]:
        sess = ort_session(path, args.threads)
        for b in batches:
            ort_ms[(label, b)] = ort_p50_ms(sess, b, args.time)
    ours = {}
    for label, path in [("wginfer f32", args.model), ("wginfer w8a8", w8a8)]:
        for r in wginfer_bench(args.wginfer, [path, "--batch", args.batch], args.time, env):
            ours[(label, r["batch"])] = r["p50_ms"]
    times = {**ort_ms, **ours}

    print(f"onnxruntime {ort.__version__}, {args.threads} threads each, median ms")
    print(f"{'batch':>5} {'wginfer f32':>12} {'wginfer w8a8':>13} {'ort f32':>9} {'ort static':>11} "
          f"{'ort dynamic':>12} {'w8a8/f32':>9} {'w8a8/ort static':>16} {'w8a8/ort dynamic':>17}")
    rows = []
    for b in batches:
        t = {k: v for (k, bb), v in times.items() if bb == b}
        w = t["wginfer w8a8"]
        print(f"{b:>5} {t['wginfer f32']:>12.4f} {w:>13.4f} {t['ort f32']:>9.4f} {t['ort static int8']:>11.4f} "
              f"{t['ort dynamic int8']:>12.4f} {w / t['wginfer f32']:>8.2f}x {w / t['ort static int8']:>15.2f}x "
              f"{w / t['ort dynamic int8']:>16.2f}x")
        rows.append({"batch": b, **t})

    accuracy = {}
    if args.data != "none":
        d = load_safetensors(args.data)
        x, labels = d["input"], d["label"]
        _, shape = input_shape(args.model)
        for label, path in [("ort f32", args.model), ("ort static int8", static), ("ort dynamic int8", dynamic)]:
            accuracy[label] = ort_accuracy(path, x, labels, args.threads)
        for label, path in [("wginfer f32", args.model), ("wginfer w8a8", w8a8)]:
            accuracy[label] = wginfer_accuracy(args.wginfer, path, x, labels, shape, env)
        print("accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in accuracy.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"onnxruntime": ort.__version__, "threads": args.threads, "times": rows,
                       "accuracy": accuracy}, f, indent=2)


if __name__ == "__main__":
    main()
