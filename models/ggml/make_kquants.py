"""Writes kquants.safetensors: f32 rows and llama.cpp's own k-quant
quantization of them (Q4_K, Q5_K, Q6_K; `ggml_quantize_chunk` with no
importance matrix, which runs `quantize_row_q*_K_ref`), for
tests/ggml_blocks.rs. The `gguf` package has no k-quant quantizer, so the
oracle is llama.cpp itself: kquants_ref.c linked against its ggml.

Tensors, for each format F in Q4_K, Q5_K, Q6_K:
  F.x      F32 [blocks · 256]   the rows (one row of every case below)
  F.quant  U8  [row_bytes]      llama.cpp's bytes

Cases, one 256-value block each: Gaussian at scales 1e-3, 1 and 100; uniform
positive; uniform negative; all zero; constant; tiny (1e-20, below
GROUP_MAX_EPS); one outlier among small values; mostly zeros; a ramp; and
Gaussian rows from a fixed seed to fill 24 blocks.

Run: LLAMA_CPP=target/llama.cpp python models/ggml/make_kquants.py
(LLAMA_CPP: the llama.cpp source and build of benches/llama_cpp.sh; needs
gcc and numpy).
"""
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FORMATS = {"Q4_K": "q4_k", "Q5_K": "q5_k", "Q6_K": "q6_k"}


def harness(llama):
    exe = Path(tempfile.mkdtemp()) / "kquants_ref"
    subprocess.run(
        ["gcc", "-O2", str(HERE / "kquants_ref.c"), "-I", str(llama / "src" / "ggml" / "include"),
         str(llama / "build" / "ggml" / "src" / "libggml-base.a"), "-lstdc++", "-lm", "-lpthread",
         "-o", str(exe)],
        check=True)
    return exe


def cases():
    rng = np.random.default_rng(7)
    n = 256
    blocks = [
        rng.normal(0, 1e-3, n), rng.normal(0, 1, n), rng.normal(0, 100, n),
        rng.uniform(0.1, 2.0, n), rng.uniform(-3.0, -0.5, n), np.zeros(n), np.full(n, 0.75),
        rng.normal(0, 1e-20, n),
    ]
    outlier = rng.normal(0, 0.01, n)
    outlier[37] = 5.0
    sparse = np.where(rng.uniform(size=n) < 0.9, 0.0, rng.normal(0, 1, n))
    blocks += [outlier, sparse, np.linspace(-1, 3, n)]
    while len(blocks) < 24:
        blocks.append(rng.normal(0, rng.uniform(0.01, 10), n))
    return np.concatenate(blocks).astype(np.float32)


def write_safetensors(path, tensors):
    header, body, off = {}, b"", 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        body += data
        off += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(len(h).to_bytes(8, "little") + h + body)


def main():
    exe = harness(Path(os.environ.get("LLAMA_CPP", "target/llama.cpp")))
    x = cases()
    tensors = {}
    for name, arg in FORMATS.items():
        q = subprocess.run([str(exe), arg], input=x.tobytes(), capture_output=True, check=True).stdout
        tensors[f"{name}.x"] = ("F32", [x.size], x.tobytes())
        tensors[f"{name}.quant"] = ("U8", [len(q)], q)
    write_safetensors(HERE / "kquants.safetensors", tensors)
    print(f"wrote {HERE / 'kquants.safetensors'}: {x.size // 256} blocks per format")


if __name__ == "__main__":
    main()
