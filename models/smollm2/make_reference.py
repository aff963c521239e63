"""Writes tensors.json: the tensor table of SmolLM2-135M-Instruct.Q4_1.gguf as
the `gguf` Python package reports it (name, dims, ggml type code, offset of the
data from the start of the file), plus a few metadata values. The GGUF reader's
test (tests/gguf.rs) compares its own table with this one.

Run: python make_reference.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import json
import os
import sys

import gguf


def main(path):
    reader = gguf.GGUFReader(path)
    tensors = [
        {
            "name": t.name,
            "dims": [int(d) for d in t.shape],
            "type": int(t.tensor_type),
            "offset": int(t.data_offset),
            "n_bytes": int(t.n_bytes),
        }
        for t in reader.tensors
    ]
    kv_count = int(reader.fields["GGUF.kv_count"].parts[-1][0])
    tokens = reader.fields["tokenizer.ggml.tokens"]
    token_text = [bytes(tokens.parts[i]).decode("utf-8") for i in tokens.data]
    out = {
        "file": os.path.basename(path),
        "version": int(reader.fields["GGUF.version"].parts[-1][0]),
        "kv_count": kv_count,
        "token_count": len(token_text),
        "tokens_head": token_text[:8],
        "tokens_tail": token_text[-4:],
        "tensor_count": len(tensors),
        "tensors": tensors,
    }
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "tensors.json"), "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
