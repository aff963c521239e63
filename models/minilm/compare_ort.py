"""Seq-128, batch-1 latency of all-MiniLM-L6-v2: wginfer (CPU, release build)
against onnxruntime on the ONNX export (export_onnx.py), f32 and int8, in one run.

Both run at equal thread counts: onnxruntime with N intra-op threads,
wginfer with RAYON_NUM_THREADS=N, for N = 1 and all cores. int8 for onnxruntime is its dynamic quantization
(quantize_dynamic, per-channel int8 MatMul weights, u8 activations); for
wginfer `wginfer quantize --format int8` (and w8a8). Latency is the median
of --runs runs after a warm-up, tokenization included for wginfer (it is a
few µs) and not for onnxruntime.

Usage (from the repository root):
  CARGO_TARGET_DIR=/tmp/target-release cargo build --release
  python models/minilm/compare_ort.py MODEL_DIR [--wginfer /tmp/target-release/release/wginfer] [--runs 50]
Needs numpy, onnx, onnxruntime, tokenizers.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import export_onnx  # noqa: E402

BASE = (
    "The history of numerical computing is a history of trade-offs between precision, speed and memory. "
    "Early machines stored numbers in fixed point, and programmers scaled every quantity by hand so that "
    "intermediate results would neither overflow nor lose their significant digits. Floating point moved "
    "that bookkeeping into hardware, and the IEEE 754 standard of 1985 made the results of a computation "
    "the same on every conforming machine."
)


def text_of_tokens(tok, n):
    """A text that tokenizes to exactly n tokens ([CLS] and [SEP] included)."""
    words = (BASE + " ") * 4
    words = words.split()
    lo, hi = 1, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tok.encode(" ".join(words[:mid])).ids) <= n:
            lo = mid
        else:
            hi = mid - 1
    t = " ".join(words[:lo])
    got = len(tok.encode(t).ids)
    # Pad with single-token words when a word split lands short.
    while got < n:
        t += " a"
        got = len(tok.encode(t).ids)
    assert got == n, got
    return t


def time_ort(path, feeds, runs, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    s.run(None, feeds)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, feeds)
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.median(ts))


def time_wginfer(exe, model, tokenizer_dir, text, runs, threads):
    env = dict(os.environ)
    if threads:
        env["RAYON_NUM_THREADS"] = str(threads)
    out = subprocess.run(
        [exe, "embed", model, text, "--tokenizer", tokenizer_dir, "--repeat", str(runs)],
        capture_output=True, text=True, env=env, check=True,
    )
    m = re.search(r"latency p50 ([0-9.]+) ms", out.stderr)
    assert m, out.stderr
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--wginfer", default="/tmp/target-release/release/wginfer")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--seq", type=int, default=128)
    a = ap.parse_args()
    tok = Tokenizer.from_file(os.path.join(a.model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    text = text_of_tokens(tok, a.seq)
    ids = np.array([tok.encode(text).ids], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1], dtype=np.int64)}
    with tempfile.TemporaryDirectory() as d:
        f32 = os.path.join(d, "minilm.onnx")
        import onnx

        onnx.save(export_onnx.build(a.model_dir), f32)
        from onnxruntime.quantization import QuantType, quantize_dynamic

        i8 = os.path.join(d, "minilm-int8.onnx")
        quantize_dynamic(f32, i8, weight_type=QuantType.QInt8, per_channel=True)
        rows = []
        wq = {}
        cal = os.path.join(HERE, "calibration.txt")
        for fmt, extra in [("int8", []), ("w8a8", []), ("w8a8 calibrated", ["--calibration", cal])]:
            p = os.path.join(d, f"minilm-{fmt.replace(' ', '-')}.safetensors")
            cmd = [a.wginfer, "quantize", a.model_dir, "--format", fmt.split()[0], "-o", p] + extra
            subprocess.run(cmd, check=True, capture_output=True)
            wq[fmt] = p
        for threads in sorted({1, os.cpu_count() or 1}):
            label = f"{threads} thread" + ("s" if threads > 1 else "")
            ort_f32 = time_ort(f32, feeds, a.runs, threads)
            ort_i8 = time_ort(i8, feeds, a.runs, threads)
            w32 = time_wginfer(a.wginfer, a.model_dir, a.model_dir, text, a.runs, threads)
            rows.append((f"f32, {label}", w32, f"{ort_f32:.2f} (f32)", w32 / ort_f32))
            for fmt, p in wq.items():
                w = time_wginfer(a.wginfer, p, a.model_dir, text, a.runs, threads)
                rows.append((f"{fmt}, {label}", w, f"{ort_i8:.2f} (int8 dynamic)", w / ort_i8))
    print(f"seq {a.seq}, batch 1, median of {a.runs} runs; onnxruntime {ort.__version__}, same thread count")
    print("| model, threads | wginfer ms | onnxruntime ms | ratio |")
    print("|---|---:|---:|---:|")
    for label, w, o, r in rows:
        print(f"| {label} | {w:.2f} | {o} | {r:.2f}× |")

if __name__ == "__main__":
    main()
