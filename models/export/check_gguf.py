"""Checks a GGUF decoder written by `wginfer export --to gguf` against the
file it was exported from, with the `gguf` package (GGUFReader and
gguf.quants), which nobody here wrote.

  python check_gguf.py ORIGINAL.gguf EXPORT.gguf --type keep|q8_0|q4_0|q4_1|f16|k
                       [--tokenizer-keys core]

- The export parses, and holds every tensor of the original with the same
  dims (GGUF order).
- keep: every tensor dequantizes (gguf.quants.dequantize) to exactly the
  original's values.
- q8_0, q4_0, q4_1: every 2-D tensor's bytes equal gguf.quants.quantize of
  the original's dequantized values (one already in that type is copied;
  one whose rows are not whole 32-value blocks is F16); f16: the original's
  values as float16. 1-D tensors (norms, biases) are F32 and exact.
- k (the k-quant types and mixes, which the gguf package cannot quantize):
  every 2-D tensor is in a type a k-quant export may choose, and the
  package's dequantization of it is within that type's rounding of the
  original's values (relative RMS error at most K_BOUND[type]).
- Metadata: every `tokenizer.*` entry of the original (with
  `--tokenizer-keys core`: tokens, token types, merges, model, pre, BOS/EOS
  ids and the chat template) is in the export with the same value, and the
  architecture's hyperparameters agree.

Prints one line per failure and `ok: ...` at the end; exits 1 on a failure.
"""
import argparse
import sys

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

TARGETS = {"q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_1": T.Q4_1, "f16": T.F16}
# Relative RMS error of one re-quantization, by the type chosen.
K_BOUND = {T.Q4_K: 0.15, T.Q5_K: 0.08, T.Q6_K: 0.04, T.Q5_0: 0.08, T.Q5_1: 0.08, T.Q8_0: 0.01, T.F16: 1e-3}
CORE_KEYS = [
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.chat_template",
]
HPARAMS = [
    "block_count",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "rope.freq_base",
    "attention.layer_norm_rms_epsilon",
]


def value(field):
    """A metadata field's value as plain Python (lists for arrays)."""
    if field is None:
        return None
    return field.contents()


def dequant(t):
    return dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)


def expected_bytes(t, target):
    """What the export must hold for original tensor `t` under `target`."""
    x = dequant(t).reshape(int(t.shape[1]), int(t.shape[0]))
    if t.tensor_type == target:
        return t.tensor_type, np.asarray(t.data).tobytes()
    if target == T.F16 or int(t.shape[0]) % 32 != 0:
        return T.F16, x.astype(np.float16).tobytes()
    return target, np.asarray(quantize(x, target)).tobytes()


def check_tensors(orig, exp, kind, fail):
    by_name = {t.name: t for t in exp.tensors}
    for t in orig.tensors:
        e = by_name.get(t.name)
        if e is None:
            fail(f"{t.name}: missing from the export")
            continue
        if list(map(int, e.shape)) != list(map(int, t.shape)):
            fail(f"{t.name}: dims {list(e.shape)}, original {list(t.shape)}")
            continue
        if kind == "keep" or len(t.shape) == 1:
            if len(t.shape) == 1 and e.tensor_type != T.F32:
                fail(f"{t.name}: a vector stored as {e.tensor_type.name}, not F32")
            if not np.array_equal(dequant(e), dequant(t)):
                diff = np.abs(dequant(e) - dequant(t)).max()
                fail(f"{t.name}: dequantized values differ (max |d| {diff:.3e})")
            continue
        if kind == "k":
            check_k(t, e, fail)
            continue
        want_type, want = expected_bytes(t, TARGETS[kind])
        if e.tensor_type != want_type:
            fail(f"{t.name}: type {e.tensor_type.name}, expected {want_type.name}")
        elif np.asarray(e.data).tobytes() != want:
            fail(f"{t.name}: bytes differ from gguf.quants.quantize ({want_type.name})")
    return len(orig.tensors)


def check_k(t, e, fail):
    """A k-quant export's tensor: an allowed type, within its rounding."""
    bound = K_BOUND.get(e.tensor_type)
    if bound is None:
        fail(f"{t.name}: type {e.tensor_type.name} is not one a k-quant export chooses")
        return
    x, y = dequant(t).astype(np.float64), dequant(e).astype(np.float64)
    rel = np.sqrt(((x - y) ** 2).sum() / max((x ** 2).sum(), 1e-30))
    print(f"{t.name}: {t.tensor_type.name} -> {e.tensor_type.name}, relative RMS error {rel:.4f}")
    if rel > bound:
        fail(f"{t.name}: {e.tensor_type.name} differs from the original by relative RMS {rel:.4f} > {bound}")


def check_metadata(orig, exp, core, fail):
    keys = CORE_KEYS if core else [k for k in orig.fields if k.startswith("tokenizer.")]
    for k in keys:
        want, got = value(orig.fields.get(k)), value(exp.fields.get(k))
        if want is not None and got != want:
            fail(f"metadata {k}: differs from the original")
    arch = value(orig.fields["general.architecture"])
    exp_arch = value(exp.fields.get("general.architecture"))
    for h in HPARAMS:
        want = value(orig.fields.get(f"{arch}.{h}"))
        got = value(exp.fields.get(f"{exp_arch}.{h}"))
        if want is not None and got != want:
            fail(f"metadata {exp_arch}.{h}: {got}, original {arch}.{h} = {want}")
    return len(keys)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("original")
    ap.add_argument("export")
    ap.add_argument("--type", choices=["keep", "k", *TARGETS], default="keep")
    ap.add_argument("--tokenizer-keys", choices=["all", "core"], default="all")
    a = ap.parse_args()
    failures = []
    fail = failures.append
    orig, exp = GGUFReader(a.original), GGUFReader(a.export)
    n_tensors = check_tensors(orig, exp, a.type, fail)
    n_keys = check_metadata(orig, exp, a.tokenizer_keys == "core", fail)
    for f in failures:
        print(f"FAIL {f}")
    if failures:
        sys.exit(1)
    print(f"ok: {a.export}: {n_tensors} tensors ({a.type}) and {n_keys} tokenizer keys agree with {a.original}")


if __name__ == "__main__":
    main()
