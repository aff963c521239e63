"""Writes prompts.json: the texts the decoder is checked on, each with its
token ids from an independent tokenizer, transformers' GGUF tokenizer
conversion (AutoTokenizer.from_pretrained(dir, gguf_file=...)), without
special tokens added (the chat text spells its control tokens out).

transformers refuses to read GGUF metadata unless torch is installed, although
with return_tensors=False (all a tokenizer load asks for) it never uses torch;
this script lifts that check so it runs with transformers + tokenizers + gguf +
numpy and no torch.

Run (pip install "transformers<5" tokenizers gguf numpy):
  python make_prompts.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import json
import os
import sys

import transformers.modeling_gguf_pytorch_utils as gguf_utils

TEXTS = [
    (
        "prose",
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in "
        "Paris, France. It is named after the engineer Gustave Eiffel, whose company "
        "designed and built the tower. Locally nicknamed the Iron Lady, it was "
        "constructed as the centerpiece of the World's Fair, and it has become a "
        "global cultural icon of France and one of the most recognisable structures "
        "in the world.",
    ),
    (
        "code",
        "def fibonacci(n):\n"
        '    """Return the first n Fibonacci numbers."""\n'
        "    result = [0, 1]\n"
        "    while len(result) < n:\n"
        "        result.append(result[-1] + result[-2])\n"
        "    return result[:n]\n"
        "\n"
        "print(fibonacci(10))\n",
    ),
    (
        "chat",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
        "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France? "
        "Answer in one short sentence.<|im_end|>\n<|im_start|>assistant\n",
    ),
    (
        "numbers",
        "In 1969, Apollo 11 landed on the Moon. The mission lasted 8 days, 3 hours "
        "and 18 minutes. Pi is about 3.14159, and 12 times 12 is 144. The total "
        "was $2,450.75 on 2024-03-15.",
    ),
]


def main(path):
    gguf_utils.is_torch_available = lambda: True
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    cases = []
    for name, text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if tok.decode(ids) != text:
            raise SystemExit(f"{name}: ids do not decode to the text")
        cases.append({"name": name, "text": text, "tokens": ids})
        print(f"{name}: {len(ids)} tokens")
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "prompts.json"), "w") as f:
        json.dump(cases, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
