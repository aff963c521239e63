"""Checks the numpy reference against llama.cpp: teacher-forced logits for the
same token ids from both, compared per position by KL(ref || llama.cpp), top-1
agreement and the largest logit difference.

Needs the llama.cpp build of benches/llama_cpp.sh (target/llama.cpp); compiles
llama_logits.cpp against its static libraries on first use.

Run from the repository root:
  python models/decoders/compare_llama_cpp.py --gguf FILE --cases CASES.json --ref REFDIR
where REFDIR holds reference.py's <case>.logits.npy for the same cases
(--save DIR keeps llama.cpp's logits as <case>.logits.npy).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def build(llama_dir):
    exe = os.path.join(llama_dir, "build", "bin", "llama_logits")
    if os.path.exists(exe):
        return exe
    src, lib = os.path.join(llama_dir, "src"), os.path.join(llama_dir, "build")
    libs = ["src/libllama.a", "ggml/src/libggml.a", "ggml/src/libggml-cpu.a", "ggml/src/libggml-base.a"]
    cmd = ["g++", "-O2", "-std=c++17", os.path.join(HERE, "llama_logits.cpp"), "-o", exe,
           "-I", os.path.join(src, "include"), "-I", os.path.join(src, "ggml", "include")]
    cmd += [os.path.join(lib, p) for p in libs] + ["-fopenmp", "-lpthread", "-ldl", "-lm"]
    subprocess.run(cmd, check=True)
    return exe


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def compare(ref, other):
    """Mean and largest KL(ref || other) over positions, top-1 agreement, max
    |logit diff|, and top-1 agreement where the reference's top-2 margin
    exceeds 0.5."""
    lp, lq = log_softmax(ref), log_softmax(other)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    same = ref.argmax(-1) == other.argmax(-1)
    top2 = np.sort(ref, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.5
    return (float(kl.mean()), float(kl.max()), float(same.mean()),
            float(np.abs(ref - other).max()), float(same[clear].mean()) if clear.any() else 1.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--cases", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--save", metavar="DIR", help="also write llama.cpp's <case>.logits.npy here")
    ap.add_argument("--llama-dir", default=os.path.join(ROOT, "target", "llama.cpp"))
    args = ap.parse_args()
    exe = build(args.llama_dir)
    with open(args.cases) as f:
        cases = json.load(f)
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            out = os.path.join(tmp, case["name"] + ".f32")
            subprocess.run([exe, args.gguf, out] + [str(t) for t in case["tokens"]], check=True)
            ref = np.load(os.path.join(args.ref, case["name"] + ".logits.npy"))
            other = np.fromfile(out, dtype=np.float32).reshape(ref.shape[0], -1)
            if other.shape != ref.shape:
                sys.exit(f"{case['name']}: llama.cpp gave {other.shape}, reference {ref.shape}")
            kl, kl_max, top1, diff, clear = compare(ref, other)
            worst = max(worst, kl)
            print(f"{case['name']}: mean KL {kl:.2e} (max {kl_max:.2e}), top-1 {top1:.1%}, "
                  f"top-1 where margin > 0.5 {clear:.1%}, max |dlogit| {diff:.3f}")
            if args.save:
                os.makedirs(args.save, exist_ok=True)
                np.save(os.path.join(args.save, case["name"] + ".logits.npy"), other)
    print(f"worst mean KL {worst:.2e}")


if __name__ == "__main__":
    main()
