#!/usr/bin/env python3
"""wginfer vs ONNX Runtime on the CPU, and wginfer's f32 matmul vs numpy, in one run.

Runs the same ONNX files in onnxruntime (in this process) and in wginfer
(`wginfer bench MODEL.onnx --devices cpu --json ...`, which imports the ONNX
file), for each batch size, and prints the latency ratio wginfer / onnxruntime
(below 1.0: wginfer is faster). The two take turns (`--rounds`, 3 by default,
each a share of `--time`): the ratio is that of the medians of the rounds'
median latencies, and the per-round ratios are printed beside it. It also runs each model once in both at every
batch size on the same random input (`wginfer run`) and prints the largest
absolute difference of the outputs.

Models: with `--model FILE.onnx` (repeatable), those files (the first input's
first dimension is the batch; every other dimension must be fixed). Without
it: the digits MLP (64-128-64-10) and the digits CNN shipped in
models/digits-cnn, a 784-512-512-10 MLP and an MNIST-shaped CNN (Conv 1->32
3x3, Relu, MaxPool 2, Conv 32->64 3x3, Relu, MaxPool 2, Flatten, Gemm
3136->128, Relu, Gemm 128->10 on 1x28x28), both with random weights that this
script writes to temporary ONNX files (`--save-models DIR` keeps them).

Then (unless --no-matmul) it times a 1024x1024x1024 f32 matmul in numpy (its
bundled BLAS, OpenBLAS for the PyPI wheels) and `wginfer bench --op matmul
--sizes 1024` (a square Linear layer on the CPU backend), and prints the
GFLOP/s ratio.

Both runtimes use the same thread count: onnxruntime's intra-op pool is set
to --threads (default: every core), and wginfer reads RAYON_NUM_THREADS (the
`gemm` crate follows it).

Usage (from the repository root):
    cargo build --release
    python3 -m venv /tmp/ortenv && /tmp/ortenv/bin/pip install onnx==1.22.0 onnxruntime numpy
    /tmp/ortenv/bin/python benches/compare_ort.py [--model my_cnn.onnx] [--threads 2] [--batch 1,64]
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


def mnist_cnn(path):
    """An MNIST-shaped CNN on [batch, 1, 28, 28] with random weights: two 3x3
    convolutions (32 and 64 channels, pad 1) each followed by Relu and a 2x2
    max pool, then Gemm 3136->128, Relu, Gemm 128->10."""
    rng = np.random.default_rng(3)

    def param(name, shape, fan_in):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    inits = [
        param("conv1.weight", (32, 1, 3, 3), 9), param("conv1.bias", (32,), 9),
        param("conv2.weight", (64, 32, 3, 3), 288), param("conv2.bias", (64,), 288),
        param("fc1.weight", (128, 3136), 3136), param("fc1.bias", (128,), 3136),
        param("fc2.weight", (10, 128), 128), param("fc2.bias", (10,), 128),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc1.weight", "fc1.bias"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r3"], name="relu3"),
        helper.make_node("Gemm", ["r3", "fc2.weight", "fc2.bias"], ["logits"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mnist_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
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


def ort_session(path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def model_input(sess, batch):
    """The first input's name and a random batch for it (the first dimension is the batch)."""
    inp = sess.get_inputs()[0]
    shape = [batch] + [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
    return inp.name, np.random.default_rng(1).random(shape, dtype=np.float32)


def ort_p50_ms(sess, batch, budget_s):
    name, x = model_input(sess, batch)
    times = time_runs(lambda: sess.run(None, {name: x}), budget_s)
    return 1e3 * times[len(times) // 2]


def max_abs_diff(exe, path, sess, batch, env):
    """Runs one batch in both runtimes; the largest |wginfer - onnxruntime| of the first output."""
    name, x = model_input(sess, batch)
    theirs = sess.run(None, {name: x})[0]
    with tempfile.TemporaryDirectory() as d:
        xin, yout = os.path.join(d, "x.npy"), os.path.join(d, "y.npy")
        np.save(xin, x)
        cmd = [exe, "run", path, "--device", "cpu", "-i", f"{name}={xin}", "-o", yout]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        ours = np.load(yout)
    return float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64))))


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
    ap.add_argument("--model", action="append", help="an ONNX file to compare (repeatable); default: the built-in set")
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--time", type=float, default=2.0, help="seconds of measurement per configuration")
    ap.add_argument("--rounds", type=int, default=3,
                    help="turns each runtime takes per configuration (the medians of the rounds' medians are compared)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-matmul", action="store_true", help="skip the 1024^3 matmul against numpy")
    ap.add_argument("--save-models", help="write the generated ONNX models into this directory")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if not os.path.exists(args.wginfer):
        sys.exit(f"no wginfer binary at {args.wginfer}: run `cargo build --release` first (or pass --wginfer)")
    batches = [int(b) for b in args.batch.split(",")]
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    env.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())  # wgpu lists adapters for the JSON

    if args.model:
        models = [(os.path.splitext(os.path.basename(p))[0], p) for p in args.model]
    else:
        tmp = args.save_models or tempfile.mkdtemp()
        os.makedirs(tmp, exist_ok=True)
        big, cnn = os.path.join(tmp, "mlp_784_512_512_10.onnx"), os.path.join(tmp, "mnist_cnn.onnx")
        mlp_784(big)
        mnist_cnn(cnn)
        models = [
            ("digits MLP", os.path.join(ROOT, "models", "digits-cnn", "digits_mlp.onnx")),
            ("784-512-512-10 MLP", big),
            ("digits CNN", os.path.join(ROOT, "models", "digits-cnn", "model.onnx")),
            ("MNIST CNN", cnn),
        ]
    print(f"onnxruntime {ort.__version__}, numpy {np.__version__}, {args.threads} threads each")
    rows = []
    print(f"\n{'model':<20} {'batch':>5} {'onnxruntime ms':>15} {'wginfer ms':>11} {'ratio':>7} {'per round':>11} "
          f"{'max |diff|':>11}")
    for name, path in models:
        sess = ort_session(path, args.threads)
        for b in batches:
            # The two runtimes take turns, each round a share of the time, so
            # a slow spell of a shared machine falls on both.
            ours_r, theirs_r = [], []
            for _ in range(args.rounds):
                results = wginfer_bench(args.wginfer, [path, "--batch", str(b)], args.time / args.rounds, env)
                ours_r.append(next(r["p50_ms"] for r in results if r["batch"] == b))
                theirs_r.append(ort_p50_ms(sess, b, args.time / args.rounds))
            ours, theirs = float(np.median(ours_r)), float(np.median(theirs_r))
            diff = max_abs_diff(args.wginfer, path, sess, b, env)
            rounds = [o / t for o, t in zip(ours_r, theirs_r)]
            rows.append({"model": name, "batch": b, "onnxruntime_ms": theirs, "wginfer_ms": ours,
                         "ratio": ours / theirs, "round_ratios": rounds, "max_abs_diff": diff})
            spread = f"{min(rounds):.2f}-{max(rounds):.2f}"
            print(f"{name:<20} {b:>5} {theirs:>15.4f} {ours:>11.4f} {ours / theirs:>6.2f}x {spread:>11} {diff:>11.2e}")

    matmul = None if args.no_matmul else compare_matmul(args, env)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"onnxruntime": ort.__version__, "numpy": np.__version__, "threads": args.threads,
                       "models": rows, "matmul": matmul}, f, indent=2)


def compare_matmul(args, env):
    """numpy's and wginfer's f32 1024^3 matmul, GFLOP/s at the median."""
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
    return {"n": n, "numpy_gflops": numpy_gflops, "wginfer_gflops": ours_gflops}


if __name__ == "__main__":
    main()
