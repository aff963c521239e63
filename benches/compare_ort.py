#!/usr/bin/env python3
"""wginfer vs ONNX Runtime on the CPU, and wginfer's f32 matmul vs numpy, in one run.

Runs the same ONNX files in onnxruntime (in this process) and in wginfer
(`wginfer bench MODEL.onnx --devices cpu --json ...`, which imports the ONNX
file), for each batch size, and prints the latency ratio wginfer / onnxruntime
(below 1.0: wginfer is faster). Models: the digits MLP (64-128-64-10) and the
digits CNN shipped in models/digits-cnn, and a 784-512-512-10 MLP with random
weights that this script writes to a temporary ONNX file.

Then it times a 1024x1024x1024 f32 matmul in numpy (its bundled BLAS,
OpenBLAS for the PyPI wheels) and `wginfer bench --op matmul --sizes 1024`
(a square Linear layer on the CPU backend), and prints the GFLOP/s ratio.

Both runtimes use every core: onnxruntime's intra-op pool is set to the core
count wginfer's pool uses. Set --threads to change both (wginfer reads
RAYON_NUM_THREADS; the `gemm` crate follows it).

Usage (from the repository root):
    cargo build --release
    python3 -m venv /tmp/ortenv && /tmp/ortenv/bin/pip install onnx==1.22.0 onnxruntime numpy
    /tmp/ortenv/bin/python benches/compare_ort.py [--wginfer target/release/wginfer] [--batch 1,64]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mlp_784(path):
    """A 784-512-512-10 MLP (Gemm, Relu, Gemm, Relu, Gemm, Softmax) with a dynamic batch."""
    rng = np.random.default_rng(0)
    dims = [784, 512, 512, 10]
    inits, nodes = [], []
    x = "input"
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        w = (rng.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32)
        bias = (0.01 * rng.standard_normal(b)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        y = f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [y], transB=1, name=f"fc{i}"))
        x = y
        if i + 2 < len(dims):
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    nodes.append(helper.make_node("Softmax", [x], ["probabilities"], axis=1, name="softmax"))
    graph = helper.make_graph(
        nodes,
        "mlp_784_512_512_10",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 784])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def time_runs(fn, budget_s, min_runs=5, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times


def ort_p50_ms(path, batch, threads, budget_s):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [batch if not isinstance(d, int) else d for d in inp.shape]
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    times = time_runs(lambda: sess.run(None, {inp.name: x}), budget_s)
    return 1e3 * times[len(times) // 2]


def wginfer_bench(exe, extra, budget_s, env):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "bench.json")
        cmd = [exe, "bench", *extra, "--devices", "cpu", "--time", str(budget_s), "--json", out]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)["results"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wginfer", default=os.path.join(ROOT, "target", "release", "wginfer"))
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--time", type=float, default=2.0, help="seconds of measurement per configuration")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if not os.path.exists(args.wginfer):
        sys.exit(f"no wginfer binary at {args.wginfer}: run `cargo build --release` first (or pass --wginfer)")
    batches = [int(b) for b in args.batch.split(",")]
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    env.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())  # wgpu lists adapters for the JSON

    tmp = tempfile.mkdtemp()
    big = os.path.join(tmp, "mlp_784_512_512_10.onnx")
    mlp_784(big)
    models = [
        ("digits MLP", os.path.join(ROOT, "models", "digits-cnn", "digits_mlp.onnx")),
        ("784-512-512-10 MLP", big),
        ("digits CNN", os.path.join(ROOT, "models", "digits-cnn", "model.onnx")),
    ]
    print(f"onnxruntime {ort.__version__}, numpy {np.__version__}, {args.threads} threads each")
    rows = []
    print(f"\n{'model':<20} {'batch':>5} {'onnxruntime ms':>15} {'wginfer ms':>11} {'ratio':>7}")
    for name, path in models:
        results = wginfer_bench(args.wginfer, [path, "--batch", args.batch], args.time, env)
        for b in batches:
            ours = next(r["p50_ms"] for r in results if r["batch"] == b)
            theirs = ort_p50_ms(path, b, args.threads, args.time)
            rows.append({"model": name, "batch": b, "onnxruntime_ms": theirs, "wginfer_ms": ours,
                         "ratio": ours / theirs})
            print(f"{name:<20} {b:>5} {theirs:>15.4f} {ours:>11.4f} {ours / theirs:>6.2f}x")

    n = 1024
    rng = np.random.default_rng(2)
    a = rng.random((n, n), dtype=np.float32)
    w = rng.random((n, n), dtype=np.float32)
    times = time_runs(lambda: a @ w.T, args.time)
    numpy_gflops = 2 * n**3 / times[len(times) // 2] / 1e9
    results = wginfer_bench(args.wginfer, ["--op", "matmul", "--sizes", str(n)], args.time, env)
    ours = results[0]
    ours_gflops = 2 * n**3 / (ours["p50_ms"] * 1e-3) / 1e9
    blas = ""
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]["name"]
    except Exception:  # older numpy
        pass
    print(f"\nf32 matmul {n}^3 (p50): numpy ({blas or 'BLAS'}) {numpy_gflops:.1f} GFLOP/s, "
          f"wginfer cpu {ours_gflops:.1f} GFLOP/s, ratio {ours_gflops / numpy_gflops:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"onnxruntime": ort.__version__, "numpy": np.__version__, "threads": args.threads,
                       "models": rows, "matmul": {"n": n, "numpy_gflops": numpy_gflops,
                                                  "wginfer_gflops": ours_gflops}}, f, indent=2)


if __name__ == "__main__":
    main()
