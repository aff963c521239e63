"""Writes blocks.safetensors: random valid blocks of every ggml block format
wginfer reads, with the `gguf` package's dequantization of them, and random
f32 rows with the package's quantization of them where it has a quantizer.

Tensors, for each format F:
  F.blocks    U8  [blocks, block_bytes]  random blocks (finite f16 scales)
  F.dequant   F32 [blocks, block_len]    gguf.quants.dequantize(F.blocks)
  F.x         F32 [rows, 256]            random rows (formats with a quantizer)
  F.quant     U8  [rows, row_bytes]      gguf.quants.quantize(F.x)

Run: python models/ggml/make_blocks.py  (needs `pip install gguf numpy`).
"""
import json
import struct
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

FORMATS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
QUANTIZABLE = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
# (f16 scale offset, has a second f16 (min) right after) per format; the
# k-quant Q6_K keeps its f16 `d` at the end of the block.
F16_AT = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}


def random_f16(rng, n):
    """Scales of sensible size and either sign, some special: 0, subnormal, large."""
    mag = np.exp(rng.uniform(np.log(1e-4), np.log(1.0), n)).astype(np.float32)
    v = (mag * rng.choice([-1.0, 1.0], n)).astype(np.float16)
    v[0] = 0.0
    if n > 2:
        v[1] = np.float16(3e-6)  # subnormal
        v[2] = np.float16(-100.0)
    return v


def random_blocks(rng, name, n):
    _, size = GGML_QUANT_SIZES[T[name]]
    blocks = rng.integers(0, 256, (n, size), dtype=np.uint8)
    for at in F16_AT[name]:
        blocks[:, at : at + 2] = random_f16(rng, n).view(np.uint8).reshape(n, 2)
    return blocks


def random_rows(rng, rows):
    x = rng.standard_normal((rows, 256)).astype(np.float32)
    x *= np.exp(rng.uniform(-6, 3, (rows, 1))).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block
    x[0, 32:64] = 1.25  # a constant block
    x[0, 64:96] = np.arange(32, dtype=np.float32) - 16.0  # exact ties
    x[1, ::7] *= 40.0  # outliers
    return x


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        dtype = {np.dtype(np.uint8): "U8", np.dtype(np.float32): "F32"}[arr.dtype]
        data = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def main():
    rng = np.random.default_rng(20251205)
    tensors = {}
    for name in FORMATS:
        block_len, _ = GGML_QUANT_SIZES[T[name]]
        n = 64 if block_len == 32 else 24
        blocks = random_blocks(rng, name, n)
        tensors[f"{name}.blocks"] = blocks
        tensors[f"{name}.dequant"] = quants.dequantize(blocks, T[name]).astype(np.float32).reshape(n, block_len)
        if name in QUANTIZABLE:
            x = random_rows(rng, 12)
            tensors[f"{name}.x"] = x
            tensors[f"{name}.quant"] = quants.quantize(x, T[name])
    out = Path(__file__).with_name("blocks.safetensors")
    write_safetensors(out, tensors)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
