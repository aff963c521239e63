"""Compares wginfer's GGUF re-quantization with llama.cpp's `llama-quantize`
on the same f32 weights: for each type, every tensor's GGUF type and bytes.

  python compare_llama_quantize.py --wginfer target/release/wginfer \
      --llama-bin target/llama.cpp/build/bin --src F32_SOURCE [--types q4_k_m,q6_k]

F32_SOURCE is a decoder wginfer exports with `--gguf-type keep` to an F32
GGUF (a Hugging Face directory with f32 weights, such as the one
models/smollm2/to_hf.py writes). llama-quantize runs on that F32 file
(see LLAMA_NAMES); wginfer
exports the source directly. Needs the `gguf` package.
"""
import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGUFReader

# llama-quantize's type and whether it runs with --pure (every matrix the
# one type: the 32-weight types). Its mixes and Q6_K run without --pure, with
# their per-tensor rules and fallbacks. q4_k and q5_k have no counterpart:
# --pure Q4_K_S stops on rows that are not whole 256 blocks, and Q4_K_S
# without --pure raises some layers to Q5_K.
LLAMA_NAMES = {"q4_k_m": ("Q4_K_M", False), "q5_k_m": ("Q5_K_M", False), "q6_k": ("Q6_K", False),
               "q8_0": ("Q8_0", True), "q4_0": ("Q4_0", True), "q4_1": ("Q4_1", True)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wginfer", required=True)
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--types", default=",".join(LLAMA_NAMES))
    a = ap.parse_args()
    out = Path(tempfile.mkdtemp())
    f32 = out / "f32.gguf"
    subprocess.run([a.wginfer, "export", a.src, "--to", "gguf", "--gguf-type", "keep", "-o", str(f32), "--force"],
                   check=True, capture_output=True)
    print("| type | tensors | same GGUF type | same bytes | types (wginfer) |")
    print("|---|---:|---:|---:|---|")
    for t in a.types.split(","):
        ours, theirs = out / f"wg-{t}.gguf", out / f"lq-{t}.gguf"
        subprocess.run([a.wginfer, "export", a.src, "--to", "gguf", "--gguf-type", t, "-o", str(ours), "--force"],
                       check=True, capture_output=True)
        name, pure = LLAMA_NAMES[t]
        subprocess.run([str(Path(a.llama_bin) / "llama-quantize"), *(["--pure"] if pure else []), str(f32), str(theirs), name, "2"],
                       check=True, capture_output=True)
        mine = {x.name: x for x in GGUFReader(ours).tensors}
        ref = {x.name: x for x in GGUFReader(theirs).tensors}
        same_type = same_bytes = 0
        counts = {}
        for name, r in ref.items():
            m = mine.get(name)
            if m is None:
                print(f"  {t}: {name} missing from wginfer's file")
                continue
            counts[m.tensor_type.name] = counts.get(m.tensor_type.name, 0) + 1
            if m.tensor_type == r.tensor_type:
                same_type += 1
                if np.asarray(m.data).tobytes() == np.asarray(r.data).tobytes():
                    same_bytes += 1
                else:
                    print(f"  {t}: {name} ({r.tensor_type.name}) bytes differ")
            else:
                print(f"  {t}: {name}: wginfer {m.tensor_type.name}, llama-quantize {r.tensor_type.name}")
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        print(f"| {t} | {len(ref)} | {same_type} | {same_bytes} | {kinds} |")


if __name__ == "__main__":
    main()
